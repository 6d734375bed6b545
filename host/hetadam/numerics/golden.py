"""Golden vectors of the `fixed` kernel, generated from the NumPy model.

The HLS C-sim testbench, the OpenCL tests and the cocotb benches read these
files; ``python -m hetadam.numerics.golden DIR`` writes them. Each ``.vec`` file
is plain text, one record a line, ``key value value ...``::

    case NAME
    n N
    idx0 I
    steps T
    step K                     (K = 1..T; each step lists all of its inputs)
    scalars v v ...            the input registers in regmap.SCALARS order, decimal
    p ...                      n words, hex, the kernel's input arrays
    g ...
    ms ...
    ex ...
    expect_p ...               the arrays after the kernel ran, hex
    expect_ms ...
    expect_ex ...
    expect_sat S               the sat_count register
    end

Multi-step cases carry state: the inputs of step K+1 are the expected outputs
of step K with the new gradient's exponents in ex bits 7:0.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import regmap
from ..filelock import file_lock
from .convert import pack_ex, pack_ms, quantize_grad, unpack_ex, unpack_ms
from .fixed import FixedState, adam_step
from .formats import DEFAULT, EXP_MAX, EXP_MIN, EXP_ZERO, FixedFormat, n_blocks
from .scalars import StepScalars, encode_step


@dataclass
class Step:
    scalars: dict[str, int]
    p: np.ndarray
    g: np.ndarray
    ms: np.ndarray
    ex: np.ndarray
    expect_p: np.ndarray
    expect_ms: np.ndarray
    expect_ex: np.ndarray
    expect_sat: int

    def grad(self) -> tuple[np.ndarray, np.ndarray]:
        """The step's quantised gradient (G, eg)."""
        return self.g.view(np.int16), unpack_ex(self.ex)[0]

    def step_scalars(self) -> StepScalars:
        """The step's scalar registers other than n and idx0."""
        return StepScalars(**{name: self.scalars[name] for name in StepScalars.__dataclass_fields__})

    def expected_state(self) -> FixedState:
        """The state the kernel must leave, unpacked from the kernel layout."""
        return _unpack(self.expect_p, self.expect_ms, self.expect_ex)


@dataclass
class Case:
    name: str
    n: int
    idx0: int
    steps: list[Step] = field(default_factory=list)


def kernel_scalars(n: int, idx0: int, sc: StepScalars) -> dict[str, int]:
    """The input registers of one kernel run, in regmap order."""
    values = {"n": n, "idx0": idx0, **sc.as_dict()}
    return {name: values[name] for name in regmap.SCALARS}


def run_case(
    name: str,
    state: FixedState,
    grads: list[tuple[np.ndarray, np.ndarray]],
    scalars: list[StepScalars],
    idx0: int = 0,
    fmt: FixedFormat = DEFAULT,
) -> Case:
    """Run the model over quantised gradients (G, eg), recording every step."""
    n = state.P.size
    case = Case(name, n, idx0)
    for (G, eg), sc in zip(grads, scalars, strict=True):
        new, sat = adam_step(state, G, eg, sc, idx0, fmt)
        case.steps.append(
            Step(
                scalars=kernel_scalars(n, idx0, sc),
                p=state.P.view(np.uint32),
                g=G.astype(np.int16).view(np.uint16),
                ms=pack_ms(state.M, state.S),
                ex=pack_ex(eg, state.em, state.es),
                expect_p=new.P.view(np.uint32),
                expect_ms=pack_ms(new.M, new.S),
                expect_ex=pack_ex(eg, new.em, new.es),
                expect_sat=sat,
            )
        )
        state = new
    return case


def random_state(
    rng: np.random.Generator, n: int, fmt: FixedFormat = DEFAULT, exp_lo: int = -30, exp_hi: int = 0
) -> FixedState:
    """A random state of `n` elements: M and S over their whole range, P within
    ±2^26 (±4.0 in the default format), block exponents in [exp_lo, exp_hi].
    The stimulus of the golden cases and of the tests that compare a kernel
    with the model."""
    nb = n_blocks(n, fmt.block)
    return FixedState(
        P=rng.integers(-(1 << 26), 1 << 26, n, dtype=np.int32),
        M=rng.integers(-fmt.m_max, fmt.m_max + 1, n).astype(np.int16),
        em=rng.integers(exp_lo, exp_hi + 1, nb).astype(np.int8),
        S=rng.integers(0, fmt.s_max + 1, n).astype(np.uint16),
        es=rng.integers(exp_lo, exp_hi + 1, nb).astype(np.int8),
    )


