"""Float32 host masters of the parameters the runtime cannot step as they are.

The backends step 1-D float32 views of contiguous CPU tensors (layout.py). A
parameter that is not one (bfloat16 or float16, on a CUDA or any other
device, strided) gets a *master*: a contiguous float32 CPU tensor holding its
full-precision value, which the backends step in its place, as DeepSpeed
ZeRO-Offload keeps the fp32 master of a bf16 GPU model on the host. Under
`fixed` numerics the fixed state's P is the true master and the float32
master is its float32 value, which `FixedShard` writes there at each commit.

Around each step (optim.py):
- each live gradient is copied as float32 into the master's gradient buffer,
  which the runtime reads as the master tensor's `.grad`; on a device, through
  a page-locked landing buffer of the gradient's own dtype (half the bytes of
  float32 cross the bus for a bf16 model);
- the parameter is compared bit for bit with its *image*, the master cast to
  the parameter's dtype as last written into it: elements that differ were
  changed outside the optimizer (an in-place op, `.data`, a loaded checkpoint)
  and the master takes their value, as a float32 parameter's resident copy
  does in the shards (Partition.changed_params);
- inside the step's commit, the master is cast into the image and the image
  copied into the parameter. Both buffers exist beforehand, so the write-back
  allocates nothing but what torch's `copy_` needs for a strided parameter on
  a device (a contiguous temporary there).

A contiguous float32 CPU parameter has no master: the backends step it in
place, without a copy.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch

from .validation import check_param

HOST = torch.device("cpu")
_BITS = {4: torch.int32, 2: torch.int16}


def steps_in_place(p: torch.Tensor) -> bool:
    """Whether the runtime steps `p` itself: a contiguous float32 CPU tensor."""
    return p.dtype == torch.float32 and p.device.type == "cpu" and p.is_contiguous()


def _bits(t: torch.Tensor) -> torch.Tensor:
    """`t`'s bits as integers of its width: NaN equals itself, -0.0 differs from 0.0."""
    return t.view(_BITS[t.element_size()])


class Master:
    """The float32 host master of one parameter: the value the backends step,
    the gradient buffer they read, and the image last written into the parameter."""

    def __init__(self, param: torch.Tensor) -> None:
        self.dtype, self.device, self.shape = param.dtype, param.device, param.shape
        pin = param.device.type == "cuda"  # page-locked: copies between it and the device run asynchronously

        def buffer(dtype: torch.dtype) -> torch.Tensor:
            return torch.empty(param.shape, dtype=dtype, pin_memory=pin)

        self.tensor = buffer(torch.float32)
        self.image = self.tensor if param.dtype == torch.float32 else buffer(param.dtype)
        self.grad = buffer(torch.float32)
        self.landing: torch.Tensor | None = None
        """Where a device gradient lands on the host, in its own dtype (None on the CPU)."""
        if param.device.type != "cpu":
            self.landing = self.grad if param.dtype == torch.float32 else buffer(param.dtype)
        self.image.copy_(param.detach())
        if self.image is not self.tensor:
            self.tensor.copy_(self.image)
        self._staged: tuple[weakref.ref[torch.Tensor], int] | None = None
        """The gradient (and its version) whose float32 copy the gradient buffer holds."""

    def fits(self, param: torch.Tensor) -> bool:
        """Whether this master is of `param`'s dtype, device and shape."""
        return (param.dtype, param.device, param.shape) == (self.dtype, self.device, self.shape)

    # -- gradients ----------------------------------------------------------

    def holds(self, grad: torch.Tensor) -> bool:
        """Whether the gradient buffer holds `grad` as it is now (copied since its last in-place change)."""
        return self._staged is not None and self._staged[0]() is grad and self._staged[1] == grad._version

    def stage(self, grad: torch.Tensor, version: int | None = None, landed: bool = False) -> None:
        """Copy `grad` into the gradient buffer as float32, unless it holds it already.

        `version`: the gradient's version when the copy was asked for (default:
        now); a later in-place change makes the copy stale. `landed`: the
        gradient is already in the landing buffer (an asynchronous device copy
        that has completed)."""
        if self.holds(grad):
            return
        version = grad._version if version is None else version
        self._staged = None
        src = grad
        if self.landing is not None:
            if not landed:
                self.landing.copy_(grad)
            src = self.landing
        if src is not self.grad:
            self.grad.copy_(src)
        self._staged = (weakref.ref(grad), version)

    def unscale(self, grad_scale: torch.Tensor) -> None:
        """Divide the staged gradient by the AMP loss scale, as torch's fused Adam does."""
        self.grad.div_(grad_scale)
        self._staged = None  # it no longer holds the gradient as it is

    # -- the parameter ------------------------------------------------------

    def take_changed(self, param: torch.Tensor) -> bool:
        """Elements of `param` that differ from the image were changed outside
        the optimizer: the master (and the image) take their values. Returns
        whether any did."""
        now = param.detach().to(HOST)
        ours = _bits(self.image)
        theirs = _bits(now)
        if torch.equal(ours, theirs):
            return False
        moved = ours != theirs
        if self.image is not self.tensor:
            self.image[moved] = now[moved]
        self.tensor[moved] = now[moved].to(torch.float32)
        return True

    def load(self, param: torch.Tensor, saved: torch.Tensor) -> None:
        """Take a saved master (float32, the parameter's shape) where it casts to
        the parameter's current value; elsewhere the parameter was changed since,
        and its value stands."""
        now = param.detach().to(HOST)
        keep = _bits(saved.to(self.dtype)) == _bits(now)
        self.image.copy_(now)
        self.tensor.copy_(torch.where(keep, saved, now.to(torch.float32)))

    def write_back(self, param: torch.Tensor) -> None:
        """Cast the master into the image and copy that into the parameter (inside
        the commit: into buffers that exist, so that it cannot fail)."""
        if self.image is not self.tensor:
            self.image.copy_(self.tensor)
        param.copy_(self.image, non_blocking=self.landing is not None)


