"""The shared token that authenticates a `tcp://` client and `hetadam serve` to
each other (see protocol.py: it is never sent, only proven).

Where each side finds it:
- the server: `--token-file FILE`, else $HETADAM_TOKEN_FILE, else DEFAULT_FILE;
  it refuses to start when the file is missing or readable by group or others;
- the client: $HETADAM_TOKEN (the token itself), else $HETADAM_TOKEN_FILE, else
  DEFAULT_FILE (the same file as on the board, copied to the host).

`make_token` writes a new one (256 random bits as hex) with mode 0600.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

TOKEN_ENV = "HETADAM_TOKEN"
TOKEN_FILE_ENV = "HETADAM_TOKEN_FILE"
DEFAULT_FILE = Path("~/.config/hetadam/token")
MIN_CHARS = 16
MAX_CHARS = 1024
MAKE_HINT = "make one with `hetadam token FILE` (or `hetadam serve --make-token FILE`)"


class TokenError(ValueError):
    """No usable token: the message says where it looked and what to do."""


def default_file() -> Path:
    """$HETADAM_TOKEN_FILE, else ~/.config/hetadam/token."""
    return Path(os.environ.get(TOKEN_FILE_ENV) or DEFAULT_FILE).expanduser()


def make_token(path: Path) -> Path:
    """Write a new token to `path` (which must not exist) with mode 0600; returns the path."""
    path = path.expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise TokenError(f"{path} exists already: remove it first to make a new token") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


def check_token(text: str, where: str) -> bytes:
    """The token as the HMAC key; TokenError when it is too short or too long."""
    token = text.strip()
    if not MIN_CHARS <= len(token) <= MAX_CHARS or not token.isprintable():
        raise TokenError(
            f"the token in {where} must be {MIN_CHARS} to {MAX_CHARS} printable characters "
            f"(it has {len(token)}); {MAKE_HINT}"
        )
    return token.encode()


def read_token_file(path: Path) -> bytes:
    """The token in `path`; TokenError when it is missing, unreadable or readable by group or others."""
    path = path.expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise TokenError(f"no token file {path}: {MAKE_HINT}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(
            f"the token file {path} is accessible by group or others (mode {stat.S_IMODE(mode):o}): "
            f"run `chmod 600 {path}`"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read the token file {path}: {exc}") from exc
    return check_token(text, str(path))


def client_token() -> bytes:
    """The client's token: $HETADAM_TOKEN, else the token file (see the module docstring)."""
    value = os.environ.get(TOKEN_ENV)
    if value:
        return check_token(value, f"${TOKEN_ENV}")
    path = default_file()
    if not path.exists():
        raise TokenError(
            f"no token: set ${TOKEN_ENV}, or copy the server's token file to {path} "
            f"(or name it in ${TOKEN_FILE_ENV}) with mode 600"
        )
    return read_token_file(path)
