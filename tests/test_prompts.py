"""Prompts and resources: the investigation templates in prompts/ and the attachable JSON views,
through the official Python SDK over stdio and streamable HTTP, against live kernel data."""
import json

import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from conftest import Workload, run_with_server, settle
from test_http import READ_SECRET, HttpServer, session_run

PROMPTS = {"triage_host", "investigate_service", "write_postmortem"}
SECRET = "s3cr3tT0k3n-prompts"


def message_text(res):
    assert len(res.messages) == 1 and res.messages[0].role == "user"
    return res.messages[0].content.text


def test_prompts_render_with_checked_arguments_over_stdio():
    async def body(s):
        listed = {p.name: p for p in (await s.list_prompts()).prompts}
        assert set(listed) == PROMPTS
        args = {a.name: a for a in listed["investigate_service"].arguments}
        assert args["service"].required and not args["window"].required
        assert "Default: 5m" in args["window"].description

        text = message_text(await s.get_prompt("investigate_service", {"service": "postgres.service", "window": "1h"}))
        assert "`postgres.service`" in text and "last 1h" in text and "{{" not in text
        for tool in ("get_resource_usage", "get_connection_stats", "get_events", "predict_anomaly", "similar_incidents"):
            assert tool in text, tool
        assert "`observed_s` is below" in text
        text = message_text(await s.get_prompt("triage_host"))
        assert 'window: "5m"' in text and "get_service_errors" in text and "`observed_s` is below" in text

        for name, arguments, expected in [
            ("investigate_service", {}, "needs argument service"),
            ("investigate_service", {"service": "web", "window": "5x"}, '"30s"'),
            ("investigate_service", {"service": "web", "colour": "red"}, "its arguments are: service, window"),
            ("write_postmortem", {"service": "web", "resolution": "x" * 5000}, "at most 2000"),
            ("no_such_prompt", {}, "the prompts are: triage_host"),
        ]:
            with pytest.raises(MCPError) as e:
                await s.get_prompt(name, arguments)
            assert e.value.error.code == -32602, (name, e.value.error)
            assert expected in e.value.error.message, (name, e.value.error.message)

    run_with_server(body)


def test_resources_are_live_and_redacted_over_stdio():
    srv = Workload("echo-server", "res-srv", 47140, wait_ready=True, seconds=30, note=f"auth --token={SECRET}")
    try:
        async def body(s):
            await settle()
            uris = {str(r.uri) for r in (await s.list_resources()).resources}
            assert uris == {"bpfsight://health", "bpfsight://services"}
            templates = [t.uri_template for t in (await s.list_resource_templates()).resource_templates]
            assert templates == ["bpfsight://services/{service}"]

            health = json.loads((await s.read_resource("bpfsight://health")).contents[0].text)
            assert health["source"] == "ebpf" and health["last_poll"] > 0, health

            raw = (await s.read_resource("bpfsight://services")).contents[0].text
            assert SECRET not in raw
            row = next(x for x in json.loads(raw)["services"] if x["service"] == "res-srv")
            assert srv.pid in row["pids"] and "***" in row["cmdline"], row

            one = json.loads((await s.read_resource("bpfsight://services/res-srv")).contents[0].text)
            assert one["service"] == "res-srv" and one["window_s"] == 300, one
            kernel = json.loads((await s.read_resource("bpfsight://services/%5Bkernel%5D")).contents[0].text)
            assert kernel["service"] == "[kernel]"

            for uri, code, expected in [
                ("bpfsight://services/no-such-service", -32002, "unknown service"),
                ("bpfsight://nothing", -32002, "the resources are bpfsight://health"),
                ("bpfsight://services/bad%zz", -32602, "percent-encoded"),
            ]:
                with pytest.raises(MCPError) as e:
                    await s.read_resource(uri)
                assert e.value.error.code == code and expected in e.value.error.message, (uri, e.value.error)

        run_with_server(body)
    finally:
        srv.kill()


def test_arguments_complete_from_live_service_names():
    srv = Workload("echo-server", "complete-me-srv", 47141, wait_ready=True, seconds=30)
    try:
        async def body(s):
            await settle()
            prompt = types.PromptReference(type="ref/prompt", name="investigate_service")
            done = (await s.complete(prompt, {"name": "service", "value": "complete-me"})).completion
            assert done.values == ["complete-me-srv"] and done.total == 1 and not done.has_more, done
            # Inside the name too, after the names that start with it.
            done = (await s.complete(prompt, {"name": "service", "value": "me-sr"})).completion
            assert "complete-me-srv" in done.values, done
            done = (await s.complete(prompt, {"name": "window", "value": "1"})).completion
            assert done.values == ["1m", "15m", "1h", "1d"], done
            template = types.ResourceTemplateReference(type="ref/resource", uri="bpfsight://services/{service}")
            done = (await s.complete(template, {"name": "service", "value": "complete-me"})).completion
            assert done.values == ["complete-me-srv"], done
            # Many services, few values: the total and has_more say so.
            done = (await s.complete(template, {"name": "service", "value": ""})).completion
            assert len(done.values) <= 100 and done.total >= len(done.values), done
            assert done.has_more == (done.total > len(done.values)), done
            with pytest.raises(MCPError) as e:
                await s.complete(types.PromptReference(type="ref/prompt", name="nope"), {"name": "x", "value": ""})
            assert e.value.error.code == -32602 and "triage_host" in e.value.error.message

        run_with_server(body)
    finally:
        srv.kill()


def test_prompts_and_resources_over_streamable_http(tmp_path):
    server = HttpServer(tmp_path)
    try:
        async def body(s):
            assert {p.name for p in (await s.list_prompts()).prompts} == PROMPTS
            text = message_text(await s.get_prompt("write_postmortem", {"service": "api"}))
            assert "`api`" in text and "record_incident" in text and "last 30m" in text
            health = json.loads((await s.read_resource("bpfsight://health")).contents[0].text)
            assert health["source"] == "ebpf"

        session_run(server.url, READ_SECRET, body)
        lines = [json.loads(line) for line in server.audit.read_text().splitlines()]
        audited = {(x["tool"], x["principal"], x["outcome"]) for x in lines}
        assert ("prompts/get", "ci", "ok") in audited and ("resources/read", "ci", "ok") in audited, lines
        prompt = next(x for x in lines if x["tool"] == "prompts/get")
        assert prompt["arguments"] == {"name": "write_postmortem", "service": "api"}, prompt
    finally:
        server.stop()
