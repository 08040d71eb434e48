"""TCP connection health, from real kernel events on real loopback traffic, through MCP."""
import json

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from conftest import Workload, call, nft_drop, run_with_server, settle


def by_service(report, name):
    rows = [s for s in report["services"] if s["service"] == name]
    return rows[0] if rows else None


def test_tools_are_listed_with_schemas_and_read_only_hints():
    async def body(s):
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert set(tools) >= {"list_services", "get_connection_stats", "get_service_errors"}
        for t in tools.values():
            assert t.annotations.read_only_hint is True
            assert t.annotations.destructive_hint is False
            assert t.description and len(t.description) > 80
            assert t.input_schema["type"] == "object"
        assert set(tools["get_connection_stats"].input_schema["properties"]) == {"service", "window", "limit"}
        assert set(tools["get_service_errors"].input_schema["properties"]) == {"threshold_pct", "min_syscall_errors_per_s", "window", "limit"}
        assert set(tools) >= {"get_high_latency_services", "get_resource_usage", "get_events"}
        kinds = tools["get_high_latency_services"].input_schema
        assert "runqueue" in str(kinds) and "threshold_ms" in kinds["required"], kinds
        assert "error_rate_pct" in tools["get_service_errors"].description

    run_with_server(body)


def retrans_segs():
    """The kernel's own count of retransmitted TCP segments (TcpRetransSegs), machine-wide."""
    lines = [l.split() for l in open("/proc/net/snmp") if l.startswith("Tcp:")]
    return int(lines[1][lines[0].index("RetransSegs")])


def test_packet_loss_shows_as_retransmits_for_that_service_and_peer_only():
    lossy_port, ctrl_port = 47101, 47102

    async def body(s):
        kernel_before = retrans_segs()
        with nft_drop(lossy_port, 20):
            srv = Workload("echo-server", "lossy-srv", lossy_port, wait_ready=True, seconds=30)
            ctl_srv = Workload("echo-server", "ctrl-srv", ctrl_port, wait_ready=True, seconds=30)
            try:
                cli = Workload("echo-client", "lossy-cli", lossy_port, seconds=8)
                ctl = Workload("echo-client", "ctrl-cli", ctrl_port, seconds=8)
                lossy_out = await anyio.to_thread.run_sync(cli.wait)
                ctl_out = await anyio.to_thread.run_sync(ctl.wait)
            finally:
                srv.kill()
                ctl_srv.kill()
        await settle()
        kernel_retrans = retrans_segs() - kernel_before

        lossy = (await call(s, "get_connection_stats", {"service": "lossy-cli", "window": "1m"}))["services"][0]
        # Ping-pong with 20 % loss each way stalls on every loss: counts vary, ~2-20.
        assert lossy["retransmits"] >= 1, lossy
        assert lossy["retransmits_per_s"] > 0
        assert lossy["opened_active"] == 1, lossy
        # Every request the client made is one sendmsg of 1 KiB: counted exactly, whatever the loss.
        trips = int(lossy_out.split()[-1])
        assert lossy["sends"] == trips and lossy["bytes_sent"] == trips * 1024, (lossy, lossy_out)
        top = lossy["top_peers"][0]
        assert (top["addr"], top["port"]) == ("127.0.0.1", lossy_port), lossy
        assert top["retransmits"] == lossy["retransmits"]

        # The server side retransmits its replies, attributed to the server process (not softirq's current task).
        srv_row = (await call(s, "get_connection_stats", {"service": "lossy-srv", "window": "1m"}))["services"][0]
        assert srv_row["opened_passive"] == 1, srv_row
        # Drops are random: a run whose early losses hit the client's RTO backoff hard makes only
        # a handful of round trips (seen: 3 in 8 s), too few for the server to lose a reply too.
        if trips >= 20:
            assert srv_row["retransmits"] >= 1, (srv_row, trips)
            assert lossy["retransmits"] + srv_row["retransmits"] >= 3, (lossy, srv_row)

        ctrl = (await call(s, "get_connection_stats", {"service": "ctrl-cli", "window": "1m"}))["services"][0]
        ctl_trips = int(ctl_out.split()[-1])
        assert ctrl["sends"] == ctl_trips and ctl_trips > 100, (ctrl, ctl_out)
        assert ctrl["retransmits"] <= 1, ctrl
        assert ctrl["top_peers"][0]["port"] == ctrl_port

        errors = await call(s, "get_service_errors", {"threshold_pct": 1.0, "window": "1m"})
        names = [x["service"] for x in errors["services"]]
        assert "lossy-cli" in names, errors
        assert "ctrl-cli" not in names and "ctrl-srv" not in names, json.dumps([(x["service"], x["syscall_errors"]) for x in errors["services"]])
        row = next(x for x in errors["services"] if x["service"] == "lossy-cli")
        assert row["retransmits"] == lossy["retransmits"]
        assert row["error_rate_pct"] >= 1.0
        assert row["errors"] == (
            row["failed_connects"] + row["resets_sent"] + row["resets_received"] - row["refused_connects"] + row["retransmits"]
        )
        assert row["attempts"] == row["connect_attempts"] + row["accepted"] + row["sends"] + row["retransmits"]

        # All services in the window, ranked worst first: a lossy service outranks the control pair.
        allr = await call(s, "get_connection_stats", {"window": "1m", "limit": 50})
        names = [x["service"] for x in allr["services"]]
        assert names.index("lossy-cli") < names.index("ctrl-cli"), names
        # Retransmitted segments, not events: a retransmitted skb (a tail loss probe of a write,
        # a TSO burst) can carry several, and the sum over every service matches the kernel's
        # own counter. Slack: the kernel also counts retransmissions that nftables then drops on
        # output (the tracepoint fires only for ones that left), and background traffic.
        total = sum(x["retransmits"] for x in allr["services"])
        print("retransmitted segments: bpfsight", total, "kernel TcpRetransSegs", kernel_retrans)
        assert not allr["truncated"], allr
        assert abs(total - kernel_retrans) <= 2 + kernel_retrans // 10, (total, kernel_retrans)

    run_with_server(body)


