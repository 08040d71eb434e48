"""Shared helpers: the real bpfsight binary over stdio, real workloads, real nftables."""
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

import tempfile

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKLOAD = HERE / "workload.py"


# Every server the tests start keeps its incidents here, not in the user's data directory.
os.environ.setdefault("BPFSIGHT_DATA_DIR", tempfile.mkdtemp(prefix="bpfsight-test-data-"))
# Each test asserts on what its own server saw: no history restored from the servers before it.
# test_history.py turns it on for its own data directories.
os.environ.setdefault("BPFSIGHT_KEEP_HISTORY", "off")


def bpfsight_bin() -> str:
    path = os.environ.get("BPFSIGHT_BIN")
    if not path:
        target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
        path = os.path.join(target, "release", "bpfsight")
    if not os.access(path, os.X_OK):
        pytest.fail(f"bpfsight binary not found at {path}: build it with `cargo build --release` or set BPFSIGHT_BIN")
    return path


def run_with_server(fn, args=("serve",)):
    """Starts `bpfsight serve` over stdio, initialises an MCP session, runs `await fn(session)`."""

    async def main():
        params = StdioServerParameters(command=bpfsight_bin(), args=list(args), env={**os.environ, "BPFSIGHT_LOG": "info"})
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w) as session:
                await session.initialize()
                return await fn(session)

    return anyio.run(main)


class Workload:
    """A workload process from workload.py, with a distinct process name."""

    def __init__(self, role, name, port, host="127.0.0.1", wait_ready=False, **kw):
        cmd = [sys.executable, str(WORKLOAD), role, "--name", name, "--port", str(port), "--host", host]
        for k, v in kw.items():
            cmd += [f"--{k}", str(v)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        if wait_ready:
            line = self.proc.stdout.readline()
            assert line.strip() == "ready", f"{role} did not start: {line!r} {self.proc.stderr.read()}"

    def wait(self, timeout=60):
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, f"workload failed: {err}"
        return out

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def nft_drop(port: int, percent: int):
    """Drops `percent` % of TCP packets to and from `port` with nftables (real loss, real retransmits)."""
    nft = shutil.which("nft")
    if nft is None:
        pytest.fail("nft is not installed: run scripts/setup.sh")
    table = f"bpfsight_test_{port}"
    # nftables wants the bound below the modulus: 100 % is a plain drop.
    share = "" if percent >= 100 else f"numgen random mod 100 < {percent} "
    rules = f"""
table inet {table} {{
  chain out {{
    type filter hook output priority 0; policy accept;
    tcp dport {port} {share}drop
    tcp sport {port} {share}drop
  }}
}}
"""
    subprocess.run([nft, "-f", "-"], input=rules, text=True, check=True)
    try:
        yield
    finally:
        subprocess.run([nft, "delete", "table", "inet", table], check=False)


async def call(session, tool, args=None):
    """Calls a tool and returns its structured content, failing on a tool error."""
    res = await session.call_tool(tool, args or {})
    assert not res.is_error, res.content
    assert res.structured_content is not None, f"{tool} returned no structuredContent"
    assert res.content and res.content[0].text, f"{tool} returned no text summary"
    return res.structured_content


async def settle():
    """Waits for the collector's next one-second poll to pick up the latest counters."""
    await anyio.sleep(2.2)


@pytest.fixture(autouse=True, scope="session")
def _root_check():
    if os.geteuid() != 0:
        pytest.fail("the integration tests load eBPF programs and need root (CI runs them as root)")
