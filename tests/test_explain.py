"""fastconv.explain: which backend and algorithm each kernel call would use, computing nothing."""

import numpy as np
import pytest

import fastconv
from fastconv import backends
from fastconv.errors import InvalidArgumentError, InvalidShapeError


def test_explain_records_without_computing():
    # 1 x 2048 x 2048 x 64 -> 64 with a 3x3 kernel: 150 G multiply-adds, explained at once
    x = np.zeros((1, 2048, 2048, 64), np.float32)
    e = fastconv.explain("conv2d", x, np.zeros((3, 3, 64, 64), np.float32), padding="same")
    (call,) = e.calls
    assert (call.kernel, call.x_shape, call.w_shape, call.out_shape) == \
        ("conv", (1, 1, 2048, 2048, 64), (1, 1, 3, 3, 64, 64)[1:], (1, 1, 2048, 2048, 64))
    assert call.backend in fastconv.available_backends() and call.backend != "reference"
    assert call.chosen_by == "auto rule for 'conv/dense'" and call.algorithm
    assert "conv2d:" in str(e) and call.backend in str(e)


def test_explain_every_kernel_of_a_composite_op():
    # cython has no fused separable kernel: the op runs its two kernels
    e = fastconv.explain(fastconv.separable_conv2d, np.zeros((2, 10, 10, 8)), np.zeros((3, 3, 8, 2)),
                         np.zeros((1, 1, 16, 4)), strides=2, padding="same", backend="cython")
    assert [c.kernel for c in e.calls] == ["depthwise_conv", "conv"]
    assert e.calls[0].out_shape == (2, 1, 5, 5, 16) and e.calls[1].out_shape == (2, 1, 5, 5, 4)


def test_explain_the_fused_separable_kernel(monkeypatch):
    from fastconv.backends import _auto
    args = (np.zeros((2, 10, 10, 8)), np.zeros((3, 3, 8, 1)), np.zeros((1, 1, 8, 4)))
    (call,) = fastconv.explain(fastconv.separable_conv2d, *args, padding="same", backend="numba").calls
    assert (call.kernel, call.backend, call.chosen_by) == ("separable_conv", "numba", "requested")
    assert call.out_shape == (2, 1, 10, 10, 4) and "fused" in call.algorithm
    # auto follows its rule: the fused kernel where the preferred backend has one, else the two
    monkeypatch.setitem(_auto.RULE, "separable_conv", ("numba", "cython"))
    (call,) = fastconv.explain(fastconv.separable_conv2d, *args, padding="same").calls
    assert (call.kernel, call.chosen_by) == ("separable_conv", "auto rule for 'separable_conv'")
    monkeypatch.setitem(_auto.RULE, "separable_conv", ("cython", "numba"))
    calls = fastconv.explain(fastconv.separable_conv2d, *args, padding="same").calls
    assert [c.kernel for c in calls] == ["depthwise_conv", "conv"]
    # a depth multiplier > 1 runs the two passes inside the numba kernel
    (call,) = fastconv.explain(fastconv.separable_conv2d, np.zeros((2, 10, 10, 8)), np.zeros((3, 3, 8, 2)),
                               np.zeros((1, 1, 16, 4)), backend="numba").calls
    assert "then a 1x1 convolution" in call.algorithm
    # ... and names the 1x1 pass's own path (6 channels: the few-channel kernel, not a GEMM)
    from fastconv.backends import numba as nb
    (call,) = fastconv.explain(fastconv.separable_conv2d, np.zeros((1, 8, 8, 3)), np.zeros((3, 3, 3, 2)),
                               np.zeros((1, 1, 6, 8)), backend="numba").calls
    assert call.algorithm.endswith(nb._PATHS["few_channel_direct"]), call.algorithm


@pytest.mark.parametrize("backend", ["numba", "cython", "reference"])
def test_explain_a_requested_backend(backend):
    if backend not in fastconv.available_backends():
        pytest.fail(f"backend {backend} is not available: {backends._failed.get(backend)}")
    for op, args in [("conv3d", (np.zeros((1, 4, 6, 6, 2)), np.zeros((3, 3, 3, 2, 4)))),
                     ("conv2d_transpose", (np.zeros((1, 6, 6, 4)), np.zeros((3, 3, 2, 4)))),
                     ("depthwise_conv1d", (np.zeros((1, 20, 4)), np.zeros((3, 4, 2)))),
                     ("max_pool2d", (np.zeros((1, 6, 6, 4)),)), ("avg_pool3d", (np.zeros((1, 4, 6, 6, 4)),)),
                     ("global_max_pool1d", (np.zeros((1, 6, 4)),))]:
        (call,) = fastconv.explain(op, *args, backend=backend).calls
        assert call.backend == backend and call.chosen_by == "requested"
        assert "does not describe" not in call.algorithm, (backend, op)


def test_explain_validates_like_the_op():
    with pytest.raises(InvalidShapeError) as want:
        fastconv.conv2d(np.zeros((1, 5, 5, 3)), np.zeros((3, 3, 4, 8)))
    with pytest.raises(InvalidShapeError) as got:
        fastconv.explain("conv2d", np.zeros((1, 5, 5, 3)), np.zeros((3, 3, 4, 8)))
    assert str(got.value) == str(want.value)
    with pytest.raises(InvalidArgumentError, match="explain: argument `op` must be an op"):
        fastconv.explain("conv4d", np.zeros((1, 5, 5, 3)))
    with pytest.raises(InvalidArgumentError, match="explain: argument `op`"):
        fastconv.explain(print)


def test_ops_compute_again_after_explain():
    x, w = np.ones((1, 5, 5, 2)), np.ones((3, 3, 2, 1))
    fastconv.explain("conv2d", x, w)
    assert fastconv.conv2d(x, w)[0, 0, 0, 0] == 18
