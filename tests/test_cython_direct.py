"""The Cython backend's direct kernels, every path forced and compared with the reference.

Depthwise convolution has interior tiles (with specialised 3-wide stride-1 and
stride-2 rows and a generic loop), border pixels, full, half and partial channel
blocks, depth multipliers, rows split along W between threads, and a fused
epilogue; the global pools split each image into chunks.  The shapes below are
chosen from the kernel's own tile sizes so that each of these paths runs.
"""

import numpy as np
import pytest

import fastconv
from conftest import assert_close

pytestmark = pytest.mark.skipif("cython" not in fastconv.available_backends(),
                                reason="cython backend not built")


@pytest.fixture(scope="module")
def kernels():
    from fastconv.backends._cython import direct
    return direct


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _check(f, *args, dtype=np.float32, **kw):
    args = [None if a is None else a.astype(dtype) for a in args]
    assert_close(f(*args, backend="cython", **kw), f(*args, backend="reference", **kw))


def _channels(kernels, dtype):
    """Two full channel blocks, a half block and a few channels more."""
    block = kernels.BLOCK_CHANNELS[np.dtype(dtype).itemsize]
    return 2 * block + block // 2 + 3


def _width(kernels):
    """A row with two and a half interior tiles (so one tile overlaps the previous one)."""
    return 2 * kernels.TILE_PIXELS + kernels.TILE_PIXELS // 2 + 3


@pytest.mark.parametrize("ksize, kw", [
    ((3, 3), dict(padding="same")),                      # 3-wide stride-1 rows
    ((3, 3), dict(padding="valid")),
    ((3, 3), dict(padding="same", strides=2)),           # 3-wide stride-2 rows
    ((3, 3), dict(padding="valid", strides=(1, 2))),
    ((3, 3), dict(padding="same", dilation_rate=2)),     # generic rows
    ((3, 3), dict(padding="same", strides=2, dilation_rate=(2, 1))),
    ((5, 5), dict(padding="same")),
    ((2, 4), dict(padding="same", strides=3)),
    ((1, 1), dict(padding="valid")),
])
def test_depthwise_paths(kernels, ksize, kw, dtype):
    c = _channels(kernels, dtype)
    x = _rand(2, 7, _width(kernels) + 4, c)
    _check(fastconv.depthwise_conv2d, x, _rand(*ksize, c, 1, seed=1), _rand(c, seed=2), dtype=dtype, **kw)


@pytest.mark.parametrize("m", [2, 3])
def test_depthwise_multiplier(kernels, m, dtype):
    c = _channels(kernels, dtype)
    x = _rand(1, 6, _width(kernels), c)
    for kw in (dict(padding="same"), dict(padding="same", strides=2), dict(padding="valid", dilation_rate=2)):
        _check(fastconv.depthwise_conv2d, x, _rand(3, 3, c, m, seed=1), _rand(c * m, seed=2), dtype=dtype, **kw)


@pytest.mark.parametrize("activation", ["relu", "relu6", "leaky_relu", "hard_tanh", "hard_sigmoid",
                                        "hard_silu", "gelu", "softmax", None])
def test_depthwise_activations(kernels, activation, dtype):
    # fused in the tile epilogue (the piecewise-linear ones), applied after the kernel (the others)
    c = _channels(kernels, dtype)
    x = 3 * _rand(1, 5, _width(kernels), c)
    _check(fastconv.depthwise_conv2d, x, _rand(3, 3, c, 2, seed=1), _rand(2 * c, seed=2), dtype=dtype,
           padding="same", activation=activation)


def test_depthwise_without_bias_and_1d(kernels, dtype):
    c = _channels(kernels, dtype)
    _check(fastconv.depthwise_conv1d, _rand(3, 4 * _width(kernels), c), _rand(3, c, 1, seed=1), None,
           dtype=dtype, padding="same")
    _check(fastconv.depthwise_conv1d, _rand(1, 50, 5), _rand(4, 5, 2, seed=1), None, dtype=dtype,
           padding="valid", strides=2, dilation_rate=3)


