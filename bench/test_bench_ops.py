"""Benchmarks of the ops per backend (pytest-benchmark).

Run with ``python -m pytest bench/ --benchmark-only --benchmark-enable``.
Each kernel is checked against the reference backend once before it is timed.
"""

import numpy as np
import pytest

import fastconv

CASES = {
    "max_pool2d 2x2 1x112x112x64": (fastconv.max_pool2d, (1, 112, 112, 64), dict(pool_size=2)),
    "avg_pool2d 3x3/1 same 1x56x56x256": (fastconv.avg_pool2d, (1, 56, 56, 256),
                                          dict(pool_size=3, strides=1, padding="same")),
}


@pytest.mark.parametrize("backend", fastconv.available_backends())
@pytest.mark.parametrize("case", sorted(CASES))
def test_pool(benchmark, case, backend):
    f, shape, kw = CASES[case]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(f(x, backend=backend, **kw), f(x, backend="reference", **kw),
                               rtol=1e-5, atol=1e-6)
    benchmark.group = case
    benchmark(f, x, backend=backend, **kw)