def test_short_connections_keep_their_sends():
    """3,000 connections from one process, one after another, each one 100-byte request and its
    echo, each gone in well under the collector's one-second poll. Their sends must all be
    counted and attributed even though the sockets are destroyed before the collector looks
    them up, and the client's and server's sockets outnumber a CPU's 2,048 send slots."""
    port, count, size = 47161, 3000, 100

    async def body(s):
        srv = Workload("echo-server", "many-srv", port, wait_ready=True, seconds=60)
        try:
            cli = Workload("many-clients", "many-cli", port, count=count, size=size)
            out = await anyio.to_thread.run_sync(cli.wait)
            assert f"connections {count}" in out
        finally:
            srv.kill()
        await settle()
        rows = {r["service"]: r for r in (await call(s, "get_connection_stats", {"window": "5m", "limit": 500}))["services"]}
        cli, srv_row = rows["many-cli"], rows["many-srv"]
        assert cli["opened"] == count and cli["closed"] == count, cli
        # Nothing lost: every request and every echo, and nothing left unattributed.
        assert cli["sends"] + srv_row["sends"] == 2 * count, (cli, srv_row)
        assert cli["bytes_sent"] + srv_row["bytes_sent"] == 2 * count * size, (cli, srv_row)
        assert "[unattributed]" not in rows or rows["[unattributed]"]["sends"] == 0, rows["[unattributed]"]
        # Not asserted: the split between the two. Send counters are kept per socket address,
        # and the kernel gives a freed socket's memory to the next socket at once; when that
        # happens within one poll, both sockets' sends go under the one the collector sees
        # (seen: 9 to 229 of 6,000 filed under the other side).

    run_with_server(body)


