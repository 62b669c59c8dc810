"""The Cython backend's direct and pooling kernels, every path forced and compared with the reference.

Depthwise convolution has tiles of one and two output rows, specialised 3- and
5-wide stride-1 and stride-2 kernel rows and a generic loop, partial tiles,
full and partial channel blocks, depth multipliers, jobs split by rows, columns
and channel blocks, and a fused epilogue; window pooling has a separable path
(overlapping windows) and an on-the-fly one; the global pools split each image
into chunks.  The shapes below are chosen from the kernels' own tile sizes so
that each of these paths runs, and every test runs at each instruction-set level
this CPU has (AVX-512, AVX2, baseline: each has its own vector width and tiles).
"""

import itertools

import numpy as np
import pytest

import fastconv
from conftest import assert_close

pytestmark = pytest.mark.skipif("cython" not in fastconv.available_backends(),
                                reason="cython backend not built")


def _levels():
    if "cython" not in fastconv.available_backends():
        return []
    from fastconv.backends._cython import direct
    names = ("baseline", "avx2", "avx512")
    return list(names[:names.index(direct.isa()) + 1])


@pytest.fixture(params=_levels(), autouse=True)
def kernels(request):
    """The depthwise module, with the direct and pooling kernels at one instruction-set level."""
    from fastconv.backends import _cython_direct
    from fastconv.backends._cython import direct
    _cython_direct.set_isa(request.param)
    yield direct
    _cython_direct.set_isa(None)


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _check(f, *args, dtype=np.float32, **kw):
    args = [None if a is None else a.astype(dtype) for a in args]
    assert_close(f(*args, backend="cython", **kw), f(*args, backend="reference", **kw))


def _channels(kernels, dtype):
    """Two full channel blocks and a partial one."""
    block = kernels.block_channels(np.dtype(dtype).itemsize)
    return 2 * block + block // 2 + 1


def _width(kernels):
    """A row with two whole tiles and a partial one."""
    return 2 * kernels.tile_pixels() + kernels.tile_pixels() // 2 + 1


