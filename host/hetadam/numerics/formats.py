"""The fixed-point formats of the `fixed` numerics: one source for every width.

Values live in blocks of ``block`` consecutive elements. Within a block the
gradient, the first moment m and the root second moment s = sqrt(v) are
integer mantissas that share one power-of-two exponent per block and per
quantity (block floating point, as in the OCP Microscaling formats); the
parameter is a plain two's-complement fixed-point number.

    g = G * 2**(eg - (g_bits - 1))      G signed,   |G| <= 2**(g_bits-1) - 1
    m = M * 2**(em - (m_bits - 1))      M signed,   |M| <= 2**(m_bits-1) - 1
    s = S * 2**(es - s_bits)            S unsigned,  S  <= 2**s_bits - 1
    p = P * 2**-p_frac                  P int32,    |P| <= 2**31 - 1

so every mantissa holds |x| < 2**e. A block whose values are all zero has the
exponent ``EXP_ZERO`` (-128). Exponents are int8.

The NumPy model takes any ``FixedFormat`` so the numerics study can sweep
widths. The hardware kernels (HLS, OpenCL, RTL) are built for one format at a
time: ``DEFAULT`` unless the build says otherwise. Their containers are fixed
(P int32, G and M int16, S uint16, one exponent word per block), so a format
reaches them through four widths, ``kernel_generics(fmt)``, and any format that
``hardware_problem`` accepts builds on every backend. ``p_frac`` is not among
them: the kernels never see it (the host folds it into the step's alpha_t).
The constants below and those widths are rendered into the kernels' sources
by ``python -m hetadam.formats_render``.
"""

from __future__ import annotations

from dataclasses import dataclass

EXP_ZERO = -128
"""Block exponent of an all-zero block."""
EXP_MIN = -127
EXP_MAX = 127

WORK_FRAC = 16
"""Working precision: inside the datapath every moment is an integer below
2**WORK_FRAC, relative to the block's working exponent."""
EXTRA_FRAC = 10
"""The new moments m' and s' keep 10 more fraction bits (26 in all) until they
are stored, so that the ratio of two small moments stays accurate."""
COEF_FRAC = 20
"""beta1 and beta2 are Q0.20 integers."""
RATIO_FRAC = 20
"""The ratio r = m / (s + eps) is a Q7.20 integer."""
RATIO_MAX = (1 << 27) - 1
"""The ratio_max register holds at most this: |r| < 128."""
EPS_BITS = 15
"""eps is a normalised 15-bit mantissa in [2**14, 2**15) with an exponent."""
ALPHA_BITS = 24
"""alpha_t is a normalised 24-bit mantissa in [2**23, 2**24) with a right shift."""
ALPHA_SHIFT_MAX = 62


@dataclass(frozen=True)
class FixedFormat:
    """Widths of one `fixed` format. Containers: P int32, G/M int16, S uint16."""

    block: int = 32
    g_bits: int = 16
    m_bits: int = 16
    s_bits: int = 16
    p_frac: int = 24

    def __post_init__(self) -> None:
        if self.block < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")
        for name in ("g_bits", "m_bits"):
            bits = getattr(self, name)
            if not 2 <= bits <= WORK_FRAC:
                raise ValueError(f"{name} must lie in [2, {WORK_FRAC}], got {bits}")
        if not 1 <= self.s_bits <= WORK_FRAC:
            raise ValueError(f"s_bits must lie in [1, {WORK_FRAC}], got {self.s_bits}")
        if not 0 <= self.p_frac <= 30:
            raise ValueError(f"p_frac must lie in [0, 30], got {self.p_frac}")

    @property
    def g_max(self) -> int:
        return (1 << (self.g_bits - 1)) - 1

    @property
    def m_max(self) -> int:
        return (1 << (self.m_bits - 1)) - 1

    @property
    def s_max(self) -> int:
        return (1 << self.s_bits) - 1

    @property
    def p_max(self) -> int:
        return (1 << 31) - 1

    @property
    def name(self) -> str:
        return f"b{self.block}-g{self.g_bits}-m{self.m_bits}-s{self.s_bits}-q{31 - self.p_frac}.{self.p_frac}"

    @property
    def hardware_name(self) -> str:
        """The widths a kernel build depends on (``name`` without the parameter format), e.g. b32-g16-m8-s8."""
        return f"b{self.block}-g{self.g_bits}-m{self.m_bits}-s{self.s_bits}"

    @classmethod
    def parse(cls, text: str) -> FixedFormat:
        """The format named `text`: ``name`` or ``hardware_name`` (then p_frac is DEFAULT's),
        e.g. "b32-g16-m8-s8" or "b32-g16-m16-s16-q15.16". ValueError for anything else."""
        fields = {"b": "block", "g": "g_bits", "m": "m_bits", "s": "s_bits"}
        values: dict[str, int] = {}
        try:
            for part in text.strip().split("-"):
                if part[:1] == "q" and "." in part:
                    whole, frac = (int(x) for x in part[1:].split("."))
                    if whole + frac != 31:  # Q<int>.<frac> of an int32
                        raise ValueError(part)
                    values["p_frac"] = frac
                else:
                    values[fields[part[:1]]] = int(part[1:])
        except (KeyError, IndexError, ValueError):
            values = {}
        if set(values) - {"p_frac"} != set(fields.values()):
            raise ValueError(
                f"format {text!r}: expected b<block>-g<bits>-m<bits>-s<bits>[-q<int>.<frac>], e.g. {DEFAULT.name}"
            )
        return cls(**values)


DEFAULT = FixedFormat()
"""The format the hardware kernels implement unless a build names another (chosen from the numerics study
and the co-design sweep: docs/numerics.md)."""

HW_BLOCK_MIN = 32
"""The kernels' smallest block: the RTL block store holds two beats of every block at 16 lanes."""
HW_BLOCK_MAX = 4096
"""The kernels' largest block (the HLS and RTL block buffers, the OpenCL work-item's arrays)."""


def kernel_generics(fmt: FixedFormat) -> dict[str, int]:
    """The widths a kernel build takes: SV parameters of hetadam_adam (-G / chparam / Vivado generics),
    C and OpenCL macros HETADAM_<NAME> (-D). hardware_problem(fmt) must be None."""
    return {"BLOCK": fmt.block, "G_BITS": fmt.g_bits, "M_BITS": fmt.m_bits, "S_BITS": fmt.s_bits}


def hardware_problem(fmt: FixedFormat) -> str | None:
    """Why the hardware kernels cannot be built for `fmt`, or None when they can (every width that
    FixedFormat accepts fits the kernels' containers; the block is the constraint)."""
    b = fmt.block
    if b & (b - 1) or not HW_BLOCK_MIN <= b <= HW_BLOCK_MAX:
        return f"block {b}: the hardware kernels take a power of two from {HW_BLOCK_MIN} to {HW_BLOCK_MAX}"
    return None


def n_blocks(n: int, block: int = DEFAULT.block) -> int:
    """Blocks covering n elements; the last one may be partial."""
    return -(-n // block)