def test_sends_stay_with_their_peer_when_refused_connects_reuse_the_sockets():
    """200 one-request connections to a server, then at once 200 connects to a closed port.
    The refused sockets get the memory the finished connections freed, within one poll; having
    never connected, they sent nothing, so no send may be filed under the closed port (before,
    most were: 246 of 300 in a trial)."""
    port, closed, count = 47163, 47164, 200

    async def body(s):
        srv = Workload("echo-server", "reuse-srv", port, wait_ready=True, seconds=60)
        try:
            cli = Workload("clients-then-refused", "reuse-cli", port, other_port=closed, count=count, size=100)
            out = await anyio.to_thread.run_sync(cli.wait)
            assert f"connections {count}" in out and f"refused {count}" in out, out
        finally:
            srv.kill()
        await settle()
        rows = {r["service"]: r for r in (await call(s, "get_connection_stats", {"window": "1m", "limit": 500}))["services"]}
        cli, srv_row = rows["reuse-cli"], rows["reuse-srv"]
        assert cli["refused_connects"] == count, cli
        peers = {p["port"]: p for p in cli["top_peers"]}
        assert peers[closed]["sends"] == 0, peers
        assert cli["sends"] + srv_row["sends"] == 2 * count, (cli, srv_row)
        # Not asserted: the split between client and server, for the reason given in
        # test_short_connections_keep_their_sends (two connections at one address in one poll).

    run_with_server(body)


def test_refused_connects_are_failed_connects_for_the_caller_ipv4_and_ipv6():
    port = 47109  # nothing listens here

    async def body(s):
        v4 = Workload("refused", "refuse-cli", port, count=12)
        v4.wait()
        v6 = Workload("refused", "refuse-cli6", port, host="::1", count=7)
        v6.wait()
        await settle()
        r4 = (await call(s, "get_connection_stats", {"service": "refuse-cli", "window": "1m"}))["services"][0]
        assert r4["failed_connects"] == 12, r4
        # Each was refused with a RST (also counted as a reset received).
        assert r4["refused_connects"] == 12 and r4["resets_received"] == 12, r4
        assert r4["opened"] == 0
        assert (r4["top_peers"][0]["addr"], r4["top_peers"][0]["port"]) == ("127.0.0.1", port)
        r6 = (await call(s, "get_connection_stats", {"service": "refuse-cli6", "window": "1m"}))["services"][0]
        assert r6["failed_connects"] == 7 and r6["refused_connects"] == 7, r6
        assert r6["top_peers"][0]["refused_connects"] == 7, r6
        assert (r6["top_peers"][0]["addr"], r6["top_peers"][0]["port"]) == ("::1", port)

        errors = await call(s, "get_service_errors", {"window": "1m"})
        row = next(x for x in errors["services"] if x["service"] == "refuse-cli6")
        assert row["connect_attempts"] == 7 and row["failed_connects"] == 7
        # A refusal is one error, not a failed connect plus a reset: 7 of 7 attempts failed.
        assert (row["errors"], row["attempts"], row["error_rate_pct"]) == (7, 7, 100.0), row
        kinds = {e["kind"] for e in row["recent_events"]}
        assert "failed_connect" in kinds, row
        assert any(e["peer"] == f"[::1]:{port}" for e in row["recent_events"]), row
        # The kernel answered the SYNs with resets from no socket.
        assert any(
            x["service"] == "[no-socket]" and x["resets_sent"] >= 19 and x["error_rate_pct"] == 100.0 for x in errors["services"]
        ), errors

    run_with_server(body)


def test_connects_whose_syns_are_dropped_are_failed_but_not_refused():
    """A firewall that drops SYNs makes connects time out: failed connects with no RST, which
    `refused_connects` tells apart from a closed port's refusals."""
    port, count = 47117, 3

    async def body(s):
        with nft_drop(port, 100):
            out = Workload("unanswered", "blackholed-cli", port, count=count, seconds=0.5).wait()
        assert f"timed out {count}" in out, out
        await settle()
        row = (await call(s, "get_connection_stats", {"service": "blackholed-cli", "window": "1m"}))["services"][0]
        assert row["failed_connects"] == count and row["refused_connects"] == 0, row
        assert row["resets_received"] == 0 and row["opened"] == 0, row
        assert (row["top_peers"][0]["addr"], row["top_peers"][0]["port"]) == ("127.0.0.1", port), row
        errors = await call(s, "get_service_errors", {"window": "1m"})
        err = next(x for x in errors["services"] if x["service"] == "blackholed-cli")
        assert (err["errors"], err["attempts"], err["error_rate_pct"]) == (count, count, 100.0), err

    run_with_server(body)


