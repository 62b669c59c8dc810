"""This machine's measured sgemm rate: the ceiling the report compares results to."""

import time

import numpy as np


def sgemm_gflops(n=2048, runs=5):
    """GFLOP/s of ``numpy.matmul`` on two n x n float32 matrices (2 n^3 FLOPs), best of ``runs``
    timed runs after one warm-up."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    np.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


if __name__ == "__main__":
    print(f"{sgemm_gflops():.1f} GFLOP/s")
