"""A kernel without some of bpfsight's hooks (Linux 6.1 has no sock_send_length, for one): the
programs that can run still do, on the real kernel, and every answer says what it cannot see.
The hooks are hidden with BPFSIGHT_HIDE_HOOKS, so the same loader path runs as on such a kernel."""
import json
import re
import subprocess

import anyio

from conftest import Workload, bpfsight_bin, call, run_with_server, settle

HIDDEN = "sock_send_length,tcp:tcp_send_reset,sched_switch"


def test_missing_hooks_leave_out_only_their_signals(monkeypatch):
    monkeypatch.setenv("BPFSIGHT_HIDE_HOOKS", HIDDEN)
    port, closed_port = 47151, 47152

    async def body(s):
        health = json.loads((await s.read_resource("bpfsight://health")).contents[0].text)
        assert health["source"] == "ebpf", health
        gone = {u["program"]: u for u in health["unavailable"]}
        assert set(gone) == {
            "sock_send_length", "tcp_send_reset", "sched_switch",
            # Their per-thread batches are filed by the scheduler hook.
            "sched_process_exec", "sched_process_exit", "mm_page_alloc",
        }, gone
        assert "hidden by BPFSIGHT_HIDE_HOOKS" in gone["sock_send_length"]["reason"]
        assert gone["sched_process_exit"]["reason"] == "needs sched_switch, which is not attached"
        assert gone["sock_send_length"]["signal"] == "TCP sends and bytes sent"

        srv = Workload("echo-server", "part-srv", port, wait_ready=True, seconds=20)
        try:
            cli = Workload("echo-client", "part-cli", port, seconds=2)
            await anyio.to_thread.run_sync(cli.wait)
            ref = Workload("refused", "part-refuse", closed_port, count=6)
            await anyio.to_thread.run_sync(ref.wait)
        finally:
            srv.kill()
        await settle()

        # Connection states still come from the kernel...
        stats = await call(s, "get_connection_stats", {"window": "1m"})
        rows = {r["service"]: r for r in stats["services"]}
        assert rows["part-refuse"]["failed_connects"] == 6, rows.get("part-refuse")
        assert rows["part-cli"]["opened"] == 1 and rows["part-cli"]["closed"] == 1, rows.get("part-cli")
        # ...the hidden ones do not, and the answer says so rather than passing zeros off as data.
        assert rows["part-cli"]["sends"] == 0
        assert "TCP sends and bytes sent" in stats["unavailable"], stats["unavailable"]
        assert "TCP resets sent" in stats["unavailable"]
        res = await s.call_tool("get_connection_stats", {"window": "1m"})
        assert "Not collected here: " in res.content[0].text and "TCP sends and bytes sent" in res.content[0].text
        assert not any(r["service"] == "[no-socket]" and r["resets_sent"] for r in stats["services"])

        usage = await call(s, "get_resource_usage", {"service": "part-cli", "resource": "all", "window": "1m"})
        assert "run-queue latency, on-CPU time and context switches" in usage["unavailable"], usage
        assert usage["source"] == "ebpf"

    run_with_server(body)


def test_every_hook_present_reports_nothing_unavailable():
    async def body(s):
        health = json.loads((await s.read_resource("bpfsight://health")).contents[0].text)
        assert "unavailable" not in health, health["unavailable"]
        stats = await call(s, "get_connection_stats", {"window": "30s"})
        assert "unavailable" not in stats

    run_with_server(body)


def test_signal_groups_turned_off_are_not_attached_and_answers_say_so():
    """`--without syscalls,block`, for a host where the per-syscall hook costs too much: those
    hooks are not attached at all (the metrics endpoint lists every attached program), the rest
    collect as usual, and answers name what is not collected and why."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        mport = sock.getsockname()[1]
    closed_port = 47153

    async def body(s):
        health = json.loads((await s.read_resource("bpfsight://health")).contents[0].text)
        gone = {u["program"]: u["reason"] for u in health["unavailable"]}
        assert gone == {
            "sys_exit": "turned off by --without syscalls",
            "sys_enter_slow": "turned off by --without syscalls",
            "block_rq_issue": "turned off by --without block",
            "block_rq_complete": "turned off by --without block",
        }, gone

        failing = Workload("enoent", "without-enoent", 0, count=3000)
        refused = Workload("refused", "without-refuse", closed_port, count=4)
        await anyio.to_thread.run_sync(failing.wait)
        await anyio.to_thread.run_sync(refused.wait)
        await settle()

        # The same query that lists a failing-open loop when syscalls are collected (test_host).
        errors = await call(s, "get_service_errors", {"window": "1m", "limit": 500, "min_syscall_errors_per_s": 1})
        rows = {r["service"]: r for r in errors["services"]}
        # TCP is still collected; the failing opens are not, and the answer says so.
        assert rows["without-refuse"]["failed_connects"] == 4, rows.get("without-refuse")
        assert "without-enoent" not in rows, rows["without-enoent"]
        assert "failed syscalls, and the latency of timed syscalls" in errors["unavailable"], errors
        res = await s.call_tool("get_service_errors", {"window": "1m"})
        assert "Not collected here: " in res.content[0].text, res.content[0].text

        metrics = await anyio.to_thread.run_sync(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
        )
        attached = set(re.findall(r'bpfsight_bpf_program_runs_total\{program="(\w+)"\}', metrics))
        assert {"inet_sock_set_state", "sock_send_length", "sched_switch", "mark_victim"} <= attached, attached
        assert not attached & {"sys_exit", "sys_enter_slow", "block_rq_issue", "block_rq_complete"}, attached

    run_with_server(body, args=("serve", "--without", "syscalls,block", "--metrics", f"127.0.0.1:{mport}"))


def test_an_unknown_signal_group_is_refused_with_the_names_there_are():
    out = subprocess.run([bpfsight_bin(), "serve", "--without", "syscals"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out
    assert '"syscals" is not a signal group; the groups are tcp, tcp-sends, scheduler, process, memory, oom, block, syscalls' in out.stderr, out.stderr


def test_turning_every_group_off_is_an_error_that_says_so():
    every = "tcp,scheduler,process,memory,oom,block,syscalls"
    out = subprocess.run(
        [bpfsight_bin(), "call", "list_services", "--source", "ebpf", "--without", every, "--collect", "1s"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1, out
    assert "every program is turned off (--without)" in out.stderr and "leave at least one signal group on" in out.stderr, out.stderr
