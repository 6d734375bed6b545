"""The `tcp://HOST:PORT` backend: `fixed` numerics on a `hetadam serve` elsewhere.

    HetAdam(params, backend="tcp://pynq1:7000", numerics="fixed")
    HetAdam(params, backend=["cpu", "tcp://pynq1:7000", "tcp://pynq2:7000"], numerics="fixed")

The name may carry options as a query: ``tcp://pynq1:7000?timeout=30&chunk=65536&link=1e9``
(`timeout`: seconds any answer of the server may take, default 60; `chunk`:
elements per pipelined chunk, a multiple of the block size, default 262144;
`link`: the link's rate in bits per second, for step_stats' link utilisation).
The token comes from $HETADAM_TOKEN or a token file (remote/token.py). The
backend connects and authenticates when it is made, so a wrong address or token
fails at once; each shard is a `FixedShard` over a `RemoteKernel` (client.py).
"""

from __future__ import annotations

import functools
import urllib.parse
from typing import ClassVar

from ..backends.base import Availability, Backend, FixedShard, Shard
from ..numerics import FixedFormat
from .client import DEFAULT_CHUNK, DEFAULT_TIMEOUT, Link, RemoteKernel
from .token import TokenError, client_token

SCHEME = "tcp://"
_OPTIONS = {
    "timeout": (float, lambda v: v > 0),
    "chunk": (int, lambda v: v > 0),
    "link": (float, lambda v: v > 0),
}
"""The options a name may carry: how to read each, and its valid values."""


@functools.cache
def remote_backend_class(name: str) -> type[RemoteBackend]:
    """The backend class of the name `tcp://HOST:PORT[?OPTIONS]` (ValueError when it is malformed)."""
    host, port, options = parse_name(name)
    return type("RemoteBackend", (RemoteBackend,), {"name": name, "host": host, "port": port, "options": options})


def parse_name(name: str) -> tuple[str, int, dict[str, float | int]]:
    """(host, port, options) of a `tcp://` backend name."""
    if not name.startswith(SCHEME):
        raise ValueError(f"a remote backend's name starts with {SCHEME}, got {name!r}")
    url = urllib.parse.urlsplit(name)
    try:
        port = url.port
    except ValueError:
        port = None
    if not url.hostname or port is None or url.path not in ("", "/") or url.fragment or url.username:
        raise ValueError(f"backend {name!r}: write a remote backend as tcp://HOST:PORT[?timeout=S&chunk=N&link=BITS]")
    options: ClassVar[dict[str, float | int]] = {}
    for key, value in urllib.parse.parse_qsl(url.query, keep_blank_values=True):
        if key not in _OPTIONS:
            raise ValueError(f"backend {name!r}: unknown option {key!r} (options: {', '.join(_OPTIONS)})")
        convert, check = _OPTIONS[key]
        try:
            options[key] = convert(value)
        except ValueError:
            options[key] = -1
        if not check(options[key]):
            raise ValueError(f"backend {name!r}: invalid {key}={value!r}")
    return url.hostname, port, options


class RemoteBackend(Backend):
    """A `hetadam serve` reached over TCP (see the module docstring). Options:
    `timeout` (seconds), `chunk` (elements per pipelined chunk), `link` (bits
    per second), `token` (the token itself; default: $HETADAM_TOKEN or the
    token file)."""

    numerics = ("fixed",)
    host = ""
    port = 0
    options: ClassVar[dict[str, float | int]] = {}

    def __init__(
        self,
        *,
        timeout: float | None = None,
        chunk: int | None = None,
        link: float | None = None,
        token: str | None = None,
    ) -> None:
        self.timeout = float(timeout if timeout is not None else self.options.get("timeout", DEFAULT_TIMEOUT))
        self.chunk = int(chunk if chunk is not None else self.options.get("chunk", DEFAULT_CHUNK))
        bits = link if link is not None else self.options.get("link")
        self.link_rate = None if bits is None else float(bits) / 8
        secret = token.encode() if token is not None else client_token()
        self.link = Link(self.name, self.host, self.port, secret, timeout=self.timeout)
        self.link.open()

    @classmethod
    def availability(cls) -> Availability:
        try:
            client_token()
        except TokenError as exc:
            return Availability(False, str(exc), "see docs/remote.md: making and installing a token")
        return Availability(True)

    def create_shard(self, start: int, n: int, numerics: str, fmt: FixedFormat) -> Shard:
        if numerics != "fixed":
            raise ValueError(f"backend {self.name!r} runs numerics='fixed' only, not {numerics!r}")
        shard = FixedShard(start, n, RemoteKernel(self.link, n, fmt, chunk=self.chunk), fmt)
        shard.link_rate = self.link_rate
        return shard

    def close(self) -> None:
        self.link.close()
