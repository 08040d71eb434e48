"""The binary's behaviour outside a session: privileges and protocol hygiene."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

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


def test_allocator_starts_with_on_demand_commit_and_quick_purge_unless_overridden():
    # bpfsight sets mimalloc's options by number before its first allocation; mimalloc's
    # verbose start-up lines name them, so a renumbering in a mimalloc upgrade shows here.
    def options(extra):
        env = {**os.environ, "MIMALLOC_VERBOSE": "1", **extra}
        p = subprocess.run([bpfsight_bin(), "tools"], capture_output=True, text=True, timeout=30, env=env)
        assert p.returncode == 0, p.stderr
        return dict(re.findall(r"option '(\w+)': (-?\d+)", p.stderr))

    got = options({})
    assert got.get("arena_eager_commit") == "0" and got.get("purge_delay") == "100", got
    got = options({"MIMALLOC_PURGE_DELAY": "1000"})
    assert got.get("arena_eager_commit") == "0" and got.get("purge_delay") == "1000", got


NAB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nab"


def test_eval_nab_scores_both_detectors_on_real_series_and_refuses_bad_input(tmp_path):
    if not NAB.exists():
        pytest.fail(f"the NAB data set is expected at {NAB} (../shared/datasets/nab)")
    p = subprocess.run(
        [bpfsight_bin(), "eval", "nab", "--data", str(NAB / "data"), "--labels", str(NAB / "combined_windows.json"),
         "--only", "realKnownCause/ec2_request_latency", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert r["series"] == 1 and r["points"] > 3000 and r["trainings"] >= 1
    assert [d["detector"] for d in r["detectors"]] == ["robust-z", "lstm"]
    for d in r["detectors"]:
        m = d["overall"]
        assert set(m) >= {"precision", "recall", "f1", "event_recall", "false_alarms_per_day", "nab_score"}
        assert m["tally"]["windows"] == 3, m["tally"]
        assert 0 <= m["precision"] <= 1 and 0 <= m["event_recall"] <= 1 and m["nab_score"] <= 100
    # The LSTM's windows were caught on this series (system failure with a clear latency change).
    assert r["detectors"][1]["overall"]["tally"]["windows_caught"] >= 1, r["detectors"][1]["overall"]

    table = subprocess.run(
        [bpfsight_bin(), "eval", "nab", "--data", str(NAB / "data"), "--labels", str(NAB / "combined_windows.json"),
         "--only", "realKnownCause/ec2_request_latency", "--baseline-only"],
        capture_output=True, text=True, timeout=120,
    )
    assert table.returncode == 0 and "robust-z" in table.stdout and "NAB" in table.stdout, table

    bad = tmp_path / "windows.json"
    bad.write_text("{not json")
    for labels, needle in [(tmp_path / "missing.json", "missing.json"), (bad, "not NAB windows JSON")]:
        e = subprocess.run(
            [bpfsight_bin(), "eval", "nab", "--data", str(NAB / "data"), "--labels", str(labels)],
            capture_output=True, text=True, timeout=60,
        )
        assert e.returncode == 1 and needle in e.stderr and "panicked" not in e.stderr, e.stderr
