"""The optimizer step on another machine: `hetadam serve` runs a `fixed` backend
on a board (server.py, devices.py), the `tcp://HOST:PORT` backend reaches it
from the training host (backend.py, client.py), over an authenticated, bounded
binary protocol (protocol.py, token.py). See docs/remote.md.

This package imports nothing on its own: the server side must import without
torch (backend.py, the host side, needs it).
"""
