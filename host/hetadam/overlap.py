"""`overlap=True`: gradients leave for the host while backward still runs.

A post-accumulate-grad hook on each parameter starts copying its gradient
into its float32 master's buffer (masters.py) as soon as autograd has
accumulated it, as torchao's CPUOffloadOptimizer does: from a CUDA device,
into the page-locked landing buffer on a side stream, then on a worker thread,
once that copy is done, cast to float32; from the CPU, the cast on the worker
thread, beside backward. `step()` waits for what is still in flight, and uses
a copy only if the gradient is still the tensor it was made from, at the same
version: an in-place change after backward (`clip_grad_norm_`,
`GradScaler.unscale_`, another backward accumulating) makes the copy stale,
and the step copies again. So the result is bit for bit the plain path's;
what overlap saves is the copy's time, where backward leaves room for it.

A parameter stepped in place (float32, contiguous, on the CPU) has nothing to
copy: its hook does nothing. A change made through `.grad.data` escapes the
version counter (as for any tensor) and so escapes this check too.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import weakref
from collections.abc import Callable

import torch
from torch.utils.hooks import RemovableHandle

from .masters import Master

Lookup = Callable[[], Master | None]
"""The master that stages a parameter's gradient now (None: the parameter has none)."""


class GradStreams:
    """The hooks of an optimizer's parameters and the copies they started."""

    def __init__(self) -> None:
        self._workers = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hetadam-grads")
        self._pending: list[cf.Future[None]] = []
        self._lock = threading.Lock()
        self._handles: list[RemovableHandle] = []
        self._streams: dict[torch.device, torch.cuda.Stream] = {}

    def watch(self, p: torch.Tensor, lookup: Lookup) -> None:
        """Hook parameter `p` (when autograd gives it gradients), whose master `lookup` finds."""
        if not p.requires_grad:
            return
        ref = weakref.ref(self)  # the hook must not keep the optimizer alive

        def ready(p: torch.Tensor) -> None:
            streams = ref()
            if streams is not None:
                streams._ready(p, lookup())

        self._handles.append(p.register_post_accumulate_grad_hook(ready))

    def _ready(self, p: torch.Tensor, master: Master | None) -> None:
        grad = p.grad
        if grad is None or master is None or not master.fits(p) or grad.dtype != p.dtype:
            return
        version = grad._version
        if master.landing is not None and grad.device.type == "cuda":
            stream = self._streams.get(grad.device)
            if stream is None:
                stream = self._streams[grad.device] = torch.cuda.Stream(grad.device)
            stream.wait_stream(torch.cuda.current_stream(grad.device))
            with torch.cuda.stream(stream):
                master.landing.copy_(grad, non_blocking=True)
                done = torch.cuda.Event()
                done.record(stream)
            grad.record_stream(stream)  # its memory is not reused before the copy has read it
            job = self._workers.submit(_land, master, grad, version, done)
        else:
            job = self._workers.submit(master.stage, grad, version)
        with self._lock:
            self._pending.append(job)

    def wait(self) -> None:
        """Wait for every copy the hooks started. One that failed is left
        undone (the master does not hold that gradient): the step copies it
        again, and reports the error if it recurs."""
        with self._lock:
            pending, self._pending = self._pending, []
        cf.wait(pending)

    def close(self) -> None:
        """Remove the hooks and let the worker end."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.wait()
        self._workers.shutdown(wait=True)


def _land(master: Master, grad: torch.Tensor, version: int, done: torch.cuda.Event) -> None:
    done.synchronize()
    master.stage(grad, version, landed=True)
