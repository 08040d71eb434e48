"""Incident memory through the real binary: similar_incidents, get_incident, record_incident."""
import os
import ssl
import subprocess

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import Workload, bpfsight_bin, call, run_with_server, settle
from test_http import READ_SECRET, WRITE_SECRET, HttpServer, session_run


def test_description_queries_find_the_seeded_pattern_with_its_fix():
    async def body(s):
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert {"similar_incidents", "get_incident"} <= set(tools)
        assert "record_incident" not in tools, "write tools are hidden unless enabled"
        r = await call(s, "similar_incidents", {"description": "the api dies with too many open files", "top_k": 3})
        assert r["matches"][0]["id"] == "fd-exhaustion", r
        assert "description" in r["matches"][0]["matched_on"]
        assert r["matches"][0]["resolution"] and r["matches"][0]["root_cause"]
        assert len(r["matches"]) == 3 and "signature_summary" not in r["query"]
        full = await call(s, "get_incident", {"id": "fd-exhaustion"})
        assert full["signature"]["syscall_errors_resource"] == 5.0 and full["source"] == "seeded"
        only_io = await call(s, "similar_incidents", {"description": "everything is slow", "tags": ["io"], "top_k": 50})
        assert only_io["matches"] and all("io" in m["tags"] for m in only_io["matches"])
        bare = await call(s, "similar_incidents", {"description": "everything is slow", "tags": "io", "top_k": 50})
        assert [m["id"] for m in bare["matches"]] == [m["id"] for m in only_io["matches"]], bare

    run_with_server(body)


@pytest.mark.parametrize("args, expect", [
    ({"description": "x", "top_k": 0}, "top_k: 0 is out of range; use an integer from 1 to 50"),
    ({"description": "x", "top_k": 1000}, "1 to 50"),
    ({"description": "   "}, "description: it is empty"),
    ({"description": "x", "source": "elsewhere"}, "unknown variant"),
    ({"service": "no-such-service-xyz"}, "unknown service"),
    ({"description": "x", "window": "9d"}, "window"),
])
def test_bad_similar_incidents_arguments_are_invalid_params(args, expect):
    async def body(s):
        with pytest.raises(MCPError) as e:
            await s.call_tool("similar_incidents", args)
        assert e.value.error.code == -32602, e.value.error
        assert expect in e.value.error.message, e.value.error.message

    run_with_server(body)


def test_unknown_incident_id_and_hidden_write_tool_are_clear_errors():
    async def body(s):
        with pytest.raises(MCPError) as e:
            await s.call_tool("get_incident", {"id": "inc-424242"})
        assert e.value.error.code == -32602 and 'no incident with id "inc-424242"' in e.value.error.message
        with pytest.raises(MCPError) as e:
            await s.call_tool("record_incident", {"title": "t", "root_cause": "c", "resolution": "r"})
        assert "record_incident" in e.value.error.message, e.value.error

    run_with_server(body)


