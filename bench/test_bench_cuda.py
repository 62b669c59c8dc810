"""Benchmarks of the cuda backend on the canonical cases, with PyTorch on the same GPU.

Run on a machine with an NVIDIA GPU (``pip install -e ".[cuda,bench]"``)::

    python -m pytest bench/test_bench_cuda.py --benchmark-only --benchmark-enable

Skipped, with the reason, where the cuda backend is not available.  Each case is
timed twice: with ``x`` already on the device and the result left there (the
kernels, plus the per-call copy of the weights, which the op API takes as host
arrays), and from a host array to a host array (both transfers included).
Every timed call ends with a device synchronisation.  Each result is checked
against the reference backend before it is timed (the first call also compiles
the kernels).  PyTorch runs the same work on CUDA tensors in channels_last
layout when ``torch.cuda.is_available()``.
"""

from unittest import mock

import numpy as np
import pytest

import fastconv
from fastconv import backends
from cases import CASES, torch_call

_GPU = "cuda" in fastconv.available_backends()
pytestmark = pytest.mark.skipif(
    not _GPU, reason=f"the cuda backend is not available here ({backends._failed.get('cuda')})")

_expected = {}


def _reference(case):
    if case.name not in _expected:
        _expected[case.name] = case.call("reference")
    return _expected[case.name]


@pytest.mark.parametrize("transfer", ["device", "host"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cuda(benchmark, case, transfer):
    cu = backends._module("cuda")
    arrays = case.build()
    x = cu.to_device(arrays[0]) if transfer == "device" else arrays[0]
    op = getattr(fastconv, case.op)

    def run():
        y = op(x, *arrays[1:], backend="cuda", **case.kwargs)
        cu.cuda.synchronize()
        return y

    expected = _reference(case)
    np.testing.assert_allclose(cu.to_host(run()), expected, rtol=1e-3, atol=1e-4 * float(np.abs(expected).max()))
    benchmark.group = case.name
    benchmark.extra_info.update(flops=case.flops, impl=f"fastconv-cuda-{transfer}")
    benchmark(run)


def _torch_cuda_call(case):
    """bench/cases.py's PyTorch call with every tensor made on the GPU (its tensors all come
    from ``torch.from_numpy``), or None without a CUDA build of PyTorch and a GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    from_numpy = torch.from_numpy
    with mock.patch.object(torch, "from_numpy", lambda a: from_numpy(a).cuda()):
        fn = torch_call(case)

    def run():
        y = fn()
        torch.cuda.synchronize()
        return y

    return run


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_torch_cuda(benchmark, case):
    fn = _torch_cuda_call(case)
    if fn is None:
        pytest.skip("PyTorch with CUDA is not available (pip install torch with a CUDA build)")
    fn()  # warm-up: cuDNN picks its algorithms on the first call
    benchmark.group = case.name
    benchmark.extra_info.update(flops=case.flops, impl="torch-cuda")
    benchmark(fn)
