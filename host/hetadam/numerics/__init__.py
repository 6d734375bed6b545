"""The numerics spec: `fp32` (torch's Adam) and `fixed` (block fixed point).

`fixed.adam_step` is the golden model; every kernel matches it bit for bit.
"""

from .fixed import FixedState, adam_step
from .formats import DEFAULT, FixedFormat
from .scalars import StepScalars, encode_step

__all__ = ["DEFAULT", "FixedFormat", "FixedState", "StepScalars", "adam_step", "encode_step"]
