"""History survives a restart: a real server saves what the kernel showed it to its data
directory, a second real server restores it and answers from it, over the MCP client."""
import json
import os
import signal
import subprocess
import time

import anyio

from conftest import Workload, bpfsight_bin, call, run_with_server, settle


def row(report, name):
    rows = [s for s in report["services"] if s["service"] == name]
    return rows[0] if rows else None


def serve(data, *extra):
    return ("serve", "--data-dir", str(data), "--keep-history", "5m", *extra)


async def health(s):
    return json.loads((await s.read_resource("bpfsight://health")).contents[0].text)


def test_a_restart_keeps_history_events_and_cursors(tmp_path):
    data = tmp_path / "data"
    before = {}

    async def first(s):
        w = Workload("enoent", "hist-enoent", 0, count=3000)
        r = Workload("refused", "hist-refused", 1, count=5)
        await anyio.to_thread.run_sync(w.wait)
        await anyio.to_thread.run_sync(r.wait)
        await settle()
        errors = await call(s, "get_service_errors", {"window": "15m", "limit": 500, "min_syscall_errors_per_s": 0})
        enoent = row(errors, "hist-enoent")
        top = enoent["syscall_errors"][0]
        assert (top["syscall"], top["errno"]) == ("openat", "ENOENT") and top["count"] >= 3000, enoent
        ev = await call(s, "get_events", {"service": "hist-refused", "kind": ["failed_connect"], "window": "15m"})
        assert ev["total"] == 5, ev
        before.update(top=top, seqs=[e["seq"] for e in ev["events"]], observed=errors["observed_s"])

    run_with_server(first, serve(data))
    saved = data / "history-ebpf.bin"
    assert saved.exists(), list(data.iterdir())  # saved when the client closed the session

    async def second(s):
        # Nothing ran since: everything comes from the first server's history.
        errors = await call(s, "get_service_errors", {"window": "15m", "limit": 500, "min_syscall_errors_per_s": 0})
        enoent = row(errors, "hist-enoent")
        assert enoent, errors
        top = enoent["syscall_errors"][0]
        assert (top["syscall"], top["errno"], top["count"]) == ("openat", "ENOENT", before["top"]["count"]), top
        # The seconds both runs watched, not the downtime between them.
        assert before["observed"] <= errors["observed_s"] < 15 * 60, (before, errors["observed_s"])
        assert errors["observed_s"] <= before["observed"] + 30, (before, errors["observed_s"])
        ev = await call(s, "get_events", {"service": "hist-refused", "kind": ["failed_connect"], "window": "15m"})
        assert [e["seq"] for e in ev["events"]] == before["seqs"], ev
        services = await call(s, "list_services", {"name_contains": "hist-", "limit": 50})
        names = {x["service"] for x in services["services"]}
        assert {"hist-enoent", "hist-refused"} <= names, services
        h = await health(s)
        assert len(h["earlier_runs"]) == 1, h
        run = h["earlier_runs"][0]
        assert run["from"] < run["to"] <= h["started_at"], h
        assert h["history"]["saving"] and h["history"]["restored_from"] == run["to"], h["history"]
        assert h["history"]["file"] == str(saved) and h["history"]["every_s"] == 300, h["history"]
        # New events number on from the restored ones, so cursors handed out before the restart
        # still page through older events.
        r = Workload("refused", "hist-refused", 1, count=2)
        await anyio.to_thread.run_sync(r.wait)
        await settle()
        ev = await call(s, "get_events", {"service": "hist-refused", "kind": ["failed_connect"], "window": "15m"})
        seqs = [e["seq"] for e in ev["events"]]
        assert len(seqs) == 7 and seqs[2:] == before["seqs"] and min(seqs[:2]) > max(before["seqs"]), seqs

    run_with_server(second, serve(data))

    # SIGTERM (how systemd and clients stop a server) saves too: a third run sees two earlier runs.
    # No client: stdin stays open and silent, as under a service manager.
    log = tmp_path / "third.log"
    with open(log, "w") as errf:
        p = subprocess.Popen([bpfsight_bin(), *serve(data)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=errf)
        deadline = time.monotonic() + 60
        while "incident case base ready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # a run that watched some seconds
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=30)
        p.stdin.close()
    err = log.read_text()
    assert rc == 0, err
    assert "history restored" in err and "SIGTERM" in err, err

    async def third(s):
        h = await health(s)
        assert len(h["earlier_runs"]) == 3, h["earlier_runs"]
        errors = await call(s, "get_service_errors", {"window": "15m", "limit": 500, "min_syscall_errors_per_s": 0})
        assert row(errors, "hist-enoent")["syscall_errors"][0]["count"] == before["top"]["count"], errors

    run_with_server(third, serve(data))