def test_recorded_incident_carries_live_symptoms_survives_restart_and_is_found_again(tmp_path):
    data = tmp_path / "data"
    args = ("serve", "--write-tools", "--data-dir", str(data))
    port = 47121  # nothing listens here: every connect is refused

    async def record(s):
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert tools["record_incident"].annotations.read_only_hint is False
        Workload("refused", "inc-caller", port, count=40).wait()
        await settle()
        with pytest.raises(MCPError) as e:
            await s.call_tool("record_incident", {"title": "", "root_cause": "c", "resolution": "r"})
        assert e.value.error.code == -32602 and "title must not be empty" in e.value.error.message
        r = await call(s, "record_incident", {
            "title": "inc-caller cannot reach its backend",
            "service": "inc-caller", "window": "1m",
            "description": "every connect refused after the backend moved port",
            "root_cause": "backend listens on 8081 since the deploy",
            "resolution": "pointed inc-caller at 8081",
            "tags": ["Deploy", "network"],
        })
        inc = r["incident"]
        assert inc["id"].startswith("inc-") and inc["services"] == ["inc-caller"]
        assert inc["tags"] == ["deploy", "network"] and inc["source"] == "recorded"
        assert inc["signature"]["failed_connects"] >= 3, inc["signature"]
        assert r["signature_summary"]["counts"]["failed_connects"] == 40, r
        # The live symptoms alone point at the seeded "downstream refusing" pattern and at ours.
        sim = await call(s, "similar_incidents", {"service": "inc-caller", "window": "1m", "top_k": 5})
        ids = [m["id"] for m in sim["matches"]]
        assert inc["id"] in ids[:2] and "downstream-refusing" in ids, sim
        assert "failed_connects" in sim["matches"][0]["matched_on"]
        assert sim["query"]["signature_summary"]["measured"]["failed_connects"] >= 3
        return inc["id"]

    inc_id = run_with_server(record, args)

    async def after_restart(s):
        got = await call(s, "get_incident", {"id": inc_id})
        assert got["root_cause"] == "backend listens on 8081 since the deploy"
        found = await call(s, "similar_incidents", {
            "description": "connections refused since the deploy moved the backend port", "source": "recorded"})
        assert found["matches"][0]["id"] == inc_id, found

    run_with_server(after_restart, args)
    assert (data / "casebase" / "incidents.log").stat().st_size > 0
    assert (data / "casebase" / "index.json").exists()


def test_failed_opens_point_to_the_fix_their_errno_calls_for(tmp_path):
    # A missing file and a refused one used to be one symptom, so both matched the
    # permissions pattern first. They call for different fixes.
    secret = tmp_path / "root-only"
    secret.write_text("x")
    secret.chmod(0o600)

    async def body(s):
        Workload("enoent", "inc-missing", 0, count=3000).wait()
        Workload("eacces", "inc-denied", 0, count=3000, dir=tmp_path).wait()
        await settle()
        missing = await call(s, "similar_incidents", {"service": "inc-missing", "window": "1m", "top_k": 3})
        assert missing["matches"][0]["id"] == "bad-config-deploy", missing
        assert missing["matches"][0]["matched_on"] == ["syscall_errors_missing"], missing
        assert "permission-denied" not in [m["id"] for m in missing["matches"]], missing
        denied = await call(s, "similar_incidents", {"service": "inc-denied", "window": "1m", "top_k": 3})
        assert denied["matches"][0]["id"] == "permission-denied", denied
        assert denied["matches"][0]["matched_on"] == ["syscall_errors_denied"], denied
        counts = denied["query"]["signature_summary"]["counts"]["syscall_errors"]
        assert counts["denied"] >= 3000 and counts["missing"] < 100, counts

    run_with_server(body)


def test_a_heavy_writer_matches_io_patterns(tmp_path):
    # Block IO bytes were not a live symptom: a service writing tens of MB/s matched whatever
    # faint run-queue delay it had, as "CPU steal" at 0.9.
    async def body(s):
        w = Workload("fsync", "inc-writer", 0, seconds=4, size=1 << 20, dir="/var/tmp")
        await anyio.to_thread.run_sync(w.wait)
        await settle()
        sim = await call(s, "similar_incidents", {"service": "inc-writer", "window": "1m", "top_k": 3})
        counts = sim["query"]["signature_summary"]["counts"]
        assert counts["io_bytes_per_s"] > 10e6, counts
        assert sim["query"]["signature_summary"]["measured"]["io_throughput"] >= 1, sim["query"]
        best = sim["matches"][0]
        assert "io_throughput" in best["matched_on"] and "io" in best["tags"], sim["matches"]

    run_with_server(body)


