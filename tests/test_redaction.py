"""Nothing sensitive leaves the process: secrets in command lines are always masked, and
addresses are hashed when the policy says so, in the structured result and the text alike."""
import json
import subprocess

import pytest

from conftest import Workload, call, run_with_server, settle

SECRETS = ["hunter2", "sk-live-abc123def456", "s3cr3tT0k3n", "eyJhbGciOiJIUzI1NiJ9.payload.sig", "pa55w0rd"]
NOTE = [
    "--api-key", "sk-live-abc123def456",
    "password=hunter2",
    "--token=s3cr3tT0k3n",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
    "postgres://app:pa55w0rd@db.internal/app",
]
ADDR = "10.77.0.1"  # a non-loopback address on lo, so hashing has something to hash


def everything(res):
    return json.dumps(res.structured_content) + " ".join(c.text for c in res.content if hasattr(c, "text"))


@pytest.fixture
def extra_address():
    subprocess.run(["ip", "addr", "add", f"{ADDR}/32", "dev", "lo"], check=False, capture_output=True)
    yield
    subprocess.run(["ip", "addr", "del", f"{ADDR}/32", "dev", "lo"], check=False, capture_output=True)


def test_secrets_in_command_lines_never_reach_the_client():
    srv = Workload("echo-server", "leaky-srv", 47130, wait_ready=True, seconds=30, note=" ".join(NOTE))
    try:
        async def body(s):
            res = await s.call_tool("list_services", {"name_contains": "leaky"})
            text = everything(res)
            row = res.structured_content["services"][0]
            assert row["service"] == "leaky-srv" and "workload.py" in row["cmdline"], row
            assert "***" in row["cmdline"]
            for secret in SECRETS:
                assert secret not in text, f"{secret} leaked: {text}"

        run_with_server(body)
    finally:
        srv.kill()


def test_addresses_are_hashed_stably_when_asked(extra_address):
    async def body(s):
        Workload("refused", "hash-cli", 47131, host=ADDR, count=3).wait()
        await settle()
        first = await s.call_tool("get_connection_stats", {"service": "hash-cli", "window": "1m"})
        again = await s.call_tool("get_service_errors", {"window": "1m"})
        for res in (first, again):
            assert ADDR not in everything(res), everything(res)
        peer = first.structured_content["services"][0]["top_peers"][0]["addr"]
        assert peer.startswith("ip-") and len(peer) == 11, peer
        row = next(x for x in again.structured_content["services"] if x["service"] == "hash-cli")
        assert row["top_peers"][0]["addr"] == peer  # the same peer stays recognisable
        assert row["recent_events"][0]["peer"] == f"{peer}:47131"

    run_with_server(body, args=("serve", "--redact-ips", "hash"))