def test_aborted_connections_show_resets_sent_and_received():
    port = 47110

    async def body(s):
        srv = Workload("reset-server", "rst-srv", port, wait_ready=True, count=8, seconds=20)
        cli = Workload("reset-client", "rst-cli", port, count=8)
        out = cli.wait()
        srv.wait()
        assert "resets 8" in out, out
        await settle()
        server = (await call(s, "get_connection_stats", {"service": "rst-srv", "window": "1m"}))["services"][0]
        client = (await call(s, "get_connection_stats", {"service": "rst-cli", "window": "1m"}))["services"][0]
        assert server["resets_sent"] == 8, server
        assert server["opened_passive"] == 8, server
        assert client["resets_received"] == 8, client
        # Reset once established: errors of their own, not refusals.
        assert client["refused_connects"] == 0, client
        assert client["opened_active"] == 8, client
        assert client["closed"] == 8 and client["active"] == 0, client
        assert client["mean_connection_ms"] is not None

    run_with_server(body)


def test_a_socket_that_connects_again_after_a_refusal_keeps_both_peers_apart():
    """Each socket is refused by one port, then connects to another on the same socket within
    the same second. The programs count a socket's events in its own slot, which user space
    empties once a second; the second connect re-files the socket under the new peer, so the
    refusal must first be filed under the old one, not carried over to the new."""
    closed_port, port, count = 47113, 47114, 5

    async def body(s):
        srv = Workload("echo-server", "retry-srv", port, wait_ready=True, seconds=30)
        try:
            out = Workload("retry-connect", "retry-cli", closed_port, other_port=port, count=count).wait()
            assert f"retried {count}" in out, out
        finally:
            srv.kill()
        await settle()
        row = (await call(s, "get_connection_stats", {"service": "retry-cli", "window": "1m"}))["services"][0]
        assert row["failed_connects"] == count and row["opened_active"] == count, row
        peers = {p["port"]: p for p in row["top_peers"]}
        assert peers[closed_port]["failed_connects"] == count, row
        assert peers[port]["failed_connects"] == 0, row
        # One handshake time per successful connect, none for the refusals.
        lat = await call(s, "get_high_latency_services", {"threshold_ms": 0, "kind": "connect", "window": "1m"})
        mine = [r for r in lat["services"] if r["service"] == "retry-cli"]
        assert mine and mine[0]["samples"] == count, lat
        assert 0 < mine[0]["mean_ms"] < 100, mine

    run_with_server(body)


def test_connection_lifetimes_are_measured_on_both_ends():
    """A connection held for 1.5 s has a mean lifetime of about 1.5 s for its client and for
    the server that accepted it (the programs time connections by the socket's own clock)."""
    port = 47115

    async def body(s):
        srv = Workload("echo-server", "life-srv", port, wait_ready=True, seconds=30)
        try:
            Workload("echo-client", "life-cli", port, seconds=1.5, size=10).wait()
        finally:
            srv.kill()
        await settle()
        for name in ("life-cli", "life-srv"):
            row = (await call(s, "get_connection_stats", {"service": name, "window": "1m"}))["services"][0]
            assert row["closed"] == 1, row
            assert 1400 <= row["mean_connection_ms"] <= 2500, row

    run_with_server(body)


