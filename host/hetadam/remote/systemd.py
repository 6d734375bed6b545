"""The systemd unit that runs `hetadam serve` on a board (scripts/deploy_pynq.py
--serve installs it; docs/remote.md).

What pynq needs decides what the unit may take away. pynq needs root: it maps
/dev/mem and the UIO devices, writes the bitstream to /lib/firmware and
/sys/class/fpga_manager, and keeps its record of the loaded overlay in a file
beside its own package (pynq/pl_server/, under /usr/local/share/pynq-venv).
It registers the board's device only when XILINX_XRT is set, which PYNQ images
set in login shells (/etc/profile.d/xrt_setup.sh) and not for services. So the
service runs as root with XILINX_XRT=/usr and /etc/environment, and leaves out
ProtectSystem (it would make /usr and /lib/firmware read-only),
ProtectKernelTunables (/sys read-only), PrivateDevices and DevicePolicy (no
/dev/mem), ProtectClock (a device policy too) and MemoryDenyWriteExecute
(pynq's cffi callbacks). It keeps the rest of the hardening that costs pynq
nothing (HARDENING).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

UNIT = "hetadam-serve.service"
XRT = "XILINX_XRT=/usr"
"""What /etc/profile.d/xrt_setup.sh exports on PYNQ images; pynq finds no device without it."""
HARDENING = (
    "NoNewPrivileges=yes",
    "PrivateTmp=yes",
    "ProtectHome=read-only",
    "ProtectControlGroups=yes",
    "ProtectHostname=yes",
    "LockPersonality=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "SystemCallArchitectures=native",
    "UMask=0077",
)
_PLAIN = re.compile(r"[A-Za-z0-9_./:@+=,-]+")
"""Words that mean the same to systemd as to a shell: no quotes, spaces, % specifiers or $ expansions."""


def exec_start(python: str, backend: str, listen: str, token_file: str, bitfile: str | None = None) -> list[str]:
    """The command the service runs: `python -m hetadam.remote` with its options.
    ValueError when a word is not plain (see _PLAIN) or a path is not absolute."""
    words = [python, "-m", "hetadam.remote", "--backend", backend, "--listen", listen, "--token-file", token_file]
    if bitfile is not None:
        words += ["--bitfile", bitfile]
    for word in words:
        if not _PLAIN.fullmatch(word):
            raise ValueError(
                f"{word!r} cannot go into the service's command line: use paths and names of letters, digits "
                "and ._/:@+=,- only"
            )
    for path in (python, token_file, *([bitfile] if bitfile else [])):
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is not an absolute path: the service starts in /")
    return words


def unit_text(command: Sequence[str], backend: str) -> str:
    """The unit file of a service that runs `command` (from exec_start)."""
    lines = [
        "# hetadam serve: the Adam step of tcp:// optimizers on this board.",
        "# Written by scripts/deploy_pynq.py --serve; docs/remote.md says how to reach it and",
        "# hetadam/remote/systemd.py why it runs as root with this hardening and no more.",
        "[Unit]",
        f"Description=hetadam serve ({backend}) for tcp:// optimizers",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "User=root",
        "EnvironmentFile=-/etc/environment",
        f"Environment={XRT}",
        f"ExecStart={' '.join(command)}",
        "Restart=on-failure",
        "RestartSec=5",
        *HARDENING,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