def test_over_http_a_read_token_cannot_record_and_a_write_token_can(tmp_path):
    server = HttpServer(tmp_path, extra=("--write-tools", "--data-dir", str(tmp_path / "data")))
    try:
        args = {"title": "disk filled by core dumps", "root_cause": "a crash loop wrote core files",
                "resolution": "disabled core dumps, fixed the crash", "tags": ["io"]}

        async def as_reader(s):
            assert "record_incident" in {t.name for t in (await s.list_tools()).tools}
            with pytest.raises(MCPError) as e:
                await s.call_tool("record_incident", args)
            return e.value.error.message

        text = session_run(server.url, READ_SECRET, as_reader)
        assert "ci has the read role" in text and "write token" in text, text

        async def as_writer(s):
            return await call(s, "record_incident", args)

        r = session_run(server.url, WRITE_SECRET, as_writer)
        assert r["incident"]["id"].startswith("inc-")
        lines = server.audit.read_text().splitlines()
        assert any('"record_incident"' in l and '"denied"' in l and '"ci"' in l for l in lines), lines
        assert any('"record_incident"' in l and '"ok"' in l and '"ops"' in l for l in lines), lines
    finally:
        server.stop()


def test_https_with_a_certificate_and_key(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    server = HttpServer(tmp_path, extra=("--tls-cert", str(cert), "--tls-key", str(key)))
    try:
        assert server.url.startswith("https://127.0.0.1:"), server.url

        async def main():
            headers = {"Authorization": f"Bearer {READ_SECRET}"}
            async with httpx2.AsyncClient(headers=headers, timeout=30, verify=ssl.create_default_context(cafile=str(cert))) as client:
                async with streamable_http_client(server.url, http_client=client) as (r, w, *_):
                    async with ClientSession(r, w) as s:
                        await s.initialize()
                        return await call(s, "list_services", {"limit": 1})

        assert "services" in anyio.run(main)
        # Plain HTTP to the TLS port gets no MCP answer.
        with pytest.raises(httpx2.HTTPError):
            httpx2.post(server.url.replace("https://", "http://"), json={}, timeout=5)
    finally:
        server.stop()
    bad = subprocess.run([bpfsight_bin(), "serve", "--http", "127.0.0.1:0", "--tls-cert", str(cert),
                          "--tls-key", str(tmp_path / "missing.pem")], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "private key" in bad.stderr and "missing.pem" in bad.stderr, bad.stderr


def test_config_file_env_and_flags_with_config_check(tmp_path):
    cfg = tmp_path / "bpfsight.toml"
    cfg.write_text(f"""
data_dir = "{tmp_path / 'from-file'}"
tools = ["list_services", "similar_incidents"]
[http]
listen = "0.0.0.0:8765"
[redaction]
ips = "hash"
[embedder]
kind = "openai"
url = "https://api.example.com/v1/embeddings"
model = "text-embedding-3-small"
api_key_env = "BPFSIGHT_TEST_UNSET_KEY"
""")
    env = {k: v for k, v in os.environ.items() if k not in ("BPFSIGHT_DATA_DIR", "BPFSIGHT_TOKENS")}
    run = lambda *a, **kw: subprocess.run([bpfsight_bin(), "config", "check", "--config", str(cfg), *a],
                                          capture_output=True, text=True, timeout=30, env={**env, **kw})
    r = run()
    assert r.returncode == 1, r.stdout + r.stderr
    assert f'data_dir = "{tmp_path / "from-file"}"' in r.stdout
    assert 'ips = "hash"' in r.stdout
    assert "0.0.0.0:8765 is not loopback and no tokens are configured" in r.stdout
    assert "variable BPFSIGHT_TEST_UNSET_KEY is not set" in r.stdout
    # Environment over file, flags over environment; secrets never printed.
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ops write {WRITE_SECRET}\n")
    r = run("--tokens-file", str(tokens), "--allowed-host", "bpfsight.internal", "--data-dir", str(tmp_path / "flag"),
            BPFSIGHT_DATA_DIR=str(tmp_path / "env"), BPFSIGHT_TEST_UNSET_KEY="sk-very-secret-value")
    assert f'data_dir = "{tmp_path / "flag"}"' in r.stdout, r.stdout
    assert WRITE_SECRET not in r.stdout and "sk-very-secret-value" not in r.stdout
    assert 'api_key = "set (masked)"' in r.stdout
    assert "TLS is off" in r.stdout and r.returncode == 0, r.stdout
    r = run(BPFSIGHT_DATA_DIR=str(tmp_path / "env"))
    assert f'data_dir = "{tmp_path / "env"}"' in r.stdout
    cfg.write_text("tools = [\"no_such_tool\"]\nunknown_key = 1\n")
    r = run()
    assert r.returncode == 1 and "unknown field `unknown_key`" in r.stderr, r.stderr
    # The file's tool list applies to serve too.
    cfg.write_text('tools = ["get_incident"]\n')

    async def body(s):
        assert [t.name for t in (await s.list_tools()).tools] == ["get_incident"]

    run_with_server(body, ("serve", "--config", str(cfg)))


class EmbeddingService:
    """OpenAI-compatible /v1/embeddings and Ollama /api/embeddings on loopback (hashed bag of
    words, 64 dims), standing in for a model server that this machine cannot reach."""

    def __init__(self):
        import hashlib
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen.append((self.path, self.headers.get("Authorization"), body["model"]))
                text = body.get("input") or body.get("prompt")  # OpenAI / Ollama
                vec = [0.0] * 64
                for w in text.lower().split():
                    vec[int(hashlib.sha1(w.encode()).hexdigest(), 16) % 64] += 1.0
                if self.path == "/api/embeddings":
                    answer = {"embedding": vec}
                else:
                    answer = {"data": [{"embedding": vec, "index": 0}], "model": body["model"]}
                out = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/embeddings"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


def test_remote_openai_compatible_embedder_and_fallback_when_it_is_down(tmp_path):
    svc = EmbeddingService()
    cfg = tmp_path / "bpfsight.toml"
    cfg.write_text(f"""
[embedder]
kind = "openai"
url = "{svc.url}"
model = "test-embed-1"
api_key_env = "BPFSIGHT_TEST_EMBED_KEY"
timeout_secs = 3
""")
    os.environ["BPFSIGHT_TEST_EMBED_KEY"] = "sk-test-0123456789"
    try:
        async def body(s):
            r = await call(s, "similar_incidents", {"description": "disk full no space left on device", "top_k": 3})
            assert r["matches"] and r["matches"][0]["text_score"] is not None, r
            return r

        run_with_server(body, ("serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d")))
        # Every seed was embedded remotely at start, then the query.
        assert len(svc.requests) >= 45, len(svc.requests)
        assert all(p == "/v1/embeddings" and a == "Bearer sk-test-0123456789" and m == "test-embed-1"
                   for p, a, m in svc.requests), svc.requests[:3]
    finally:
        svc.stop()
        os.environ.pop("BPFSIGHT_TEST_EMBED_KEY", None)

    # The service is gone now: bpfsight still starts and answers with its built-in embedder.
    async def down(s):
        r = await call(s, "similar_incidents", {"description": "writes fail: no space left on device"})
        assert r["matches"][0]["id"] == "disk-full", r

    run_with_server(down, ("serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d")))


def test_ollama_embedder_through_flags(tmp_path):
    svc = EmbeddingService()
    url = svc.url.replace("/v1/embeddings", "/api/embeddings")
    try:
        async def body(s):
            r = await call(s, "similar_incidents", {"description": "kernel says nf_conntrack table full", "top_k": 2})
            assert r["matches"][0]["text_score"] is not None, r

        run_with_server(body, ("serve", "--embedder", "ollama", "--embedder-url", url,
                                     "--embedder-model", "nomic-embed-text", "--data-dir", str(tmp_path)))
        assert svc.requests and all(p == "/api/embeddings" and m == "nomic-embed-text" for p, _, m in svc.requests)
    finally:
        svc.stop()
