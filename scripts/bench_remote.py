#!/usr/bin/env python3
"""Bench the tcp:// backend: `cpu` behind `hetadam serve` against `cpu` used locally.

Two links:
- loopback: the servers run on this machine; target: the remote step at least
  0.8x the local one's throughput;
- an emulated 1 Gbit/s link (with --link, as root): the servers run in a network
  namespace this script makes, reached through a veth pair rate-limited both
  ways with `tc ... tbf rate 1gbit` (netem is not needed). The link's rate is
  measured first; the target is 85% of its bound, the link's bytes per second
  over the step's wire bytes per parameter. The namespace and the links are
  removed at the end.
Each remote step is measured with pipelined chunks (the default) and without
(one chunk: all gradients in, then the kernel, then all parameters out),
interleaved step for step with a local `cpu fixed` optimizer on the same
machine. Not a test: it prints figures (and --json writes them).

    .venv/bin/python scripts/bench_remote.py --sizes 1048576 16777216 --link --json build/bench_remote.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from hetadam.bench import Maker, time_interleaved
from hetadam.optim import HetAdam
from hetadam.remote.client import DEFAULT_CHUNK
from hetadam.remote.token import make_token, read_token_file

NS = "hetadam-bench"
HOST_IF, NS_IF = "hadm-h", "hadm-n"
HOST_IP, NS_IP = "10.77.0.1", "10.77.0.2"
TBF = ["tbf", "rate", "1gbit", "burst", "512kb", "latency", "50ms"]


@dataclass
class Row:
    link: str
    size: int
    pipelined: bool
    seconds: float
    local_seconds: float
    wire_bytes_per_param: float
    link_bytes_per_s: float | None = None

    @property
    def mparams(self) -> float:
        return self.size / self.seconds / 1e6

    @property
    def vs_local(self) -> float:
        return self.local_seconds / self.seconds

    @property
    def of_link_bound(self) -> float | None:
        """Throughput over the link's rate / wire bytes per parameter (both directions counted)."""
        if self.link_bytes_per_s is None:
            return None
        return self.size / self.seconds / (self.link_bytes_per_s / self.wire_bytes_per_param)


