"""Benchmarks of the canonical cases per backend, with PyTorch in the same run.

Run::

    python -m pytest bench/ --benchmark-only --benchmark-enable --benchmark-json=bench/results.json
    python bench/report.py bench/results.json

Benchmarks are grouped by case, so fastconv's backends and the peers of one
case sit side by side.  Each fastconv kernel is checked against the reference
backend once before it is timed: a fast wrong kernel fails its benchmark.
"""

import numpy as np
import pytest

import fastconv
from cases import CASES, ort_call, tf_call, torch_call

_expected = {}


def _reference(case):
    if case.name not in _expected:
        _expected[case.name] = case.call("reference")
    return _expected[case.name]


@pytest.mark.parametrize("backend", [b for b in fastconv.available_backends()])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fastconv(benchmark, case, backend):
    if not fastconv.backends.supports(backend, case.op):
        pytest.skip(f"backend {backend!r} lacks a kernel {case.op} needs "
                    f"({', '.join(sorted(fastconv.backends.OP_KERNELS[case.op]))}) yet")
    y = case.call(backend)
    expected = _reference(case)
    np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-4 * float(np.abs(expected).max()))
    benchmark.group = case.name
    benchmark.extra_info.update(flops=case.flops, impl=f"fastconv-{backend}")
    benchmark(case.call, backend)


def _nchw_to_nhwc(y):
    return np.moveaxis(np.asarray(y), 1, -1)


# peer: (builder, how to bring its result to channels-last for the check (None: not
# value-checked), why it may be missing)
PEERS = {
    # PyTorch does the same work (shapes and FLOPs) but is not value-checked: its symmetric
    # padding puts the odd pixel of an even "same" padding on the other side from Keras.
    "torch": (torch_call, None, "PyTorch is not installed (pip install torch==2.13.0)"),
    "tensorflow": (tf_call, np.asarray, "TensorFlow is not installed (pip install tensorflow-cpu)"),
    "onnxruntime": (ort_call, _nchw_to_nhwc, "ONNX Runtime is not installed (pip install onnx onnxruntime)"),
}


@pytest.mark.parametrize("peer", sorted(PEERS))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_peer(benchmark, case, peer):
    build, to_nhwc, missing = PEERS[peer]
    fn = build(case)
    if fn is None:
        pytest.skip(missing)
    if to_nhwc is not None:
        expected = _reference(case)
        np.testing.assert_allclose(to_nhwc(fn()), expected, rtol=1e-3,
                                   atol=1e-4 * float(np.abs(expected).max()))
    benchmark.group = case.name
    benchmark.extra_info.update(flops=case.flops, impl=peer)
    benchmark(fn)
