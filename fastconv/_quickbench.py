"""A quick comparison of the available backends on a few canonical cases (``fastconv bench``).

A small, fast subset of the cases of the repository's ``bench/`` suite (which
the installed package cannot import): one per kind of op, sized to run in a few
seconds on every backend, the pure-NumPy reference included. Each case is run
on every available backend that implements its kernels; the result is the
median wall time of ``repeat`` calls after one untimed warm-up call (which also
compiles Numba kernels on first use).
"""

import dataclasses
import math
import statistics
import time

import numpy as np

from . import backends
from . import cost as _cost

# the kernel-contract operations each op needs from a backend
_KERNELS = {
    "conv1d": {"conv"}, "conv2d": {"conv"}, "conv3d": {"conv"},
    "conv2d_transpose": {"conv_transpose"},
    "depthwise_conv2d": {"depthwise_conv"},
    "separable_conv2d": {"depthwise_conv", "conv"},
    "max_pool2d": {"max_pool"}, "avg_pool2d": {"avg_pool"},
    "global_avg_pool2d": {"global_avg_pool"},
}


@dataclasses.dataclass
class Case:
    """One op call: ``fastconv.<op>(x, *weights, **kwargs)`` on seeded random float32 arrays."""

    name: str
    op: str
    x_shape: tuple
    weight_shapes: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)

    def arrays(self):
        rng = np.random.default_rng(0)
        x = rng.standard_normal(self.x_shape, dtype=np.float32)
        ws = [(rng.standard_normal(s, dtype=np.float32) / np.float32(math.sqrt(math.prod(s[:-1]) or 1)))
              for s in self.weight_shapes]
        return [x] + ws

    def flops(self):
        """FLOPs of one call, by :mod:`fastconv.cost`."""
        fn = getattr(_cost, self.op)
        shapes = list(self.weight_shapes)
        kw = dict(self.kwargs)
        if self.op.startswith(("conv", "depthwise", "separable")):
            # the last weight is the bias (an array for the op, a flag for fastconv.cost)
            kw["use_bias"] = True
            shapes = shapes[:-1]
        return fn(self.x_shape, *shapes, **kw).flops

    def supported_by(self, backend):
        return backend == "auto" or _KERNELS[self.op] <= set(backends.backend_ops(backend))


CASES = [
    Case("conv2d 3x3 same 1x56x56x64->64", "conv2d", (1, 56, 56, 64), ((3, 3, 64, 64), (64,)),
         dict(padding="same")),
    Case("conv2d 3x3/2 same 1x112x112x3->32", "conv2d", (1, 112, 112, 3), ((3, 3, 3, 32), (32,)),
         dict(padding="same", strides=2)),
    Case("conv2d 1x1 1x28x28x256->64", "conv2d", (1, 28, 28, 256), ((1, 1, 256, 64), (64,))),
    Case("depthwise_conv2d 3x3 same 1x56x56x64", "depthwise_conv2d", (1, 56, 56, 64),
         ((3, 3, 64, 1), (64,)), dict(padding="same")),
    Case("separable_conv2d 3x3 same 1x28x28x128->128", "separable_conv2d", (1, 28, 28, 128),
         ((3, 3, 128, 1), (1, 1, 128, 128), (128,)), dict(padding="same")),
    Case("conv2d_transpose 3x3/2 same 1x16x16x32->64", "conv2d_transpose", (1, 16, 16, 32),
         ((3, 3, 64, 32), (64,)), dict(padding="same", strides=2)),
    Case("conv1d k5 dil2 same 4x512x32->32", "conv1d", (4, 512, 32), ((5, 32, 32), (32,)),
         dict(padding="same", dilation_rate=2)),
    Case("max_pool2d 2x2 1x112x112x32", "max_pool2d", (1, 112, 112, 32), (), dict(pool_size=2)),
    Case("avg_pool2d 3x3/1 same 1x56x56x64", "avg_pool2d", (1, 56, 56, 64), (),
         dict(pool_size=3, strides=1, padding="same")),
    Case("global_avg_pool2d 1x28x28x256", "global_avg_pool2d", (1, 28, 28, 256)),
]


@dataclasses.dataclass
class Result:
    case: Case
    seconds: dict   # {backend: median seconds, or None where the backend lacks the op}


def time_case(case, backend, repeat=5):
    """Median seconds of ``repeat`` calls of ``case`` on ``backend`` (after one warm-up call)."""
    import fastconv
    fn = getattr(fastconv, case.op)
    args = case.arrays()
    fn(*args, backend=backend, **case.kwargs)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args, backend=backend, **case.kwargs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(backend_names, cases=None, repeat=5, progress=None):
    """Time every case on every backend of ``backend_names``; returns a list of :class:`Result`.

    ``progress``, if given, wraps the iterable of (case, backend) pairs (a progress bar)."""
    cases = CASES if cases is None else cases
    jobs = [(c, b) for c in cases for b in backend_names]
    results = {id(c): Result(c, {}) for c in cases}
    for c, b in (progress(jobs) if progress is not None else jobs):
        results[id(c)].seconds[b] = time_case(c, b, repeat) if c.supported_by(b) else None
    return [results[id(c)] for c in cases]


def table(results, backend_names):
    """The results as a text table: median ms per backend, the fastest backend, its GFLOP/s."""
    header = ["case"] + [f"{b} ms" for b in backend_names] + ["fastest", "GFLOP/s"]
    rows = []
    for r in results:
        timed = {b: s for b, s in r.seconds.items() if s is not None}
        best = min(timed, key=timed.get) if timed else None
        row = [r.case.name] + [f"{r.seconds[b] * 1e3:.3f}" if r.seconds.get(b) is not None else "-"
                               for b in backend_names]
        row += [best or "-", f"{r.case.flops() / timed[best] / 1e9:.1f}" if best else "-"]
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "-" * len(line(header))] + [line(r) for r in rows])