def run(cmd: Sequence[str], netns: bool = False) -> None:
    full = ["ip", "netns", "exec", NS, *cmd] if netns else list(cmd)
    subprocess.run(full, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def emulated_link() -> Iterator[None]:
    """A namespace reached through a veth pair limited to 1 Gbit/s each way."""
    teardown()
    try:
        run(["ip", "netns", "add", NS])
        run(["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF])
        run(["ip", "link", "set", NS_IF, "netns", NS])
        run(["ip", "addr", "add", f"{HOST_IP}/24", "dev", HOST_IF])
        run(["ip", "link", "set", HOST_IF, "up"])
        run(["ip", "addr", "add", f"{NS_IP}/24", "dev", NS_IF], netns=True)
        run(["ip", "link", "set", NS_IF, "up"], netns=True)
        run(["ip", "link", "set", "lo", "up"], netns=True)
        run(["tc", "qdisc", "add", "dev", HOST_IF, "root", *TBF])
        run(["tc", "qdisc", "add", "dev", NS_IF, "root", *TBF], netns=True)
        yield
    finally:
        teardown()


def teardown() -> None:
    subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True)
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def measure_link(megabytes: int = 64) -> float:
    """Bytes per second from here into the namespace (a sink there reads everything)."""
    sink = (
        "import socket; s = socket.create_server(('0.0.0.0', 0)); print(s.getsockname()[1], flush=True); "
        "c, _ = s.accept()\nwhile c.recv(1 << 20): pass\nc.close()"
    )
    proc = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", sink], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    data = bytes(1 << 20)
    with socket.create_connection((NS_IP, port), timeout=60) as s:
        t0 = time.perf_counter()
        for _ in range(megabytes):
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # the sink closes once it has read everything
        seconds = time.perf_counter() - t0
    proc.wait(timeout=30)
    return megabytes * (1 << 20) / seconds


@contextlib.contextmanager
def servers(count: int, token_file: Path, host: str, netns: bool) -> Iterator[list[int]]:
    """`count` servers of `cpu` (in the namespace when `netns`); yields their ports."""
    prefix = ["ip", "netns", "exec", NS] if netns else []
    procs, ports = [], []
    try:
        for _ in range(count):
            cmd = [*prefix, sys.executable, "-m", "hetadam.remote", "--listen", f"{host}:0", "--token-file"]
            proc = subprocess.Popen([*cmd, str(token_file)], stderr=subprocess.PIPE, text=True)
            procs.append(proc)
            for line in proc.stderr:
                found = re.search(r"serving cpu on \S+:(\d+)", line)
                if found:
                    ports.append(int(found.group(1)))
                    break
            else:
                raise RuntimeError(f"hetadam serve did not start (exit status {proc.wait()})")
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its pipe drained
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def bench(link: str, sizes: Sequence[int], host: str, ports: list[int], repeat: int, rate: float | None) -> list[Row]:
    rows = []
    for size in sizes:
        names = [f"tcp://{host}:{ports[0]}?timeout=120", f"tcp://{host}:{ports[1]}?timeout=120&chunk={size}"]

        def maker(backend: str) -> Maker:
            return lambda p: HetAdam(p, lr=1e-3, backend=backend, numerics="fixed")

        local, pipelined, whole = time_interleaved([maker("cpu"), *(maker(n) for n in names)], size, repeat)
        nb = -(-size // 32)
        wire = (2 * size + nb + 4 * size) / size
        for seconds, piped in ((pipelined, True), (whole, False)):
            row = Row(link, size, piped, seconds, local, wire, rate)
            rows.append(row)
            print(describe(row), flush=True)
    return rows


def describe(row: Row) -> str:
    bound = "" if row.of_link_bound is None else f"  {row.of_link_bound:6.1%} of the link bound"
    return (
        f"{row.link:<9} {row.size:>9} params  {'pipelined' if row.pipelined else 'one chunk':<9}  "
        f"{row.seconds * 1e3:8.1f} ms  {row.mparams:7.1f} Mparam/s  {row.vs_local:5.2f}x local "
        f"({row.local_seconds * 1e3:.1f} ms)  {row.wire_bytes_per_param:.2f} B/param{bound}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1 << 20, 1 << 24], help="parameters per step")
    parser.add_argument("--repeat", type=int, default=5, help="timed steps per measurement (median)")
    parser.add_argument("--link", action="store_true", help="also bench the emulated 1 Gbit/s link (needs root)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    print(f"pipelined chunks of {DEFAULT_CHUNK} elements; 'one chunk': a step's gradients, kernel, parameters in turn")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        token_file = make_token(Path(tmp) / "token")
        os.environ["HETADAM_TOKEN"] = read_token_file(token_file).decode()
        with servers(2, token_file, "127.0.0.1", netns=False) as ports:
            rows += bench("loopback", args.sizes, "127.0.0.1", ports, args.repeat, None)
        if args.link:
            missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
            if os.geteuid() != 0 or missing:
                why = "not root" if os.geteuid() != 0 else f"{', '.join(missing)} not installed"
                print(f"skipping the emulated 1 Gbit/s link: {why} (it needs ip netns, veth and tc tbf as root)")
            else:
                with emulated_link():
                    rate = measure_link()
                    print(f"the emulated link carries {rate / 1e6:.1f} MB/s")
                    with servers(2, token_file, NS_IP, netns=True) as ports:
                        rows += bench("1gbit", args.sizes, NS_IP, ports, args.repeat, rate)
                print(f"removed the namespace {NS} and its links")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        extra = ("mparams", "vs_local", "of_link_bound")
        data = [{**asdict(r), **{k: getattr(r, k) for k in extra}} for r in rows]
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
