"""The binary's behaviour outside a session: privileges and protocol hygiene."""
import json
import shutil
import subprocess

import pytest

from conftest import bpfsight_bin


def as_nobody():
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is needed for this test")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", bpfsight_bin()]


def test_without_privileges_ebpf_exits_with_a_clear_message_not_a_panic():
    p = subprocess.run(
        as_nobody() + ["serve", "--source", "ebpf"], input="", capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == 1, p
    assert "permission denied" in p.stderr and "CAP_BPF" in p.stderr and "CAP_PERFMON" in p.stderr, p.stderr
    assert "setcap" in p.stderr, p.stderr
    assert "panicked" not in p.stderr
    assert p.stdout == ""


def test_without_privileges_the_default_source_falls_back_to_procfs_and_says_so():
    p = subprocess.run(
        as_nobody() + ["call", "list_services", "--collect", "1s", "--args", '{"limit": 5}'],
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "answering from /proc" in p.stderr and "CAP_BPF" in p.stderr, p.stderr
    out = json.loads(p.stdout)
    assert out["collector"]["source"] == "procfs" and out["total"] > 0, out


def test_stdout_carries_only_protocol_frames():
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    msgs = [init, {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}]
    p = subprocess.run([bpfsight_bin(), "serve"], input="".join(json.dumps(m) + "\n" for m in msgs),
                       capture_output=True, text=True, timeout=30)
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    assert len(lines) == 2, p.stdout
    for l in lines:
        assert json.loads(l)["jsonrpc"] == "2.0"
    assert "collector started" in p.stderr
