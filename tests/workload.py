"""Real TCP workloads with distinct process names, for bpfsight's integration tests.

Each role renames its process (prctl PR_SET_NAME) so the kernel and /proc see a distinct
service name. Run: python workload.py ROLE --name NAME --port PORT [--host H] [--seconds S]
"""
import argparse
import ctypes
import fcntl
import mmap
import os
import socket
import struct
import sys
import threading
import time


def set_name(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NAME = 15
    if libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def echo_conn(c) -> None:
    c.settimeout(60)
    try:
        while True:
            data = c.recv(65536)
            if not data:
                break
            c.sendall(data)
    except OSError:
        pass
    c.close()


def listener(a) -> socket.socket:
    """A listening socket on (host, port); prints "ready" for the test harness."""
    s = socket.socket(family(a.host), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.host, a.port))
    s.listen(16)
    print("ready", flush=True)
    s.settimeout(a.seconds)
    return s


def echo_server(a) -> None:
    """Accepts connections and echoes each request back, a thread per connection."""
    s = listener(a)
    end = time.time() + a.seconds
    while time.time() < end:
        try:
            c, _ = s.accept()
        except socket.timeout:
            break
        threading.Thread(target=echo_conn, args=(c,), daemon=True).start()


def request(c, payload: bytes) -> None:
    """Sends `payload` on `c` and reads its echo."""
    c.sendall(payload)
    got = 0
    while got < len(payload):
        chunk = c.recv(65536)
        if not chunk:
            raise SystemExit("server closed")
        got += len(chunk)


def echo_client(a) -> None:
    """Request/response over one connection for `seconds`; prints how many round trips."""
    # Under heavy loss, RTO backoff can stall one exchange for many seconds: wait it out.
    c = socket.create_connection((a.host, a.port), timeout=60)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = b"x" * a.size
    n = 0
    end = time.time() + a.seconds
    while time.time() < end:
        request(c, payload)
        n += 1
    c.close()
    print(f"round_trips {n}", flush=True)


def many_clients(a) -> None:
    """`count` connections one after another, each one request of `size` bytes and its echo."""
    payload = b"m" * a.size
    # From another loopback address: the client side's TIME_WAIT sockets then hold ports of
    # 127.0.0.2, never one another test binds on 127.0.0.1.
    source = ("127.0.0.2", 0) if family(a.host) == socket.AF_INET else None
    for _ in range(a.count):
        c = socket.create_connection((a.host, a.port), timeout=30, source_address=source)
        request(c, payload)
        c.close()
    print(f"connections {a.count}", flush=True)


def refused(a) -> None:
    """Connects `count` times to a port nobody listens on."""
    failed = 0
    for _ in range(a.count):
        c = socket.socket(family(a.host), socket.SOCK_STREAM)
        try:
            c.connect((a.host, a.port))
        except ConnectionRefusedError:
            failed += 1
        finally:
            c.close()
    print(f"refused {failed}", flush=True)


def clients_then_refused(a) -> None:
    """many_clients to --port, then as many connects to --other-port, where nobody listens:
    the refused sockets get the memory the finished connections freed."""
    many_clients(a)
    refused(argparse.Namespace(**{**vars(a), "port": a.other_port}))


def unanswered(a) -> None:
    """Connects `count` times to a port whose SYNs are dropped, giving up on each after
    --seconds (a connect that times out, as against one refused)."""
    timed_out = 0
    for _ in range(a.count):
        c = socket.socket(family(a.host), socket.SOCK_STREAM)
        c.settimeout(a.seconds)
        try:
            c.connect((a.host, a.port))
        except (TimeoutError, socket.timeout):
            timed_out += 1
        finally:
            c.close()
    print(f"timed out {timed_out}", flush=True)


def retry_connect(a) -> None:
    """`count` times: one socket connects to `port`, where nobody listens, then, refused, the
    same socket connects to `other_port` and exchanges one request (Linux lets a socket whose
    connect failed connect again, as clients that try a list of addresses do)."""
    done = 0
    for _ in range(a.count):
        c = socket.socket(family(a.host), socket.SOCK_STREAM)
        try:
            if c.connect_ex((a.host, a.port)) == 0:
                raise SystemExit(f"port {a.port} accepted a connection")
            c.connect((a.host, a.other_port))
            request(c, b"r" * 10)
            done += 1
        finally:
            c.close()
    print(f"retried {done}", flush=True)


def reset_server(a) -> None:
    """Accepts `count` connections, reads a request, then aborts each with a RST (SO_LINGER 0)."""
    s = listener(a)
    for _ in range(a.count):
        try:
            c, _ = s.accept()
        except socket.timeout:
            break
        c.recv(1024)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()