class GroupMasters:
    """The masters of one param group's parameters, by index in the group."""

    def __init__(self) -> None:
        self.masters: dict[int, Master] = {}

    def sync(self, params: Sequence[torch.Tensor], labels: Callable[[], list[str]]) -> None:
        """Give each parameter that needs a master one of its dtype, device and
        shape, from its values (a parameter replaced through `.data` gets a new
        one, checked first by check_param); one the runtime now steps in place
        loses its master."""
        names: list[str] | None = None
        for i, p in enumerate(params):
            master = self.masters.get(i)
            if steps_in_place(p):
                self.masters.pop(i, None)
            elif master is None or not master.fits(p):
                names = labels() if names is None else names
                check_param(p, names[i])
                self.masters[i] = Master(p)

    def hosts(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """What the runtime steps for each parameter: the parameter itself, or its master."""
        return [m.tensor if (m := self.masters.get(i)) is not None else p for i, p in enumerate(params)]

    def stage_grads(self, params: Sequence[torch.Tensor], grad_scale: torch.Tensor | None) -> list[torch.Tensor]:
        """The hosts of the parameters, each with its gradient as the runtime reads
        it (`.grad`, float32 on the host, divided by `grad_scale` when given; None
        where the parameter has none). The parameters' own gradients stay as they are."""
        hosts = []
        for i, p in enumerate(params):
            master = self.masters.get(i)
            if master is None:
                if grad_scale is not None and p.grad is not None:
                    alias = p.detach()  # shares p's memory and version counter, with a gradient of its own
                    alias.grad = p.grad / grad_scale
                    p = alias
                hosts.append(p)
                continue
            if p.grad is None:
                master.tensor.grad = None
            else:
                master.stage(p.grad)
                if grad_scale is not None:
                    master.unscale(grad_scale)
                master.tensor.grad = master.grad
            hosts.append(master.tensor)
        return hosts

    def take_changed(self, params: Sequence[torch.Tensor], which: Sequence[int]) -> None:
        """The masters of the parameters `which` take what was changed outside the optimizer."""
        for i in which:
            if (master := self.masters.get(i)) is not None:
                master.take_changed(params[i])

    def load(self, params: Sequence[torch.Tensor], saved: Sequence[torch.Tensor | None]) -> None:
        """Take the saved masters (state_io.GroupState.masters) of the parameters that have one."""
        for i, master in self.masters.items():
            if saved[i] is not None:
                master.load(params[i], saved[i])

    def export(self, count: int) -> list[torch.Tensor | None]:
        """A copy of each master finer than its parameter (a bf16 or fp16 one), else None."""
        return [
            m.tensor.clone() if (m := self.masters.get(i)) is not None and m.dtype != torch.float32 else None
            for i in range(count)
        ]

    def write_back(self, params: Sequence[torch.Tensor], which: Sequence[int]) -> None:
        """Write the masters of the parameters `which` into them (Master.write_back)."""
        devices = set()
        for i in which:
            if (master := self.masters.get(i)) is not None:
                master.write_back(params[i])
                if master.device.type == "cuda":
                    devices.add(master.device)
        for device in devices:  # the images are written again at the next commit
            torch.cuda.current_stream(device).synchronize()
