"""hetadam: the Adam optimizer on heterogeneous hardware.

`HetAdam` is imported on first use, so that the parts that need neither torch
nor numba (the driver on a PYNQ board, the simulator server) import quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .optim import HetAdam, NonFiniteGradientError

__all__ = ["HetAdam", "NonFiniteGradientError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import optim

        return getattr(optim, name)
    raise AttributeError(f"module 'hetadam' has no attribute {name!r}")