@pytest.mark.parametrize("ksize, kw", [
    ((3, 3), dict(padding="same")),                      # 3-wide stride-1 rows
    ((3, 3), dict(padding="valid")),
    ((3, 3), dict(padding="same", strides=2)),           # 3-wide stride-2 rows
    ((3, 3), dict(padding="valid", strides=(1, 2))),
    ((5, 5), dict(padding="same")),                      # 5-wide stride-1 rows
    ((5, 5), dict(padding="same", strides=2)),           # 5-wide stride-2 rows
    ((3, 3), dict(padding="same", dilation_rate=2)),     # generic rows
    ((3, 3), dict(padding="same", strides=2, dilation_rate=(2, 1))),
    ((3, 3), dict(padding="same", strides=(3, 1), dilation_rate=(3, 1))),  # rows used by one tile row only
    ((2, 4), dict(padding="same", strides=3)),
    ((7, 7), dict(padding=((0, 3), (4, 1)))),            # explicit padding
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


def test_depthwise_window_wider_than_input(kernels):
    # every window reaches into the padding on both sides
    _check(fastconv.depthwise_conv2d, _rand(1, 3, 4, 9), _rand(5, 7, 9, 1, seed=1), padding="same")


@pytest.mark.parametrize("shape, ksize, strides", [
    ((2, 7, 7, 40), (3, 3), 1),       # images narrower than a tile (MobileNet's last layers)
    ((1, 14, 14, 40), (5, 5), 1),
    ((1, 5, 3, 7), (3, 3), 2),        # fewer channels than a block
    ((1, 9, 700, 17), (3, 3), 1),     # rows split into column segments
])
def test_depthwise_small_and_wide_images(kernels, shape, ksize, strides, dtype):
    c = shape[-1]
    _check(fastconv.depthwise_conv2d, _rand(*shape), _rand(*ksize, c, 1, seed=1), _rand(c, seed=2),
           dtype=dtype, strides=strides, padding="same", activation="relu")


def test_depthwise_3d_contract(kernels, dtype):
    # a kernel with depth (no Keras layer has one, the kernel contract does): padded depth planes
    from fastconv.backends import _cython_direct, reference
    c = _channels(kernels, dtype)
    x = _rand(2, 5, 6, _width(kernels), c).astype(dtype)
    w = _rand(3, 3, 3, c, 2, seed=1).astype(dtype)
    b = _rand(2 * c, seed=2).astype(dtype)
    args = (x, w, b, (2, 1, 1), (1, 1, 1), ((1, 1), (1, 1), (1, 1)), (3, 6, x.shape[3]), "hard_silu")
    assert_close(_cython_direct.depthwise_conv(*args), reference.depthwise_conv(*args))


def test_depthwise_nan_and_empty(kernels):
    x = _rand(1, 6, 20, 4).astype(np.float32)
    x[0, 2, 9, 1] = np.nan
    y = fastconv.depthwise_conv2d(x, np.ones((3, 3, 4, 1), np.float32), padding="same", backend="cython")
    assert np.isnan(y[0, 1:4, 8:11, 1]).all() and np.isfinite(np.delete(y, 1, axis=-1)).all()
    empty = fastconv.depthwise_conv2d(np.ones((0, 5, 5, 3)), np.ones((3, 3, 3, 2)), backend="cython")
    assert empty.shape == (0, 3, 3, 6)


def test_depthwise_input_not_modified(kernels):
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
    # one image: split into bands of rows between threads
    x = _rand(1, 40, 3 * _width(kernels), kernels.block_channels(np.dtype(dtype).itemsize)).astype(dtype)
    w = _rand(3, 3, x.shape[-1], 2, seed=1).astype(dtype)
    _same_for_any_threads(lambda: fastconv.depthwise_conv2d(x, w, padding="same", backend="cython"))
    # few rows, many channel blocks: split into groups of blocks
    x = _rand(1, 7, 7, 40 * kernels.block_channels(np.dtype(dtype).itemsize)).astype(dtype)
    w = _rand(5, 5, x.shape[-1], 1, seed=1).astype(dtype)
    _same_for_any_threads(lambda: fastconv.depthwise_conv2d(x, w, padding="same", backend="cython"))
    x = _rand(2, 31, 33, c).astype(dtype)
    w = _rand(3, 3, c, 2, seed=1).astype(dtype)
    _same_for_any_threads(lambda: fastconv.depthwise_conv2d(x, w, strides=2, padding="same",
                                                            activation="relu6", backend="cython"))


@pytest.mark.parametrize("band, seg, group", [(1, 1, 1), (3, 5, 2), (2, 8, 100)])
def test_depthwise_any_job_split_gives_identical_results(kernels, band, seg, group, dtype):
    # the driver sizes jobs by the thread count; every split must compute the same values
    from fastconv.backends import _cython_direct
    c = _channels(kernels, dtype)
    x = _rand(2, 9, _width(kernels) + 5, c).astype(dtype)[:, None]
    w = _rand(1, 3, 3, c, 2, seed=1).astype(dtype)
    args = (x, w, _rand(2 * c, seed=2).astype(dtype), (1, 1, 1), (1, 1, 1), ((0, 0), (1, 1), (1, 1)),
            x.shape[1:4], "relu")
    expected = _cython_direct.depthwise_conv(*args)
    vl = kernels.block_channels(x.itemsize)
    cp = -(-c // vl) * vl
    wt = np.zeros((9, 2, cp), x.dtype)
    wt[:, :, :c] = w.reshape(9, c, 2).transpose(0, 2, 1)
    bias = np.zeros((2, cp), x.dtype)
    bias[:, :c] = args[2].reshape(c, 2).T
    y = np.empty_like(expected)
    kernels.depthwise(x, wt, bias, y, (1, 1, 1), (1, 1, 1), (0, 1, 1), (1, 3, 3), kernels.ACTIVATIONS["relu"],
                      band, seg, group, 2)
    np.testing.assert_array_equal(y, expected)


def _at_offset(a, offset):
    """A copy of ``a`` whose data starts ``offset`` bytes past a 64-byte boundary."""
    buf = np.empty(a.nbytes + 128, np.uint8)
    start = -buf.ctypes.data % 64 + offset
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("ksize, kw, m", [
    ((3, 3), dict(padding="same"), 1),
    ((3, 3), dict(padding="same", strides=2), 1),
    ((5, 5), dict(padding="same"), 2),
    ((3, 3), dict(padding="same", dilation_rate=2), 1),
    ((3, 3), dict(padding="valid", strides=(1, 2)), 1),
])
@pytest.mark.parametrize("blocks", [2, 3, 16])
def test_depthwise_reads_aligned_input_directly(kernels, ksize, kw, m, blocks, dtype):
    # With x's channel blocks whole and 64-byte aligned, tiles inside the image read x itself
    # (pixels C apart) instead of packed rows; both must give the same bits, and the
    # reference's values.  16 blocks of 64 bytes: pixels 1 KiB apart, always packed.
    c = blocks * kernels.block_channels(np.dtype(dtype).itemsize)
    x = _rand(2, 13, 4 * _width(kernels) + 3, c).astype(dtype)
    w = _rand(*ksize, c, m, seed=1).astype(dtype)
    b = _rand(c * m, seed=2).astype(dtype)
    f = lambda x: fastconv.depthwise_conv2d(x, w, b, activation="relu", backend="cython", **kw)
    aligned = f(_at_offset(x, 0))
    np.testing.assert_array_equal(f(_at_offset(x, np.dtype(dtype).itemsize)), aligned)
    assert_close(aligned, fastconv.depthwise_conv2d(x, w, b, activation="relu", backend="reference", **kw))


def _packed_only(kernels, f):
    """``f()`` with every depthwise input row packed (no direct reads of x)."""
    kernels.set_direct_reads(False)
    try:
        return f()
    finally:
        kernels.set_direct_reads(True)


@pytest.mark.parametrize("ksize, kw", [
    ((3, 3), dict(padding="same")),
    ((5, 5), dict(padding="same")),
    ((3, 3), dict(padding="valid")),
    ((3, 3), dict(padding="same", dilation_rate=2)),
    # left padding of a whole tile of pixels (4 or 8): the first direct tile starts one later
    ((3, 3), dict(padding="same", dilation_rate=(1, 4))),
    ((3, 3), dict(padding="same", dilation_rate=(1, 8))),
    ((3, 3), dict(padding="valid", strides=(2, 1))),
])
@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_depthwise_reads_misaligned_input_directly(kernels, ksize, kw, blocks, dtype):
    # Misaligned x (unit W stride, no multiplier): tiles inside the image read x at aligned
    # addresses some lanes before each channel block, with rotated weights, plus one vector
    # for the lanes a run leaves at its end.  Same bits as packing every row; the reference's
    # values.
    itemsize = np.dtype(dtype).itemsize
    vl = kernels.block_channels(itemsize)
    c = blocks * vl
    p = kernels.tile_pixels()
    b = _rand(c, seed=2).astype(dtype)
    w = _rand(*ksize, c, 1, seed=1).astype(dtype)
    # x from 1 lane to a vector less one past a 64-byte line; widths: whole tiles (the run's
    # last pixel is the row's last direct one), a partial tile, and more than one segment of
    # columns per row (jobs side by side in a row)
    for lanes, width in itertools.product(sorted({1, vl // 2, vl - 1} - {0}), (8 * p, 8 * p + 3, 300)):
        x = _at_offset(_rand(2, 11, width, c).astype(dtype), lanes * itemsize)
        f = lambda: fastconv.depthwise_conv2d(x, w, b, activation="relu6", backend="cython", **kw)  # noqa: E731
        y = f()
        np.testing.assert_array_equal(y, _packed_only(kernels, f))
        assert_close(y, fastconv.depthwise_conv2d(x, w, b, activation="relu6", backend="reference", **kw))


def test_depthwise_misaligned_reads_for_any_threads_and_split(kernels, dtype):
    # the shifted tiles' first and last pixels at every job boundary (bands, segments), and
    # jobs that split the channel blocks (packed then)
    from fastconv.backends import _cython_direct
    itemsize = np.dtype(dtype).itemsize
    vl = kernels.block_channels(itemsize)
    c = 3 * vl
    x = _at_offset(_rand(1, 17, 5 * kernels.tile_pixels() + 1, c).astype(dtype), itemsize)[:, None]
    w = _rand(1, 3, 3, c, 1, seed=1).astype(dtype)
    bias = _rand(1, c, seed=2).astype(dtype)
    expected = _packed_only(kernels, lambda: _cython_direct.depthwise_conv(
        x, w, bias.ravel(), (1, 1, 1), (1, 1, 1), ((0, 0), (1, 1), (1, 1)), x.shape[1:4], "relu"))
    for band, seg, group, threads in [(1, 1, 1, 2), (3, 5, 2, 2), (2, 8, 100, 1), (17, 1000, 1, 2)]:
        y = np.full_like(expected, np.nan)
        kernels.depthwise(x, w.reshape(9, 1, c), bias, y, (1, 1, 1), (1, 1, 1), (0, 1, 1), (1, 3, 3),
                          kernels.ACTIVATIONS["relu"], band, seg, group, threads)
        np.testing.assert_array_equal(y, expected)


def test_depthwise_output_starts_as_far_into_a_vector_as_x(kernels, dtype):
    # where the tiles may read a misaligned x shifted, y is placed so their stores are aligned
    from fastconv.backends._cython import direct
    itemsize = np.dtype(dtype).itemsize
    c = 2 * kernels.block_channels(itemsize)
    w = _rand(3, 3, c, 1, seed=1).astype(dtype)
    for lanes in (0, 1):
        # rows enough for every job to have all channel blocks at any thread count
        x = _at_offset(_rand(1, 40, 4 * kernels.tile_pixels(), c).astype(dtype), lanes * itemsize)
        y = fastconv.depthwise_conv2d(x, w, padding="same", backend="cython")
        assert direct.vector_offset(y) == direct.vector_offset(x)


def test_depthwise_shifted_reads_need_unpadded_weights(kernels, dtype):
    # weights padded past C (a direct caller's choice) are read packed, with the same values
    itemsize = np.dtype(dtype).itemsize
    vl = kernels.block_channels(itemsize)
    c = vl
    x = _at_offset(_rand(1, 7, 4 * kernels.tile_pixels(), c).astype(dtype), itemsize)[:, None]
    w = _rand(9, c, seed=1).astype(dtype)
    wt = np.zeros((9, 1, 2 * vl), dtype)
    wt[:, 0, :c] = w
    bias = np.zeros((1, 2 * vl), dtype)
    bias[0, :c] = _rand(c, seed=2)
    y = np.empty((1, 1, 7, x.shape[3], c), dtype)
    kernels.depthwise(x, wt, bias, y, (1, 1, 1), (1, 1, 1), (0, 1, 1), (1, 3, 3), 0, 7, 1000, 100, 1)
    expected = fastconv.depthwise_conv2d(x[:, 0], w.reshape(3, 3, c, 1), bias[0, :c], padding="same",
                                         backend="reference")
    assert_close(y[:, 0], expected)


def test_isa_levels_are_checked(kernels):
    with pytest.raises(ValueError):
        kernels.set_isa("no-such-level")


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape", [(1, 70, 90, 70), (3, 5, 7, 3), (2, 1, 1, 200), (1, 4000, 1, 1)])
def test_global_pools(kernels, kind, shape, dtype):
    # one image with many pixels (several chunks), channel blocks with a tail, one pixel, one channel
    f = getattr(fastconv, f"global_{kind}_pool2d")
    _check(f, _rand(*shape), dtype=dtype)
    _check(f, _rand(*shape), dtype=dtype, keepdims=True, data_format="channels_first")


def test_global_pools_3d_and_1d(kernels, dtype):
    _check(fastconv.global_avg_pool3d, _rand(2, 6, 20, 20, 65), dtype=dtype)
    _check(fastconv.global_max_pool1d, _rand(3, 5000, 17), dtype=dtype)


def test_global_max_pool_propagates_nan(kernels):
    x = _rand(1, 60, 60, 70).astype(np.float32)
    x[0, 59, 3, 5] = np.nan    # in the last chunk
    x[0, 0, 0, 69] = np.nan    # first pixel, channel in the tail block
    y = fastconv.global_max_pool2d(x, backend="cython")
    assert np.isnan(y[0, [5, 69]]).all() and np.isfinite(np.delete(y[0], [5, 69])).all()
    x[0, 0, 0, 69] = np.inf
    assert fastconv.global_max_pool2d(x, backend="cython")[0, 69] == np.inf


def test_global_pools_threads_give_identical_results(kernels, dtype):
    x = _rand(1, 64, 64, 96).astype(dtype)
    for f in (fastconv.global_avg_pool2d, fastconv.global_max_pool2d):
        _same_for_any_threads(lambda: f(x, backend="cython"))


def test_global_pool_empty_batch(kernels):
    assert fastconv.global_avg_pool2d(np.ones((0, 3, 3, 4)), backend="cython").shape == (0, 4)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("pool, kw", [
    (3, dict(strides=1, padding="same")),          # overlapping windows: separable path
    (3, dict(strides=2, padding="same")),
    ((2, 4), dict(strides=(1, 3), padding="same")),
    (2, dict(padding="valid")),                    # windows side by side: on the fly
    ((3, 2), dict(strides=(2, 3), padding="same")),
    (7, dict(strides=1, padding="same")),          # windows wider than the image
])
def test_window_pools(kernels, kind, pool, kw, dtype):
    # channels: register blocks of 8 (AVX-512) / 4 vectors, single vectors and a scalar tail
    f = getattr(fastconv, f"{kind}_pool2d")
    c = 9 * kernels.block_channels(np.dtype(dtype).itemsize) + 3
    _check(f, _rand(2, 9, 13, c), dtype=dtype, pool_size=pool, **kw)
    _check(f, _rand(1, 5, 6, 3), dtype=dtype, pool_size=pool, **kw)


def test_window_pools_1d_and_3d(kernels, dtype):
    _check(fastconv.avg_pool1d, _rand(3, 50, 20), dtype=dtype, pool_size=3, strides=1, padding="same")
    _check(fastconv.max_pool3d, _rand(1, 5, 6, 7, 40), dtype=dtype, pool_size=(2, 3, 3), strides=(1, 2, 1),
           padding="same")
    _check(fastconv.avg_pool3d, _rand(1, 5, 6, 7, 40), dtype=dtype, pool_size=2)


@pytest.mark.parametrize("strides", [1, 2])
def test_max_pool_propagates_nan(kernels, strides):
    c = 3 * kernels.block_channels(4) + 2
    x = _rand(1, 9, 10, c).astype(np.float32)
    x[0, 4, 5, 3] = np.nan
    x[0, 0, 0, c - 1] = np.nan          # scalar tail channel
    x[0, 8, 9, 0] = -np.inf
    y = fastconv.max_pool2d(x, 3, strides, padding="same", backend="cython")
    expected = fastconv.max_pool2d(x, 3, strides, padding="same", backend="reference")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert np.isnan(expected).sum() > 1
    np.testing.assert_array_equal(y[~np.isnan(y)], expected[~np.isnan(expected)])


def test_window_pools_threads_give_identical_results(kernels, dtype):
    x = _rand(2, 30, 31, 70).astype(dtype)
    for f in (fastconv.avg_pool2d, fastconv.max_pool2d):
        _same_for_any_threads(lambda: f(x, 3, 1, padding="same", backend="cython"))
        _same_for_any_threads(lambda: f(x, 2, backend="cython"))


def test_pools_input_not_modified(kernels):
    x = _rand(1, 9, 21, 40).astype(np.float32)
    x0 = x.copy()
    for f in (fastconv.avg_pool2d, fastconv.max_pool2d):
        f(x, 3, 1, padding="same", backend="cython")
    fastconv.global_max_pool2d(x, backend="cython")
    fastconv.global_avg_pool2d(x, backend="cython")
    np.testing.assert_array_equal(x, x0)


def test_describe(kernels):
    from fastconv.backends import _cython_direct
    x = np.zeros((1, 1, 56, 56, 32), np.float32)
    w = np.zeros((1, 3, 3, 32, 1), np.float32)
    dw = _cython_direct.describe("depthwise_conv", x, w, None, (1, 1, 1), (1, 1, 1), ((0, 0), (1, 1), (1, 1)),
                                 (1, 56, 56), None)
    assert "3-wide stride-1" in dw and kernels.isa() in dw
    dw = _cython_direct.describe("depthwise_conv", x, w, None, (1, 1, 1), (1, 2, 2), ((0, 0), (2, 2), (2, 2)),
                                 (1, 56, 56), None)
    assert "generic" in dw
    pads = ((0, 0), (1, 1), (1, 1))
    assert "shared" in _cython_direct.describe("avg_pool", x, (1, 3, 3), (1, 1, 1), pads, (1, 56, 56))
    assert "on the fly" in _cython_direct.describe("max_pool", x, (1, 2, 2), (1, 2, 2), pads, (1, 28, 28))
    for op in ("global_max_pool", "global_avg_pool"):
        assert op in _cython_direct.describe(op, x)
    with pytest.raises(ValueError):
        _cython_direct.describe("conv", x)
