"""Backends from start-up to close: a device or compiler that cannot build is
refused before it is used, with the reason and a remedy; `auto` skips what it
cannot create; close() lets every device resource go."""

from __future__ import annotations

import gc

import pytest
import torch

from hetadam import HetAdam
from hetadam.backends import BackendUnavailable, opencl

OPENCL = opencl.OpenCLBackend.availability()
needs_opencl = pytest.mark.skipif(not OPENCL.usable, reason=f"{OPENCL.reason}. {OPENCL.remedy}".strip())

BROKEN_PROBE = "__kernel void hetadam_probe(__global int *x) { x[0] = no_such_name; }"


@pytest.fixture
def broken_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every OpenCL device fails to build the probe, as PoCL 3.0 does on a CPU its LLVM does not know."""
    monkeypatch.setattr(opencl, "PROBE", BROKEN_PROBE)
    monkeypatch.setattr(opencl, "_BUILD_PROBLEMS", {})
    monkeypatch.delenv(opencl.ENV_PLATFORM, raising=False)
    monkeypatch.delenv(opencl.ENV_DEVICE, raising=False)


@needs_opencl
def test_a_device_that_builds_the_probe_has_no_build_problem() -> None:
    assert opencl.build_problem(opencl.select_device()) is None


@needs_opencl
@pytest.mark.usefixtures("broken_compiler")
def test_an_opencl_device_that_cannot_build_is_unusable_with_the_first_error_line_and_a_remedy() -> None:
    problem = opencl.build_problem(opencl.cl.get_platforms()[0].get_devices()[0])
    assert problem is not None and "no_such_name" in problem and "error" in problem.lower()
    assert "\n" not in problem
    availability = opencl.OpenCLBackend.availability()
    assert not availability.usable
    assert "can build a program" in availability.reason and problem in availability.reason
    assert availability.remedy == opencl.BUILD_REMEDY and "pocl-opencl-icd" in availability.remedy
    with pytest.raises(BackendUnavailable, match="no_such_name") as raised:
        opencl.OpenCLBackend()
    assert opencl.ENV_DEVICE in str(raised.value)
    with pytest.raises(opencl.DeviceCannotBuild):
        opencl.select_device(platform=0, device=0)


@needs_opencl
@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
def test_closing_an_opencl_optimizer_releases_its_context(numerics: str) -> None:
    """The context's reference count, held by this test alone once the optimizer
    has closed: no queue, program, kernel or buffer of the optimizer keeps it."""
    model = torch.nn.Linear(50, 30)
    opt = HetAdam(model.parameters(), backend="opencl", numerics=numerics)
    model(torch.randn(4, 50)).sum().backward()
    opt.step()
    context = opt.backends["opencl"].dev.context
    held = opencl.cl.Context.from_int_ptr(context.int_ptr, retain=True)
    del context
    assert held.reference_count > 2  # the optimizer's queues, programs and buffers
    opt.close()
    gc.collect()
    assert held.reference_count == 1
    opt.close()  # closing twice does nothing
