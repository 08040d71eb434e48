"""Remote access: streamable HTTP with bearer tokens, Origin checks, audit log; and the
one-shot CLI (`bpfsight call`, `bpfsight tools`) that CI jobs use."""
import json
import os
import re
import subprocess
import threading

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import Workload, bpfsight_bin, call, run_with_server, settle

READ_SECRET = "r" * 12 + "-read-secret-0123"
WRITE_SECRET = "w" * 12 + "-write-secret-4567"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class HttpServer:
    """`bpfsight serve --http 127.0.0.1:0` with a token file and an audit log."""

    def __init__(self, tmp_path, extra=()):
        self.tokens = tmp_path / "tokens"
        self.tokens.write_text(f"# name role secret\nci read {READ_SECRET}\nops write {WRITE_SECRET}\n")
        self.tokens.chmod(0o600)
        self.audit = tmp_path / "audit.jsonl"
        cmd = [bpfsight_bin(), "serve", "--http", "127.0.0.1:0", "--tokens-file", str(self.tokens),
               "--audit-log", str(self.audit), *extra]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.stderr = []
        ready = threading.Event()
        self.url = None

        def pump():
            for line in self.proc.stderr:
                self.stderr.append(line)
                m = re.search(r"listening on (https?://\S+)", line)
                if m:
                    self.url = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        ready.wait(30)
        assert self.url, "".join(self.stderr)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def http_server(tmp_path):
    s = HttpServer(tmp_path)
    yield s
    s.stop()


def session_run(url, token, fn):
    async def main():
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            async with streamable_http_client(url, http_client=client) as (r, w, *_):
                async with ClientSession(r, w) as s:
                    await s.initialize()
                    return await fn(s)

    return anyio.run(main)


def test_python_sdk_over_streamable_http_with_a_token_sees_real_kernel_data(http_server):
    async def body(s):
        tools = {t.name for t in (await s.list_tools()).tools}
        assert tools == {"list_services", "get_connection_stats", "get_service_errors", "get_high_latency_services", "get_resource_usage", "get_events", "similar_incidents", "get_incident", "predict_anomaly"}
        w = Workload("refused", "http-refuse", 47120, count=5)
        await anyio.to_thread.run_sync(w.wait)
        await settle()
        row = (await call(s, "get_connection_stats", {"service": "http-refuse", "window": "1m"}))["services"][0]
        assert row["failed_connects"] == 5, row
        from mcp.shared.exceptions import MCPError
        with pytest.raises(MCPError) as e:
            await s.call_tool("get_connection_stats", {"window": "5x"})
        assert e.value.error.code == -32602

    session_run(http_server.url, READ_SECRET, body)

    lines = [json.loads(l) for l in http_server.audit.read_text().splitlines()]
    assert [l["tool"] for l in lines] == ["get_connection_stats", "get_connection_stats"], lines
    ok, bad = lines
    for l in lines:
        assert set(l) >= {"time", "session", "principal", "transport", "tool", "arguments", "outcome",
                          "result_bytes", "latency_ms"}
        assert l["principal"] == "ci" and l["transport"] == "http"
        assert l["session"] not in ("", "http"), l  # the MCP session id
    assert ok["outcome"] == "ok" and ok["result_bytes"] > 100 and ok["arguments"] == {"service": "http-refuse", "window": "1m"}
    assert bad["outcome"] == "invalid_params" and "5x" in bad["error"]
    assert READ_SECRET not in http_server.audit.read_text()


def test_missing_or_wrong_tokens_are_401_and_foreign_origins_403(http_server):
    with httpx2.Client(timeout=10) as c:
        r = c.post(http_server.url, json=INIT, headers=MCP_HEADERS)
        assert r.status_code == 401 and "Bearer" in r.headers.get("www-authenticate", "")
        r = c.post(http_server.url, json=INIT, headers={**MCP_HEADERS, "Authorization": "Bearer " + READ_SECRET[:-1] + "x"})
        assert r.status_code == 401
        r = c.post(http_server.url, json=INIT, headers={**MCP_HEADERS, "Authorization": "Basic " + READ_SECRET})
        assert r.status_code == 401
        r = c.post(http_server.url, json=INIT,
                   headers={**MCP_HEADERS, "Authorization": "Bearer " + READ_SECRET, "Origin": "https://evil.example"})
        assert r.status_code == 403, r.text
        r = c.post(http_server.url, json=INIT,
                   headers={**MCP_HEADERS, "Authorization": "Bearer " + WRITE_SECRET, "Origin": "http://localhost:6274"})
        assert r.status_code == 200, r.text
        # DNS rebinding: a foreign Host is refused even with a valid token.
        r = c.post(http_server.url, json=INIT,
                   headers={**MCP_HEADERS, "Authorization": "Bearer " + READ_SECRET, "Host": "evil.example:80"})
        assert r.status_code in (400, 403), r.status_code
        # The legacy transport too.
        base = http_server.url.rsplit("/mcp", 1)[0]
        r = c.get(base + "/sse", headers={"Authorization": "Bearer " + READ_SECRET, "Host": "evil.example"})
        assert r.status_code == 403, r.status_code


