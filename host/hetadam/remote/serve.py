"""The `hetadam serve` command (also `python -m hetadam.remote`): options,
start-up checks, and a clean stop on Ctrl-C or SIGTERM. Imports neither torch
nor numba."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .devices import SERVABLE, kernel_source
from .server import DEFAULT_PORT, Limits, Server, log
from .token import DEFAULT_FILE, default_file, make_token, read_token_file


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (or :PORT, or HOST) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--listen {text!r}: the port must be a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--listen {text!r}: the port must lie in [0, 65535]")
    return host, number


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="cpu", choices=SERVABLE, help="the backend to serve (default: cpu)")
    p.add_argument(
        "--listen",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        help=f"HOST:PORT to listen on (default: 127.0.0.1:{DEFAULT_PORT}; 0.0.0.0:{DEFAULT_PORT} for every interface)",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="the token (default: $HETADAM_TOKEN_FILE or ~/.config/hetadam/token)",
    )
    p.add_argument(
        "--make-token", type=Path, default=None, metavar="FILE", help="write a new token to FILE (mode 600) and exit"
    )
    p.add_argument("--bitfile", default=None, help="pynq: the overlay (default: $HETADAM_BITFILE)")
    p.add_argument("--max-elements", type=int, default=Limits.max_elements, help="elements one session may hold")
    p.add_argument("--frame-timeout", type=float, default=Limits.frame_timeout, help="seconds a frame may take")


def run(args: argparse.Namespace) -> int:
    """`hetadam serve` (and `python -m hetadam.remote`): serve until stopped
    (Ctrl-C or SIGTERM); returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.make_token is not None:
            return announce_token(make_token(args.make_token))
        token = read_token_file(args.token_file or default_file())
        host, port = parse_listen(args.listen)
        limits = Limits(max_elements=args.max_elements, frame_timeout=args.frame_timeout)
        server = Server(kernel_source(args.backend, bitfile=args.bitfile), token, host, port, limits)
    except (ValueError, OSError, RuntimeError) as exc:  # a token, an address in use, a device that failed
        print(f"hetadam serve: {exc}", file=sys.stderr)
        return 2
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        server.stop()
        log.info("stopped")
    return 0


def announce_token(path: Path) -> int:
    """`hetadam token` and `serve --make-token`: say where the token is and what to do with it."""
    print(
        f"wrote a new token to {path} (mode 600). Serve with it: hetadam serve --token-file {path}; "
        f"copy it to each training host as {DEFAULT_FILE} (mode 600), or set $HETADAM_TOKEN there"
    )
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)  # systemd's stop: leave through serve_forever's clean-up


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hetadam serve", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