def test_list_services_shows_live_processes_and_filters():
    async def body(s):
        srv = Workload("echo-server", "listed-srv", 47111, wait_ready=True, seconds=20)
        try:
            cli = Workload("echo-client", "listed-cli", 47111, seconds=1)
            cli.wait()
            await settle()
            out = await call(s, "list_services", {"name_contains": "LISTED"})
            names = {x["service"]: x for x in out["services"]}
            assert set(names) == {"listed-srv", "listed-cli"}, out
            assert names["listed-srv"]["running"] and srv.pid in names["listed-srv"]["pids"]
            assert names["listed-cli"]["opened_5m"] == 1
            assert out["total"] == 2 and out["truncated"] is False
            assert out["collector"]["source"] == "ebpf"
            assert out["collector"]["ringbuf_drops"] == 0
            small = await call(s, "list_services", {"limit": 1})
            assert len(small["services"]) == 1 and small["truncated"] is True and small["total"] > 1
            live = names["listed-srv"]
            assert "echo-server" in live["cmdline"] and live["exe"], live
        finally:
            srv.kill()
        # Stopped (as a crashed service would be): what it ran is still there to read.
        await anyio.sleep(4.5)  # two process scans
        gone = (await call(s, "list_services", {"name_contains": "listed-srv"}))["services"][0]
        assert not gone["running"] and gone["process_count"] == 0, gone
        assert (gone["cmdline"], gone["exe"]) == (live["cmdline"], live["exe"]), gone

    run_with_server(body)


@pytest.mark.parametrize(
    "tool,args,expect",
    [
        ("get_connection_stats", {"window": "5x"}, ['invalid window "5x"', '"30s"', '"5m"']),
        ("get_connection_stats", {"window": "8d"}, ["longer than the history kept", "7d"]),
        ("get_connection_stats", {"service": "no-such-svc"}, ['unknown service "no-such-svc"', "list_services"]),
        ("get_connection_stats", {"limit": 0}, ["invalid limit", "from 1 to 500"]),
        ("get_connection_stats", {"limit": 10**9}, ["invalid limit", "from 1 to 500"]),
        ("get_service_errors", {"threshold_pct": -1}, ["invalid threshold_pct", "from 0 to 100"]),
        ("get_service_errors", {"threshold_pct": 250}, ["invalid threshold_pct", "from 0 to 100"]),
        ("list_services", {"limit": -3}, ["invalid limit", "from 1 to 500"]),
        ("get_connection_stats", {"limit": "ten"}, ["invalid argument limit:", "expected i64"]),
        ("get_events", {"cursor": "garbage"}, ["invalid argument cursor:", "expected u64"]),
        ("list_services", {"bogus": 1}, ["invalid argument bogus: unknown field `bogus`", "name_contains"]),
    ],
)
def test_bad_arguments_are_invalid_params_that_say_what_is_accepted(tool, args, expect):
    async def body(s):
        with pytest.raises(MCPError) as e:
            await s.call_tool(tool, args)
        assert e.value.error.code == -32602, e.value.error
        for text in expect:
            assert text in e.value.error.message, e.value.error.message
        # The server is still fine afterwards.
        await call(s, "list_services", {"limit": 1})

    run_with_server(body)


def test_sockets_opened_before_bpfsight_started_are_attributed():
    """The usual deployment: bpfsight starts after the services. A listener opened earlier
    still gets its accepted connections, and a connection opened earlier still gets its
    retransmits (its owner is learned from its first send)."""
    port = 47112
    srv = Workload("echo-server", "early-srv", port, wait_ready=True, seconds=60)
    old = Workload("echo-client", "early-cli", port, seconds=14)
    try:
        async def body(s):
            with nft_drop(port, 20):
                new = Workload("echo-client", "late-cli", port, seconds=4)
                await anyio.to_thread.run_sync(new.wait)
                await anyio.to_thread.run_sync(old.wait)
            await settle()
            late = (await call(s, "get_connection_stats", {"service": "late-cli", "window": "1m"}))["services"][0]
            assert late["opened_active"] == 1, late
            server = (await call(s, "get_connection_stats", {"service": "early-srv", "window": "1m"}))["services"][0]
            assert server["opened_passive"] >= 1, server
            early = (await call(s, "get_connection_stats", {"service": "early-cli", "window": "1m"}))["services"][0]
            assert early["retransmits"] >= 1, early
            assert early["sends"] > 0
            # Opened before we started: not counted as opened, so not as active either.
            assert early["opened"] == 0 and early["active"] == 0, early
            unattributed = await call(s, "get_connection_stats", {"window": "1m", "limit": 500})
            assert not [x for x in unattributed["services"] if x["service"] == "[unattributed]" and x["retransmits"] > 2], unattributed

        run_with_server(body)
    finally:
        old.kill()
        srv.kill()