def random_grad(
    rng: np.random.Generator, n: int, fmt: FixedFormat = DEFAULT, exp_lo: int = -30, exp_hi: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A quantised gradient (G, eg) with mantissas over their whole range."""
    nb = n_blocks(n, fmt.block)
    G = rng.integers(-fmt.g_max, fmt.g_max + 1, n).astype(np.int16)
    return G, rng.integers(exp_lo, exp_hi + 1, nb).astype(np.int8)


def _float_grads(rng: np.random.Generator, n: int, steps: int, fmt: FixedFormat) -> list[tuple[np.ndarray, np.ndarray]]:
    """Gradients like a network's: per-element scales over decades, drifting in time."""
    scale = 10.0 ** rng.uniform(-6, 0, n)
    out = []
    for t in range(steps):
        g = rng.standard_normal(n) * scale * (1.0 + 0.5 * np.sin(t / 7.0))
        g[rng.random(n) < 0.05] = 0.0
        G, eg, _ = quantize_grad(g, fmt)
        out.append((G, eg))
    return out


def _hyper(**kw: float) -> dict[str, float]:
    base = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    base.update(kw)
    return base


def cases(fmt: FixedFormat = DEFAULT, seed: int = 2024) -> Iterator[Case]:
    """Every golden case of `fmt`: edge cases first, then random multi-step sequences."""
    rng = np.random.default_rng(seed)
    B = fmt.block
    run = functools.partial(run_case, fmt=fmt)  # every case runs the model in fmt

    def enc(step: int, **kw: float | int | bool) -> StepScalars:
        hyper = _hyper(**{k: v for k, v in kw.items() if k in ("lr", "beta1", "beta2", "eps", "weight_decay")})
        rest = {k: v for k, v in kw.items() if k not in hyper}
        return encode_step(step=step, fmt=fmt, **hyper, **rest)

    yield run(
        "zeros", FixedState.zeros(2 * B, fmt), [(np.zeros(2 * B, np.int16), np.full(2, EXP_ZERO, np.int8))], [enc(1)]
    )

    st = FixedState.zeros(1, fmt)
    st.P[:] = 1 << 24
    G = np.array([min(12345, fmt.g_max)], np.int16)
    yield run("one_element", st, [(G, np.array([-3], np.int8))], [enc(1)])

    n = B + 5
    yield run("partial_block", random_state(rng, n, fmt), [random_grad(rng, n, fmt)], [enc(3)], idx0=B)

    # Largest and smallest representable values, exponents at both ends.
    n = 4 * B
    st = FixedState(
        P=np.resize(np.array([fmt.p_max, -fmt.p_max, 0, 1, -1], np.int32), n),
        M=np.resize(np.array([fmt.m_max, -fmt.m_max, 0, 1, -1], np.int16), n),
        em=np.array([EXP_MAX, EXP_MIN, EXP_ZERO, 0], np.int8),
        S=np.resize(np.array([fmt.s_max, 0, 1, fmt.s_max, 2], np.uint16), n),
        es=np.array([EXP_MAX, EXP_MIN, 0, EXP_ZERO], np.int8),
    )
    G = np.resize(np.array([fmt.g_max, -fmt.g_max, 0, 1, -1, 7], np.int16), n)
    eg = np.array([EXP_MAX, EXP_MIN, EXP_ZERO, -60], np.int8)
    yield run("extremes", st, [(G, eg)], [enc(1)])

    # Saturation: parameters at the rails pushed outwards, ratios beyond 128.
    n = 2 * B
    st = FixedState.zeros(n, fmt)
    st.P[:B] = np.where(np.arange(B) % 2, fmt.p_max - 3, -fmt.p_max + 3)
    st.M[:] = np.where(np.arange(n) % 2, -fmt.m_max, fmt.m_max)
    st.em[:] = [0, 10]
    st.es[:] = [-40, EXP_ZERO]
    G = np.where(np.arange(n) % 2, -fmt.g_max, fmt.g_max).astype(np.int16)
    G[B:] = 0  # no gradient, no s: the ratio saturates
    yield run("saturation", st, [(G, np.array([-1, EXP_ZERO], np.int8))], [enc(5, lr=1.0, eps=2.0**-90)])

    n = 3 * B
    for name, lo, hi in (("tiny_grads", -127, -110), ("huge_grads", 110, 127)):
        st = random_state(rng, n, fmt, lo, hi)
        yield run(name, st, [random_grad(rng, n, fmt, lo, hi)], [enc(2)])

    n = 5 * B
    yield run("step_one", random_state(rng, n, fmt), [random_grad(rng, n, fmt)], [enc(1)])
    yield run("step_million", random_state(rng, n, fmt), [random_grad(rng, n, fmt)], [enc(10**6)])
    yield run(
        "adamw_decay",
        random_state(rng, n, fmt),
        [random_grad(rng, n, fmt)],
        [enc(7, lr=3e-3, weight_decay=0.1, decoupled_weight_decay=True)],
    )
    yield run(
        "stochastic",
        random_state(rng, n, fmt),
        [random_grad(rng, n, fmt)],
        [enc(9, stochastic=True, seed=0xC0FFEE)],
        idx0=7 * B,
    )
    yield run(
        "lr_tiny",
        random_state(rng, n, fmt),
        [random_grad(rng, n, fmt)],
        [enc(4, lr=1e-12, eps=1e-25)],
    )
    for i in range(3):
        hyper = {
            "lr": float(10 ** rng.uniform(-5, -1)),
            "beta1": float(rng.uniform(0, 0.99)),
            "beta2": float(rng.uniform(0.5, 0.9999)),
            "eps": float(10 ** rng.uniform(-12, -3)),
        }
        yield run(
            f"random_hyper_{i}",
            random_state(rng, n, fmt),
            [random_grad(rng, n, fmt)],
            [enc(int(rng.integers(1, 1000)), **hyper, stochastic=bool(i % 2), seed=int(rng.integers(1 << 32)))],
        )

    for name, steps, n, stochastic in (("sequence_rne", 60, 300, False), ("sequence_stochastic", 40, 200, True)):
        grads = _float_grads(rng, n, steps, fmt)
        wd = {"weight_decay": 0.01, "decoupled_weight_decay": True}
        scalars = [enc(t, stochastic=stochastic, seed=99, **wd) for t in range(1, steps + 1)]
        st = FixedState.zeros(n, fmt)
        st.P[:] = rng.integers(-(1 << 24), 1 << 24, n)
        yield run(name, st, grads, scalars, idx0=64 * B)

    n = 4096 + 3
    yield run(
        "large",
        FixedState.zeros(n, fmt),
        _float_grads(rng, n, 3, fmt),
        [enc(t, stochastic=True, seed=5) for t in (1, 2, 3)],
    )


def _words(a: np.ndarray) -> str:
    width = a.dtype.itemsize * 2
    return " ".join(f"{int(v):0{width}x}" for v in a)


def write_case(case: Case, path: Path) -> None:
    lines = [f"case {case.name}", f"n {case.n}", f"idx0 {case.idx0}", f"steps {len(case.steps)}"]
    for k, s in enumerate(case.steps, 1):
        lines.append(f"step {k}")
        lines.append("scalars " + " ".join(str(v) for v in s.scalars.values()))
        for key in ("p", "g", "ms", "ex", "expect_p", "expect_ms", "expect_ex"):
            lines.append(f"{key} {_words(getattr(s, key))}".rstrip())
        lines.append(f"expect_sat {s.expect_sat}")
    lines.append("end")
    path.write_text("\n".join(lines) + "\n")


_DTYPES = {"p": np.uint32, "g": np.uint16, "ms": np.uint32, "ex": np.uint32}


def read_case(path: Path) -> Case:
    case: Case | None = None
    fields: dict[str, object] = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(" ")
        if key == "case":
            case = Case(rest, 0, 0)
        elif key in ("n", "idx0"):
            setattr(case, key, int(rest))
        elif key == "scalars":
            fields["scalars"] = dict(zip(regmap.SCALARS, (int(v) for v in rest.split()), strict=True))
        elif key.removeprefix("expect_") in _DTYPES:
            dtype = _DTYPES[key.removeprefix("expect_")]
            fields[key] = np.array([int(v, 16) for v in rest.split()], dtype=dtype)
        elif key == "expect_sat":
            fields[key] = int(rest)
            case.steps.append(Step(**fields))
            fields = {}
    if case is None:
        raise ValueError(f"{path} holds no golden case")
    return case


def load(directory: Path) -> list[Case]:
    return [read_case(p) for p in sorted(Path(directory).glob("*.vec"))]


def _unpack(p: np.ndarray, ms: np.ndarray, ex: np.ndarray) -> FixedState:
    M, S = unpack_ms(ms)
    _, em, es = unpack_ex(ex)
    return FixedState(P=p.view(np.int32), M=M, em=em, S=S, es=es)


def state_of(step: Step) -> FixedState:
    """The input state of a recorded step, unpacked from the kernel layout."""
    return _unpack(step.p, step.ms, step.ex)


def write_all(directory: Path, fmt: FixedFormat = DEFAULT) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in cases(fmt):
        path = directory / f"{case.name}.vec"
        write_case(case, path)
        paths.append(path)
    return paths


SPEC_SOURCES = ("fixed.py", "formats.py", "scalars.py", "lfsr.py", "convert.py", "golden.py", "../regmap.py")
"""The files that define the golden vectors: the model, its encodings and this writer."""


def spec_hash() -> str:
    """A short hash of SPEC_SOURCES: it changes whenever the vectors may."""
    h = hashlib.sha256()
    for name in SPEC_SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:12]


def cached(root: Path) -> Path:
    """The golden vectors in root/<spec_hash()>, written on first use. Under a
    file lock, so that concurrent processes (pytest-xdist workers, the RTL
    benches) write them once; a change of the spec writes a new set."""
    out = Path(root) / spec_hash()
    with file_lock(Path(root) / "golden.lock"):
        if not (out / ".done").exists():
            write_all(out)
            (out / ".done").write_text("ok\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the golden vectors of the fixed kernel.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--format", default=DEFAULT.name, help=f"the format's name (default {DEFAULT.name})")
    args = parser.parse_args(argv)
    try:
        fmt = FixedFormat.parse(args.format)
    except ValueError as exc:
        parser.error(str(exc))
    paths = write_all(args.directory, fmt)
    print(f"wrote {len(paths)} golden cases of {fmt.name} to {args.directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