def test_depthwise_window_wider_than_input():
    # no interior pixel at all: every pixel is a border pixel
    _check(fastconv.depthwise_conv2d, _rand(1, 3, 4, 9), _rand(5, 7, 9, 1, seed=1), padding="same")


def test_depthwise_nan_and_empty():
    x = _rand(1, 6, 20, 4).astype(np.float32)
    x[0, 2, 9, 1] = np.nan
    y = fastconv.depthwise_conv2d(x, np.ones((3, 3, 4, 1), np.float32), padding="same", backend="cython")
    assert np.isnan(y[0, 1:4, 8:11, 1]).all() and np.isfinite(np.delete(y, 1, axis=-1)).all()
    empty = fastconv.depthwise_conv2d(np.ones((0, 5, 5, 3)), np.ones((3, 3, 3, 2)), backend="cython")
    assert empty.shape == (0, 3, 3, 6)


def test_depthwise_input_not_modified():
    x = _rand(1, 9, 21, 40).astype(np.float32)
    w = _rand(3, 3, 40, 1).astype(np.float32)
    x0, w0 = x.copy(), w.copy()
    fastconv.depthwise_conv2d(x, w, padding="same", activation="relu", backend="cython")
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)


def _same_for_any_threads(f):
    fastconv.set_num_threads(1)
    try:
        expected = f()
    finally:
        fastconv.set_num_threads(None)
    for n in (2, 3):
        fastconv.set_num_threads(n)
        try:
            np.testing.assert_array_equal(f(), expected)
        finally:
            fastconv.set_num_threads(None)


def test_depthwise_threads_give_identical_results(kernels, dtype):
    c = _channels(kernels, dtype)
    # one output row: split along W between threads
    x = _rand(1, 3, 9 * _width(kernels), kernels.BLOCK_CHANNELS[np.dtype(dtype).itemsize]).astype(dtype)
    w = _rand(3, 3, x.shape[-1], 2, seed=1).astype(dtype)
    _same_for_any_threads(lambda: fastconv.depthwise_conv2d(x, w, padding="valid", backend="cython"))
    x = _rand(2, 31, 33, c).astype(dtype)
    w = _rand(3, 3, c, 2, seed=1).astype(dtype)
    _same_for_any_threads(lambda: fastconv.depthwise_conv2d(x, w, strides=2, padding="same",
                                                            activation="relu6", backend="cython"))


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape", [(1, 70, 90, 70), (3, 5, 7, 3), (2, 1, 1, 200), (1, 4000, 1, 1)])
def test_global_pools(kind, shape, dtype):
    # one image with many pixels (several chunks), channel blocks with a tail, one pixel, one channel
    f = getattr(fastconv, f"global_{kind}_pool2d")
    _check(f, _rand(*shape), dtype=dtype)
    _check(f, _rand(*shape), dtype=dtype, keepdims=True, data_format="channels_first")


def test_global_pools_3d_and_1d(dtype):
    _check(fastconv.global_avg_pool3d, _rand(2, 6, 20, 20, 65), dtype=dtype)
    _check(fastconv.global_max_pool1d, _rand(3, 5000, 17), dtype=dtype)


def test_global_max_pool_propagates_nan():
    x = _rand(1, 60, 60, 70).astype(np.float32)
    x[0, 59, 3, 5] = np.nan    # in the last chunk
    x[0, 0, 0, 69] = np.nan    # first pixel, channel in the tail block
    y = fastconv.global_max_pool2d(x, backend="cython")
    assert np.isnan(y[0, [5, 69]]).all() and np.isfinite(np.delete(y[0], [5, 69])).all()
    x[0, 0, 0, 69] = np.inf
    assert fastconv.global_max_pool2d(x, backend="cython")[0, 69] == np.inf


def test_global_pools_threads_give_identical_results(dtype):
    x = _rand(1, 64, 64, 96).astype(dtype)
    for f in (fastconv.global_avg_pool2d, fastconv.global_max_pool2d):
        _same_for_any_threads(lambda: f(x, backend="cython"))


def test_global_pool_empty_batch():
    assert fastconv.global_avg_pool2d(np.ones((0, 3, 3, 4)), backend="cython").shape == (0, 4)