def test_unreadable_history_is_kept_aside_and_off_means_off(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "history-ebpf.bin").write_bytes(b"BPFSIGHT-HISTORY" + b"\x01\x00\x00\x00" + b"\xff" * 40)

    async def damaged(s):
        h = await health(s)
        assert "earlier_runs" not in h, h
        assert "moved to" in h["history"]["last_error"] and h["history"]["restored_from"] is None, h["history"]

    async def empty(s):
        h = await health(s)
        assert "earlier_runs" not in h and "history" not in h, h

    run_with_server(damaged, serve(data))
    # The damaged file is kept for a look, and a good one was saved in its place.
    assert (data / "history-ebpf.bin.bad").read_bytes().startswith(b"BPFSIGHT-HISTORY")
    assert (data / "history-ebpf.bin").stat().st_size > 32

    off = tmp_path / "off"
    run_with_server(empty, ("serve", "--data-dir", str(off), "--keep-history", "off"))
    assert not (off / "history-ebpf.bin").exists()


def test_a_second_process_reads_the_history_but_leaves_saving_to_the_first(tmp_path):
    data = tmp_path / "data"

    async def first(s):
        w = Workload("enoent", "hist-shared", 0, count=500)
        await anyio.to_thread.run_sync(w.wait)
        await settle()

    run_with_server(first, serve(data))
    saved = data / "history-ebpf.bin"
    stamp = saved.stat().st_mtime_ns

    async def running(s):
        # While this server holds the file, a one-shot `call` restores from it and does not write it.
        out = await anyio.to_thread.run_sync(lambda: subprocess.run(
            [bpfsight_bin(), "call", "get_service_errors", "--collect", "1s", "--data-dir", str(data),
             "--keep-history", "5m", "--args", json.dumps({"window": "15m", "min_syscall_errors_per_s": 0})],
            capture_output=True, text=True, timeout=60))
        assert out.returncode == 0, out.stderr
        assert row(json.loads(out.stdout), "hist-shared"), out.stdout
        assert "only read it" in out.stderr, out.stderr
        assert saved.stat().st_mtime_ns == stamp

    run_with_server(running, serve(data))
    assert saved.stat().st_mtime_ns != stamp  # the server saved at its exit


def test_bad_keep_history_value_is_refused_with_what_is_accepted(tmp_path):
    out = subprocess.run([bpfsight_bin(), "serve", "--data-dir", str(tmp_path), "--keep-history", "often"],
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    assert "--keep-history" in out.stderr and "off" in out.stderr, out.stderr


def test_an_http_server_with_a_client_attached_stops_on_sigterm_and_saves(tmp_path):
    from test_http import READ_SECRET, HttpServer, session_run

    data = tmp_path / "data"
    server = HttpServer(tmp_path, extra=("--data-dir", str(data), "--keep-history", "5m"))

    async def attached(s):
        await s.list_tools()
        # The client's event stream stays open: the server must not wait for it forever.
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        rc = await anyio.to_thread.run_sync(lambda: server.proc.wait(20))
        return rc, time.monotonic() - t0

    try:
        rc, took = session_run(server.url, READ_SECRET, attached)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    assert rc == 0 and took < 10, (rc, took, "".join(server.stderr))
    assert (data / "history-ebpf.bin").exists(), "".join(server.stderr)