def test_non_loopback_without_auth_is_refused_at_start():
    env = {k: v for k, v in os.environ.items() if k != "BPFSIGHT_TOKENS"}
    p = subprocess.run([bpfsight_bin(), "serve", "--http", "0.0.0.0:0"], capture_output=True, text=True,
                       timeout=30, env=env, stdin=subprocess.DEVNULL)
    assert p.returncode == 1
    assert "refusing to serve on 0.0.0.0:0 without authentication" in p.stderr and "--tokens-file" in p.stderr, p.stderr
    assert "collector started" not in p.stderr  # refused before touching the kernel


def test_tool_allow_list_limits_what_is_listed_and_callable():
    async def body(s):
        names = [t.name for t in (await s.list_tools()).tools]
        assert names == ["list_services"], names
        from mcp.shared.exceptions import MCPError
        with pytest.raises(MCPError):
            await s.call_tool("get_connection_stats", {})
        await call(s, "list_services", {"limit": 1})

    run_with_server(body, args=("serve", "--tools", "list_services"))


def test_cli_call_prints_results_and_fails_on_bad_arguments():
    out = subprocess.run([bpfsight_bin(), "call", "list_services", "--args", '{"name_contains": "python", "limit": 3}',
                          "--collect", "1s"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["services"] and all("python" in s["service"].lower() for s in data["services"])
    table = subprocess.run([bpfsight_bin(), "call", "list_services", "--args", '{"limit": 3}', "--format", "table",
                            "--collect", "1s"], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "service" in table.stdout.splitlines()[1], table.stdout
    bad = subprocess.run([bpfsight_bin(), "call", "get_connection_stats", "--args", '{"window": "5x"}',
                          "--collect", "1s"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and 'invalid window "5x"' in bad.stderr and bad.stdout == ""
    tools = subprocess.run([bpfsight_bin(), "tools"], capture_output=True, text=True, timeout=30)
    assert {t["name"] for t in json.loads(tools.stdout)} == {"list_services", "get_connection_stats", "get_service_errors", "get_high_latency_services", "get_resource_usage", "get_events", "similar_incidents", "get_incident", "predict_anomaly"}


def test_python_sdk_over_legacy_sse_transport(http_server):
    from mcp.client.sse import sse_client

    base = http_server.url.rsplit("/mcp", 1)[0]

    async def main():
        headers = {"Authorization": f"Bearer {WRITE_SECRET}"}
        async with sse_client(base + "/sse", headers=headers, timeout=10) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                names = {t.name for t in (await s.list_tools()).tools}
                assert "get_service_errors" in names
                out = await call(s, "list_services", {"limit": 2})
                assert len(out["services"]) == 2

    anyio.run(main)
    line = json.loads(http_server.audit.read_text().splitlines()[-1])
    assert line["tool"] == "list_services" and line["principal"] == "ops" and line["outcome"] == "ok", line
    assert len(line["session"]) == 32, line  # the SSE session id

    with httpx2.Client(timeout=10) as c:
        assert c.get(base + "/sse").status_code == 401
        r = c.post(base + "/messages?sessionId=nope", json=INIT, headers={"Authorization": f"Bearer {READ_SECRET}"})
        assert r.status_code == 404


def test_metrics_endpoint_counts_calls_and_reports_collector_health(tmp_path):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = HttpServer(tmp_path, extra=("--metrics", f"127.0.0.1:{port}"))
    try:
        async def body(s):
            # Back to back, most of these land between two collector writes: answered again.
            for _ in range(5):
                await call(s, "list_services", {"limit": 1})
            from mcp.shared.exceptions import MCPError
            with pytest.raises(MCPError):
                await s.call_tool("get_service_errors", {"threshold_pct": -5})
            # Names nobody serves share one label, however many a client invents.
            for name in ("no_such_tool_1", "no_such_tool_2"):
                with pytest.raises(MCPError):
                    await s.call_tool(name, {})
            await s.get_prompt("triage_host")

        session_run(server.url, READ_SECRET, body)
        text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "no_such_tool" not in text
        assert re.search(r'bpfsight_tool_calls_total\{tool="\(unknown\)",outcome="\w+"\} 2', text), text
        assert 'bpfsight_tool_calls_total{tool="prompts/get",outcome="ok"} 1' in text, text
        assert 'bpfsight_tool_calls_total{tool="list_services",outcome="ok"} 5' in text, text
        assert 'bpfsight_tool_calls_total{tool="get_service_errors",outcome="invalid_params"} 1' in text
        assert 'bpfsight_tool_call_seconds_count{tool="list_services"} 5' in text
        reused = int(re.search(r"^bpfsight_tool_answers_reused_total (\d+)$", text, re.M).group(1))
        assert 1 <= reused <= 4, text  # the first call always computes
        assert "bpfsight_collector_ringbuf_drops_total 0" in text
        # Present from the start; they are 0 until the collector's first poll lands.
        for gauge in ("history_bytes", "history_slots", "services", "slots_trimmed_total"):
            assert re.search(rf"^bpfsight_collector_{gauge} \d+$", text, re.M), (gauge, text)
        assert 'bpfsight_bpf_program_runs_total{program="sock_send_length"}' in text
    finally:
        server.stop()


def test_repeated_calls_keep_their_answer_session_and_audit_line(tmp_path):
    """Calls whose answer is kept for the store's generation are answered before rmcp's session
    plumbing: the same reply, audited and counted, and the session neither expires under a busy
    client (only rmcp's own traffic resets its idle timer) nor outlives its deletion."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = HttpServer(tmp_path, extra=("--session-idle-secs", "2", "--metrics", f"127.0.0.1:{port}"))
    try:
        async def two_sessions():
            # Session a asks first and computes; session b asks the same right after and is
            # answered from a's answer, so b's own calls never reach rmcp's session for 4 s,
            # twice its idle timeout.
            headers = {"Authorization": f"Bearer {READ_SECRET}"}
            async with httpx2.AsyncClient(headers=headers, timeout=30) as ca, \
                    httpx2.AsyncClient(headers=headers, timeout=30) as cb:
                async with streamable_http_client(server.url, http_client=ca) as (ra, wa, *_), \
                        streamable_http_client(server.url, http_client=cb) as (rb, wb, *_):
                    async with ClientSession(ra, wa) as a, ClientSession(rb, wb) as b:
                        await a.initialize()
                        await b.initialize()
                        answers = []
                        for _ in range(20):
                            first = await call(a, "list_services", {"limit": 1})
                            again = await call(b, "list_services", {"limit": 1})
                            answers += [first, again]
                            await anyio.sleep(0.2)
                        return answers

        answers = anyio.run(two_sessions)
        assert len(answers) == 40 and all(a["total"] >= 1 and len(a["services"]) == 1 for a in answers)
        text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        reused = int(re.search(r"^bpfsight_tool_answers_reused_total (\d+)$", text, re.M).group(1))
        # Session b's calls, and a's within a collector write after the first.
        assert reused >= 20, text
        assert 'bpfsight_tool_calls_total{tool="list_services",outcome="ok"} 40' in text, text
        lines = [json.loads(l) for l in server.audit.read_text().splitlines()]
        assert len(lines) == 40 and len({l["session"] for l in lines}) == 2, lines[:3]
        assert all(l["outcome"] == "ok" and l["result_bytes"] > 50 and l["principal"] == "ci"
                   and l["arguments"] == {"limit": 1} for l in lines), lines

        # The raw exchange: a computed reply and a reused one carry the same JSON-RPC shape, and
        # a deleted session is not answered for.
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {READ_SECRET}"}
        with httpx2.Client(timeout=10) as c:
            sid = c.post(server.url, json=INIT, headers=headers).headers["mcp-session-id"]
            headers = {**headers, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
            assert c.post(server.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                          headers=headers).status_code == 202

            def tool_call(i):
                r = c.post(server.url, headers=headers, json={"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                                              "params": {"name": "list_services", "arguments": {"limit": 1}}})
                return r

            replies = [tool_call(i) for i in range(2, 6)]
            # A kept answer is no way around DNS-rebinding protection.
            foreign = c.post(server.url, headers={**headers, "Host": "evil.example"}, json={
                "jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "list_services", "arguments": {"limit": 1}}})
            assert foreign.status_code == 403, foreign.text
            for i, r in enumerate(replies, start=2):
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
                data = [l[len("data: "):] for l in r.text.splitlines() if l.startswith("data: ")]
                msg = json.loads(data[-1])
                assert msg["jsonrpc"] == "2.0" and msg["id"] == i, msg
                assert msg["result"]["structuredContent"]["total"] >= 1 and msg["result"]["isError"] is False
            assert c.delete(server.url, headers=headers).status_code in (200, 202, 204)
            assert tool_call(9).status_code == 404
    finally:
        server.stop()


def test_streamable_http_sessions_are_capped(tmp_path):
    server = HttpServer(tmp_path, extra=("--max-sessions", "2"))
    try:
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {READ_SECRET}"}
        opened = [httpx2.post(server.url, json=INIT, headers=headers, timeout=10) for _ in range(2)]
        assert all(r.status_code == 200 and r.headers.get("mcp-session-id") for r in opened), opened
        third = httpx2.post(server.url, json=INIT, headers=headers, timeout=10)
        assert third.status_code == 503 and "too many open sessions (2)" in third.text, third.text
        # Closing one makes room again.
        sid = opened[0].headers["mcp-session-id"]
        httpx2.delete(server.url, headers={**headers, "mcp-session-id": sid}, timeout=10)
        again = httpx2.post(server.url, json=INIT, headers=headers, timeout=10)
        assert again.status_code == 200, again.text
    finally:
        server.stop()
