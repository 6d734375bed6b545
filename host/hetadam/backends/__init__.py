"""Backends by name. Each is imported on first use, so a missing optional
dependency (pyopencl, cocotb, pynq) only makes its own backend unusable."""

from __future__ import annotations

import importlib
import warnings

from .base import Availability, Backend, BackendError, BackendUnavailable, Segment, Shard, StepHyper

_REGISTRY: dict[str, tuple[str, str]] = {
    "cpu": ("hetadam.backends.cpu", "CpuBackend"),
    "opencl": ("hetadam.backends.opencl", "OpenCLBackend"),
    "hls-csim": ("hetadam.backends.hls_csim", "HlsCsimBackend"),
    "rtl-sim": ("hetadam.backends.rtl_sim", "RtlSimBackend"),
    "pynq": ("hetadam.backends.pynq", "PynqBackend"),
}
NAMES = tuple(_REGISTRY)
_SKIPPED: set[str] = set()
"""The warnings create_usable gave, so that each is given once a process."""


def _entry(name: str) -> tuple[str, str]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(NAMES)}")
    return _REGISTRY[name]


def backend_class(name: str) -> type[Backend]:
    if name.startswith("tcp://"):  # a `hetadam serve` elsewhere (docs/remote.md)
        from ..remote.backend import remote_backend_class

        return remote_backend_class(name)
    module, cls = _entry(name)
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend {name!r} is not usable here: {exc}. Install its extra: pip install 'hetadam[all]'"
        ) from exc


def availability(name: str) -> Availability:
    """Whether backend `name` can run here. Never raises for a registered name:
    a check that fails makes that backend unusable, with the failure as the reason."""
    if not name.startswith("tcp://"):
        _entry(name)
    try:
        return backend_class(name).availability()
    except BackendUnavailable as exc:
        return Availability(False, str(exc))
    except Exception as exc:  # one broken check must not hide the other backends
        return Availability(False, f"its availability check failed: {type(exc).__name__}: {exc}")


def create(name: str, **options: object) -> Backend:
    cls = backend_class(name)
    cls.availability().raise_if_unusable(name)
    return cls(**options)


def create_usable(numerics: str) -> dict[str, Backend]:
    """Every backend that runs `numerics`, is usable here and starts, by name in
    NAMES order: what ``backend="auto"`` runs on. A backend that passes its
    availability check but fails to start is skipped with a RuntimeWarning that
    says why, once a process (not at every optimizer)."""
    created: dict[str, Backend] = {}
    for name in NAMES:
        if not availability(name).usable or numerics not in backend_class(name).numerics:
            continue
        try:
            created[name] = backend_class(name)()
        except (BackendUnavailable, BackendError) as exc:
            why = f"backend='auto' skips {name!r}, which failed to start: {exc}"
            if why not in _SKIPPED:
                _SKIPPED.add(why)
                warnings.warn(why, RuntimeWarning, stacklevel=2)
    if not created:
        raise BackendUnavailable(f"no backend that runs numerics={numerics!r} is usable here: see `hetadam info`")
    return created


__all__ = [
    "NAMES",
    "Availability",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "Segment",
    "Shard",
    "StepHyper",
    "availability",
    "backend_class",
    "create",
    "create_usable",
]
