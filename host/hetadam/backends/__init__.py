"""Backends by name. Each is imported on first use, so a missing optional
dependency (pyopencl, cocotb, pynq) only makes its own backend unusable."""

from __future__ import annotations

import importlib

from .base import Availability, Backend, BackendError, BackendUnavailable, Segment, Shard, StepHyper

_REGISTRY: dict[str, tuple[str, str]] = {
    "cpu": ("hetadam.backends.cpu", "CpuBackend"),
    "opencl": ("hetadam.backends.opencl", "OpenCLBackend"),
    "hls-csim": ("hetadam.backends.hls_csim", "HlsCsimBackend"),
    "rtl-sim": ("hetadam.backends.rtl_sim", "RtlSimBackend"),
    "pynq": ("hetadam.backends.pynq", "PynqBackend"),
}
NAMES = tuple(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(NAMES)}")
    module, cls = _REGISTRY[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend {name!r} is not usable here: {exc}. Install its extra: pip install 'hetadam[all]'"
        ) from exc


def availability(name: str) -> Availability:
    try:
        return backend_class(name).availability()
    except BackendUnavailable as exc:
        return Availability(False, str(exc))


def create(name: str, **options: object) -> Backend:
    cls = backend_class(name)
    cls.availability().raise_if_unusable(name)
    return cls(**options)


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
]