def reset_client(a) -> None:
    """Connects `count` times, sends a request and expects the server to reset the connection."""
    resets = 0
    for _ in range(a.count):
        c = socket.create_connection((a.host, a.port), timeout=5)
        c.sendall(b"hello")
        try:
            if c.recv(1024) == b"":
                pass
        except ConnectionResetError:
            resets += 1
        c.close()
    print(f"resets {resets}", flush=True)


def spin(a) -> None:
    """Burns CPU until --seconds pass: a CPU hog."""
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        pass


def sleeper(a) -> None:
    """Sleeps 1 ms at a time: wakes up ~1000 times a second, each time waiting for a CPU."""
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        time.sleep(0.001)


def fsync_loop(a) -> None:
    """Writes --size bytes and fsyncs, in a loop: real block IO from this process."""
    path = os.path.join(a.dir, f"{a.name}.dat")
    end = time.monotonic() + a.seconds
    n = 0
    with open(path, "wb") as f:
        while time.monotonic() < end:
            f.write(os.urandom(a.size))
            f.flush()
            os.fsync(f.fileno())
            n += 1
    os.unlink(path)
    print(n, flush=True)


def direct_read(a) -> None:
    """Writes a file of --count blocks of --size bytes, then reads every block back with
    O_DIRECT (one block request each, past the page cache); prints the count and the file's
    device ("major:minor")."""
    path = os.path.join(a.dir, f"{a.name}.dat")
    with open(path, "wb") as f:
        f.write(os.urandom(a.count * a.size))
        f.flush()
        os.fsync(f.fileno())
    buf = mmap.mmap(-1, a.size)  # page-aligned, as O_DIRECT needs
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        st = os.fstat(fd)
        for i in range(a.count):
            assert os.preadv(fd, [buf], i * a.size) == a.size
    finally:
        os.close(fd)
        os.unlink(path)
    print(a.count, f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", flush=True)


def discard_read(a) -> None:
    """On block device --dir: discards its first --size bytes (BLKDISCARD, issued from this
    process), then reads --count 4 KiB blocks with O_DIRECT; prints the count."""
    blkdiscard = 0x1277  # _IO(0x12, 119)
    fd = os.open(a.dir, os.O_RDWR | os.O_DIRECT)
    try:
        fcntl.ioctl(fd, blkdiscard, struct.pack("QQ", 0, a.size))
        buf = mmap.mmap(-1, 4096)
        for i in range(a.count):
            assert os.preadv(fd, [buf], i * 4096) == 4096
    finally:
        os.close(fd)
    print(a.count, flush=True)


def write_fail(a) -> None:
    """Writes --count blocks of --size bytes with O_DIRECT to block device --dir, going on
    after failures; prints how many writes succeeded and how many failed."""
    fd = os.open(a.dir, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, a.size)
    buf.write(b"x" * a.size)
    ok = failed = 0
    try:
        for i in range(a.count):
            try:
                os.pwritev(fd, [buf], i * a.size)
                ok += 1
            except OSError:
                failed += 1
    finally:
        os.close(fd)
    print(ok, failed, flush=True)


def enoent(a) -> None:
    """Opens --count missing files (each fails with ENOENT)."""
    for i in range(a.count):
        try:
            os.open(f"/nonexistent-bpfsight/{i}", os.O_RDONLY)
        except FileNotFoundError:
            pass


def eacces(a) -> None:
    """Drops to user nobody, then opens a root-only file in --dir --count times (each fails
    with EACCES, as after a change of service user or file modes)."""
    path = os.path.join(a.dir, "root-only")
    os.setgid(65534)
    os.setuid(65534)
    for _ in range(a.count):
        try:
            os.open(path, os.O_RDONLY)
        except PermissionError:
            pass


def alloc(a) -> None:
    """Allocates and touches 1 MiB blocks until --size MiB (or until the OOM killer stops it)."""
    print("ready", flush=True)
    blocks = []
    for _ in range(a.size):
        b = bytearray(1 << 20)
        for i in range(0, len(b), 4096):
            b[i] = 1
        blocks.append(b)


ROLES = {
    "spin": spin,
    "sleeper": sleeper,
    "fsync": fsync_loop,
    "direct-read": direct_read,
    "discard-read": discard_read,
    "write-fail": write_fail,
    "enoent": enoent,
    "eacces": eacces,
    "alloc": alloc,
    "echo-server": echo_server,
    "echo-client": echo_client,
    "many-clients": many_clients,
    "refused": refused,
    "clients-then-refused": clients_then_refused,
    "retry-connect": retry_connect,
    "unanswered": unanswered,
    "reset-server": reset_server,
    "reset-client": reset_client,
}

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=sorted(ROLES))
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--other-port", "--other_port", dest="other_port", type=int, default=0)
    p.add_argument("--dir", default="/var/tmp")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--note", nargs="*", default=[], help="ignored; lets tests put text in the command line")
    args = p.parse_args()
    set_name(args.name)
    ROLES[args.role](args)
    sys.exit(0)
