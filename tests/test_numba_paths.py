"""The numba backend's algorithm paths, each forced and compared with the reference.

The fixture and property tests use few channels; these cases reach the paths that
only larger layers take (shifted GEMM, per-group GEMM, multi-tile im2col, the
3x3 depthwise fast path), in float32 and float64.
"""

import numpy as np
import pytest

import fastconv
from conftest import assert_close

pytestmark = pytest.mark.skipif("numba" not in fastconv.available_backends(), reason="numba backend unavailable")


@pytest.fixture
def nb():
    from fastconv.backends import numba
    return numba


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _check(f, *args, dtype=np.float32, **kw):
    args = [a.astype(dtype) for a in args]
    assert_close(f(*args, backend="numba", **kw), f(*args, backend="reference", **kw))


@pytest.mark.parametrize("kw", [
    dict(padding="same"), dict(padding="valid"), dict(padding="same", dilation_rate=2),
    dict(padding="same", activation="relu"), dict(padding="valid", dilation_rate=(1, 3)),
])
def test_shifted_gemm_2d(kw, dtype):
    # 20 input channels: the shifted-GEMM path (stride 1, >= 16 channels), batch 2
    _check(fastconv.conv2d, _rand(2, 9, 11, 20), _rand(3, 4, 20, 7), _rand(7), dtype=dtype, **kw)


@pytest.mark.parametrize("padding", ["same", "valid", "causal"])
def test_shifted_gemm_1d(padding, dtype):
    _check(fastconv.conv1d, _rand(3, 40, 16), _rand(5, 16, 8), dtype=dtype, padding=padding, dilation_rate=2)


def test_shifted_gemm_3d(dtype):
    _check(fastconv.conv3d, _rand(2, 6, 7, 8, 16), _rand(3, 3, 2, 16, 5), dtype=dtype, padding="same")


def test_small_image_uses_im2col_not_shift(dtype):
    # 3x3 image: every pixel is on the border, so the im2col path runs
    _check(fastconv.conv2d, _rand(1, 3, 3, 32), _rand(3, 3, 32, 4), dtype=dtype, padding="same")


def test_pointwise_gemm(dtype):
    _check(fastconv.conv2d, _rand(2, 5, 6, 24), _rand(1, 1, 24, 10), _rand(10), dtype=dtype,
           activation="gelu")


@pytest.mark.parametrize("m, k, f", [(1, 1, 1), (6, 16, 64), (7, 33, 80), (13, 24, 128), (40, 5, 200)])
def test_matmul_tiles(m, k, f, dtype):
    # the register-tiled product of 1x1 convolutions and the fused separable one: tiles of 6
    # rows x 4 vectors, tail rows (m % 6) and tail columns (whole and masked vectors), against
    # a plain loop over the terms (which rounds each product, where the kernel fuses them)
    from fastconv.backends import _numba_kernels as K
    rng = np.random.default_rng(m * 1000 + f)
    a, w = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, f)).astype(dtype)
    bias = rng.standard_normal(f).astype(dtype)
    y = np.full((m, f), np.nan, dtype)
    K.matmul_tiles(a, w, y, bias, False)
    want = np.zeros((m, f), dtype)
    for j in range(k):
        want = (a[:, j:j + 1] * w[j]).astype(dtype) + want
    np.testing.assert_allclose(y, want, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-6)
    K.matmul_tiles(a, w, y, bias, True)     # the accumulators start from the bias
    np.testing.assert_allclose(y, want + bias, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-6)


def test_pointwise_gemm_column_split(nb, monkeypatch, dtype):
    # filters that are not whole tile blocks (72: neither 64 float32 nor 32 float64 lanes) take
    # BLAS, and with too few rows for every thread, on column blocks
    monkeypatch.setattr(nb, "_MIN_TASK_ROWS", 1 << 20)
    monkeypatch.setattr(nb.numba, "get_num_threads", lambda: 2)
    from fastconv.backends import _numba_kernels as K
    called = []
    real = K.gemm_rows
    monkeypatch.setattr(K, "gemm_rows", lambda *a: (called.append(1), real(*a))[1])
    _check(fastconv.conv2d, _rand(2, 5, 6, 24), _rand(1, 1, 24, 72), _rand(72), dtype=dtype, activation="relu")
    assert called


@pytest.mark.parametrize("tile_bytes", [64, 4096, 1 << 30])
def test_im2col_tiles(nb, monkeypatch, tile_bytes, dtype):
    monkeypatch.setattr(nb, "_TILE_BYTES", tile_bytes)
    # strided (im2col, channels-last packing) and few-channel (transposed packing: the
    # phases of a transposed convolution with 3 input channels)
    _check(fastconv.conv2d, _rand(2, 13, 11, 12), _rand(3, 3, 12, 6), _rand(6), dtype=dtype, strides=2,
           padding="same", activation="silu")
    _check(fastconv.conv2d_transpose, _rand(2, 7, 6, 3), _rand(3, 3, 6, 3), dtype=dtype, strides=2, padding="same")
    _check(fastconv.conv3d_transpose, _rand(2, 3, 4, 3, 1), _rand(3, 3, 3, 4, 1), dtype=dtype)


@pytest.mark.parametrize("c, strides, f", [(1, 1, 16), (3, 2, 32), (3, 1, 40), (2, 1, 20), (5, 2, 5),
                                           (1, 3, 17)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_few_channel_direct(nb, monkeypatch, c, strides, f, padding, dtype):
    # < 8 input channels: the direct kernel vectorised along output channels; pixel pitches
    # 1, 3, 6 (constant-pitch tiles) and 2, 10, 3 (generic); 1, 2 and 3 vectors of output
    # channels with masked tails; tiles of 8 and 4 pixels, rows narrower than a tile
    monkeypatch.setattr(nb, "_DIRECT_PARALLEL_MIN_WORK", 0)
    _check(fastconv.conv2d, _rand(2, 11, 23, c), _rand(3, 3, c, f), _rand(f), dtype=dtype, strides=strides,
           padding=padding, activation="relu6")
    _check(fastconv.conv2d, _rand(1, 6, 5, c), _rand(2, 3, c, f), dtype=dtype, padding=padding, dilation_rate=(1, 2))
    _check(fastconv.conv1d, _rand(2, 30, c), _rand(4, c, f), _rand(f), dtype=dtype, padding="causal")
    _check(fastconv.conv3d, _rand(1, 5, 6, 19, c), _rand(3, 2, 3, c, f), dtype=dtype, strides=(1, 1, strides),
           padding=padding)


def test_grouped_gemm_and_direct(dtype):
    _check(fastconv.conv2d, _rand(1, 7, 8, 32), _rand(3, 3, 16, 8), _rand(8), dtype=dtype, groups=2,
           padding="same", activation="relu")
    # 8 groups of 4 input channels and 2 or 1 outputs each (not square, so not the rotation
    # kernel): merged 4 at a time into block-diagonal dense convolutions
    _check(fastconv.conv2d, _rand(1, 7, 8, 32), _rand(3, 3, 4, 16), dtype=dtype, groups=8, strides=2)
    _check(fastconv.conv2d, _rand(2, 9, 8, 32), _rand(3, 3, 4, 8), _rand(8), dtype=dtype, groups=8,
           padding="same", activation="relu")
    # 3 groups of 4 can't be merged by 4: the direct kernel
    _check(fastconv.conv2d, _rand(1, 7, 8, 12), _rand(3, 3, 4, 6), dtype=dtype, groups=3, padding="same")
    # groups of 1 input and 1 output channel (a depthwise convolution as a grouped one)
    _check(fastconv.conv2d, _rand(1, 7, 8, 6), _rand(3, 3, 1, 6), _rand(6), dtype=dtype, groups=6, padding="same")


@pytest.mark.parametrize("g", [2, 4, 8])
@pytest.mark.parametrize("kw", [dict(padding="same"), dict(padding="valid", strides=(1, 2)),
                                dict(padding="same", dilation_rate=(2, 3)), dict(padding=((2, 0), (3, 1)))])
def test_grouped_rotation_kernel(nb, monkeypatch, g, kw, dtype):
    # square groups of 2, 4, 8 channels: the rotation kernel; 9 groups of 4 = 36 channels
    # (a masked tail vector), rows narrower than a tile, windows wholly in the padding
    monkeypatch.setattr(nb, "_DIRECT_PARALLEL_MIN_WORK", 0)
    c = 9 * g
    _check(fastconv.conv2d, _rand(2, 7, 13, c), _rand(3, 3, g, c), _rand(c), dtype=dtype, groups=9,
           activation="elu", **kw)
    _check(fastconv.conv2d, _rand(1, 5, 6, c), _rand(2, 4, g, c), dtype=dtype, groups=9, **kw)
    _check(fastconv.conv1d, _rand(2, 17, 2 * g), _rand(3, g, 2 * g), dtype=dtype, groups=2, padding="causal")
    _check(fastconv.conv3d, _rand(1, 4, 5, 9, 4 * g), _rand(2, 3, 3, g, 4 * g), _rand(4 * g), dtype=dtype,
           groups=4, padding="same")


@pytest.mark.parametrize("kw", [dict(padding="same"), dict(padding="valid", strides=2),
                                dict(padding="same", dilation_rate=2), dict(padding="same", strides=2)])
def test_depthwise_3x3_fast_path(kw, dtype):
    _check(fastconv.depthwise_conv2d, _rand(2, 9, 10, 24), _rand(3, 3, 24, 1), _rand(24), dtype=dtype,
           activation="relu6", **kw)


@pytest.mark.parametrize("shape", [(2, 9, 10, 24), (1, 7, 12, 37), (1, 5, 9, 300), (1, 6, 5, 16), (1, 4, 41, 37)])
@pytest.mark.parametrize("kw", [
    dict(padding="same"), dict(padding="valid"), dict(padding="same", strides=2),
    dict(padding="same", dilation_rate=(1, 2)), dict(padding="same", dilation_rate=(2, 1)),
    dict(padding="same", strides=(2, 1)), dict(padding=((3, 0), (0, 3))),
])
def test_depthwise_simd_tiles(nb, monkeypatch, shape, kw, dtype):
    # the register-tiled kernel: 3x3 unit-stride and stride-2 tiles of 8 and 4 pixels (41
    # columns), generic tiles (strided or dilated along W), border pixels, channel tails (37 = 2 x 16 + 5), rows cut into chunks
    # (300 channels), windows wholly in the padding (explicit 3-pixel padding); threads on
    monkeypatch.setattr(nb, "_DIRECT_PARALLEL_MIN_WORK", 0)
    x = _rand(*shape)
    _check(fastconv.depthwise_conv2d, x, _rand(3, 3, shape[-1], 1), _rand(shape[-1]), dtype=dtype,
           activation="relu", **kw)
    _check(fastconv.depthwise_conv2d, x, _rand(2, 5, shape[-1], 1), dtype=dtype, **kw)


def test_depthwise_1d_and_multiplier(dtype):
    _check(fastconv.depthwise_conv1d, _rand(3, 40, 21), _rand(5, 21, 1), _rand(21), dtype=dtype, padding=((8, 0),),
           dilation_rate=2, activation="tanh")
    # channel multipliers: input channels repeated, then the multiplier-1 SIMD kernel (10, 21
    # and 48 channels: masked tails, 3x3 tiles of 8 and 4, strided generic tiles)
    _check(fastconv.depthwise_conv2d, _rand(2, 7, 8, 5), _rand(3, 3, 5, 2), _rand(10), dtype=dtype, padding="same")
    _check(fastconv.depthwise_conv2d, _rand(1, 6, 21, 7), _rand(3, 3, 7, 3), _rand(21), dtype=dtype, padding="same",
           activation="relu")
    _check(fastconv.depthwise_conv2d, _rand(2, 9, 13, 12), _rand(3, 2, 12, 4), dtype=dtype, strides=(1, 2),
           padding="same")


def test_transpose_batches(dtype):
    _check(fastconv.conv2d_transpose, _rand(3, 5, 4, 16), _rand(4, 4, 8, 16), _rand(8), dtype=dtype,
           strides=2, padding="same", activation="tanh")


def test_scratch_buffers_are_reused_safely(nb):
    # two different convolutions in a row share the scratch buffer; results stay right
    a = fastconv.conv2d(_rand(1, 9, 9, 3).astype(np.float32), _rand(3, 3, 3, 4).astype(np.float32),
                        strides=2, backend="numba")
    b = fastconv.conv2d(_rand(1, 9, 9, 12).astype(np.float32), _rand(3, 3, 12, 4).astype(np.float32),
                        strides=2, backend="numba")
    a2 = fastconv.conv2d(_rand(1, 9, 9, 3).astype(np.float32), _rand(3, 3, 3, 4).astype(np.float32),
                         strides=2, backend="numba")
    np.testing.assert_array_equal(a, a2)
    assert b.shape == (1, 4, 4, 4)


@pytest.mark.parametrize("shape", [(1, 3, 4, 40), (2, 2, 2, 24)])
def test_column_split_for_few_pixels(nb, monkeypatch, shape, dtype):
    # few pixels, many output channels: tasks split the output channels across threads
    monkeypatch.setattr(nb, "_PARALLEL_MIN_WORK", 0)
    c = shape[-1]
    _check(fastconv.conv2d, _rand(*shape), _rand(1, 1, c, 96), _rand(96), dtype=dtype, activation="relu")
    _check(fastconv.conv2d, _rand(*shape), _rand(3, 3, c, 80), _rand(80), dtype=dtype, padding="same")
    _check(fastconv.conv2d, _rand(*shape), _rand(2, 2, c, 64), dtype=dtype, strides=2, padding="same")


@pytest.mark.parametrize("pads", [((1, 2), (0, 1)), ((0, 0), (3, 0)), ((2, 2), (2, 2))])
def test_explicit_padding_equals_zero_padding_then_valid(pads, dtype):
    x, k, kd = _rand(2, 7, 9, 16), _rand(3, 3, 16, 5), _rand(3, 3, 16, 1)
    padded = np.pad(x, ((0, 0),) + pads + ((0, 0),))
    for backend in fastconv.available_backends():
        if "conv" not in fastconv.backends.backend_ops(backend):
            continue
        assert_close(fastconv.conv2d(x.astype(dtype), k.astype(dtype), padding=pads, backend=backend),
                     fastconv.conv2d(padded, k, backend="reference"))
        assert_close(fastconv.depthwise_conv2d(x.astype(dtype), kd.astype(dtype), padding=pads, strides=2,
                                               backend=backend),
                     fastconv.depthwise_conv2d(padded, kd, strides=2, backend="reference"))


@pytest.mark.parametrize("shape", [(2, 37, 41, 70), (3, 5, 7, 9), (1, 130, 16)])
def test_global_pools_simd(nb, monkeypatch, shape, dtype):
    # positions cut into chunks (1517 positions: 16 chunks; 35: one), 4-vector channel
    # blocks, single vectors and masked tails (70 channels); NaN and inf propagate through
    # max like the reference; the result doesn't depend on the thread count
    x = _rand(*shape).astype(dtype)
    f_max = getattr(fastconv, f"global_max_pool{x.ndim - 2}d")
    f_avg = getattr(fastconv, f"global_avg_pool{x.ndim - 2}d")
    _check(f_max, x, dtype=dtype)
    _check(f_avg, x, dtype=dtype)
    x.reshape(-1)[7] = np.inf
    x[0].reshape(-1)[-1] = np.nan
    x[-1].reshape(-1)[x.shape[-1] + 3] = -np.inf
    got = f_max(x, backend="numba")
    np.testing.assert_array_equal(got, f_max(x, backend="reference"))
    assert np.isnan(got[0, -1]) and np.isnan(got).sum() == 1
    results = []
    for min_work in (0, 1 << 60):  # two threads (where there are two), then one
        monkeypatch.setattr(nb, "_POOL_PARALLEL_MIN", min_work)
        results.append((f_max(x, backend="numba"), f_avg(x, backend="numba")))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# (op, args, kwargs, the path numba must take, the kernels that path calls)
_PATH_CASES = [
    ("conv2d", ((2, 12, 12, 24), (1, 1, 24, 64)), {}, "pointwise_gemm", {"tiles_rows"}),
    # filters that are not whole register-tile blocks (64 float32 channels) take BLAS
    ("conv2d", ((2, 5, 6, 24), (1, 1, 24, 10)), {}, "pointwise_gemm", {"gemm_rows"}),
    ("conv2d", ((2, 20, 22, 20), (3, 4, 20, 64)), dict(padding="same"), "shifted_gemm",
     {"shifted_tiles", "pixels_conv"}),
    ("conv2d", ((2, 20, 22, 20), (3, 4, 20, 7)), dict(padding="same"), "shifted_gemm",
     {"shifted_taps", "pixels_conv"}),
    ("conv2d", ((1, 3, 3, 32), (3, 3, 32, 4)), dict(padding="same"), "im2col", {"im2col_conv"}),
    ("conv2d", ((2, 13, 11, 12), (3, 3, 12, 6)), dict(strides=2), "im2col", {"im2col_conv"}),
    ("conv2d", ((2, 11, 23, 3), (3, 3, 3, 32)), dict(strides=2), "few_channel_direct", {"few_channel_conv"}),
    ("conv2d", ((1, 7, 8, 36), (3, 3, 4, 36)), dict(groups=9), "grouped_rot", {"grouped_rot"}),
    ("conv2d", ((1, 7, 8, 12), (3, 3, 4, 6)), dict(groups=3), "grouped_direct", {"grouped_direct"}),
    ("conv2d", ((1, 7, 8, 32), (3, 3, 4, 16)), dict(groups=8, strides=2), "grouped_merged", {"im2col_conv"}),
    ("conv2d", ((1, 17, 18, 32), (3, 3, 16, 8)), dict(groups=2, padding="same"), "grouped_gemm",
     {"shifted_taps", "pixels_conv"}),
    ("conv2d", ((1, 7, 8, 6), (3, 3, 1, 6)), dict(groups=6), "grouped_depthwise", {"depthwise"}),
    ("depthwise_conv2d", ((2, 9, 10, 24), (3, 3, 24, 1)), dict(padding="same"), "depthwise_3x3", {"depthwise"}),
    ("depthwise_conv2d", ((2, 9, 10, 24), (3, 3, 24, 1)), dict(strides=2), "depthwise_3x3_s2", {"depthwise"}),
    ("depthwise_conv2d", ((2, 9, 10, 24), (3, 3, 24, 1)), dict(strides=3), "depthwise_tiles", {"depthwise"}),
    ("depthwise_conv2d", ((2, 9, 10, 24), (2, 5, 24, 1)), {}, "depthwise_tiles", {"depthwise"}),
    ("depthwise_conv2d", ((2, 7, 8, 5), (3, 3, 5, 2)), {}, "depthwise_multiplier", {"depthwise"}),
    ("conv2d_transpose", ((2, 7, 6, 3), (3, 3, 6, 3)), dict(strides=2, padding="same"), "transpose_col2im",
     {"transpose_col2im"}),
    # per image over _COL2IM_BYTES (2.4 MB of tap products): by phases
    ("conv2d_transpose", ((1, 64, 64, 3), (3, 3, 16, 3)), dict(strides=2, padding="same"), "transpose_phases",
     {"gemm_rows", "im2col_t_conv"}),
    # per image over _COL2IM_MAX_WORK (9.4 M multiply-adds): by phases
    ("conv2d_transpose", ((1, 32, 32, 32), (3, 3, 32, 32)), dict(strides=2, padding="same"), "transpose_phases",
     {"gemm_rows", "shifted_taps", "pixels_conv"}),
    ("separable_conv2d", ((2, 9, 10, 24), (3, 3, 24, 1), (1, 1, 24, 16)), dict(padding="same"), "separable_fused",
     {"separable"}),
    ("separable_conv2d", ((2, 9, 10, 8), (3, 3, 8, 2), (1, 1, 16, 16)), dict(padding="same"),
     "separable_two_passes", {"depthwise", "gemm_rows"}),
    ("max_pool2d", ((2, 9, 10, 24),), {}, "pool_simd", {"max_pool"}),
    ("avg_pool2d", ((2, 9, 10, 24),), dict(pool_size=3, strides=1, padding="same"), "pool_rows3",
     {"avg_pool_rows3"}),
    ("max_pool1d", ((2, 9, 24),), dict(pool_size=3, strides=1), "pool_rows3", {"max_pool_rows3"}),
    ("avg_pool2d", ((2, 9, 10, 24),), dict(pool_size=3, strides=2), "pool_simd", {"avg_pool"}),
    ("global_max_pool2d", ((2, 9, 10, 24),), {}, "global_chunks", {"global_max_pool"}),
    ("global_avg_pool1d", ((2, 90, 24),), {}, "global_chunks", {"global_sum_pool"}),
]


@pytest.mark.parametrize("op, shapes, kw, path, kernels", _PATH_CASES,
                         ids=[f"{c[0]}-{c[3]}" for c in _PATH_CASES])
def test_algorithm_names_the_path_taken(nb, monkeypatch, op, shapes, kw, path, kernels):
    # algorithm() (through fastconv.explain) names the path, and the dispatch calls exactly
    # that path's kernels: both follow the same decision functions
    from fastconv.backends import _numba_kernels as K
    args = [_rand(*s).astype(np.float32) for s in shapes]
    (call,) = fastconv.explain(op, *args, backend="numba", **kw).calls
    assert nb._PATHS[path].split("{")[0] in call.algorithm, call.algorithm
    names = ["gemm_rows", "tiles_rows", "shifted_taps", "shifted_tiles", "pixels_conv", "im2col_conv", "im2col_t_conv", "few_channel_conv", "grouped_rot",
             "grouped_direct", "depthwise", "max_pool", "avg_pool", "max_pool_rows3",
             "avg_pool_rows3", "global_max_pool",
             "global_sum_pool", "transpose_col2im", "separable"]
    called = set()
    for name in names:
        real = getattr(K, name)
        monkeypatch.setattr(K, name, lambda *a, _n=name, _f=real: (called.add(_n), _f(*a))[1])
    y = getattr(fastconv, op)(*args, backend="numba", **kw)
    assert_close(y, getattr(fastconv, op)(*args, backend="reference", **kw))
    assert called == kernels, (called, call.algorithm)
    # the GEMM formulations inside (of the groups, of the phases) are named too
    dense = {"gemm_rows": "pointwise_gemm", "tiles_rows": "pointwise_gemm", "shifted_tiles": "shifted_gemm",
             "shifted_taps": "shifted_gemm", "im2col_conv": "im2col",
             "im2col_t_conv": "im2col_t"}
    for name in called & dense.keys():
        assert nb._PATHS[dense[name]] in call.algorithm, (name, call.algorithm)


@pytest.mark.parametrize("seed", range(20))
def test_border_count_matches_border_pixels(nb, seed):
    # the path decision counts border pixels without building them; the shifted GEMM
    # recomputes exactly the pixels _border_pixels lists
    rng = np.random.default_rng(seed)
    in_shape = tuple(int(v) for v in rng.integers(1, 12, 3))
    ksize = tuple(int(v) for v in rng.integers(1, 5, 3))
    dilation = tuple(int(v) for v in rng.integers(1, 3, 3))
    before = tuple(int(v) for v in rng.integers(0, 4, 3))
    out_shape = tuple(max(1, i + b + int(a) - (k - 1) * d) for i, b, a, k, d in
                      zip(in_shape, before, rng.integers(0, 4, 3), ksize, dilation))
    n = int(rng.integers(1, 3))
    want = nb._border_pixels(out_shape, in_shape, ksize, dilation, before, n).size
    assert nb._border_count(n, in_shape, ksize, dilation, before, out_shape) == want


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape, kw", [
    ((2, 9, 10, 24), dict(pool_size=3, strides=1, padding="same")),
    ((1, 7, 5, 37), dict(pool_size=(2, 3), strides=(2, 1), padding="same")),
    ((1, 6, 4, 20), dict(pool_size=3, strides=1)),
    ((2, 2, 3, 17), dict(pool_size=(5, 3), strides=1, padding="same")),
    ((3, 40, 16), dict(pool_size=3, strides=1, padding="same")),
    ((1, 4, 5, 6, 19), dict(pool_size=(2, 3, 3), strides=(1, 2, 1), padding="same")),
])
def test_pool_rows3(nb, monkeypatch, kind, shape, kw, dtype):
    # windows 3 wide at stride 1 along W: column reductions slid along the row (both edges
    # in the padding, rows narrower than the window, a masked channel tail); NaN propagates
    _check_pool(nb, monkeypatch, kind, shape, kw, dtype, np.inf)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape, kw", [
    ((2, 9, 10, 24), dict(pool_size=2)),
    ((1, 7, 5, 37), dict(pool_size=(2, 3), strides=2, padding="same")),
    ((2, 2, 3, 17), dict(pool_size=(5, 4), strides=(1, 3), padding="same")),
    ((3, 41, 16), dict(pool_size=4, strides=3, padding="same")),
    ((1, 4, 5, 6, 19), dict(pool_size=2, strides=(1, 2, 2), padding="same")),
])
def test_pool_simd(nb, monkeypatch, kind, shape, kw, dtype):
    # the generic SIMD pool: windows cut by the padding, masked channel tails, 1-D to 3-D;
    # NaN propagates, -inf stays -inf
    _check_pool(nb, monkeypatch, kind, shape, kw, dtype, -np.inf)


def _check_pool(nb, monkeypatch, kind, shape, kw, dtype, last):
    """A window pool on threads against the reference, then with two NaNs and ``last`` as
    the final element: NaN where the reference has NaN, and a max equal to it everywhere."""
    monkeypatch.setattr(nb, "_POOL_PARALLEL_MIN", 0)
    f = getattr(fastconv, f"{kind}_pool{len(shape) - 2}d")
    x = _rand(*shape)
    _check(f, x, dtype=dtype, **kw)
    x = x.astype(dtype)
    x.reshape(-1)[[3, 50]] = np.nan
    x.reshape(-1)[-1] = last
    got, want = f(x, backend="numba", **kw), f(x, backend="reference", **kw)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    if kind == "max":
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op, x_shape, w_shape, kwargs", [
    ("conv1d", (4, 64, 64), (3, 64, 64), dict(padding="same")),        # 254 shifted rows: few for 2 threads
    ("conv2d", (1, 9, 9, 64), (3, 3, 64, 64), dict(padding="same")),
    ("conv2d", (1, 10, 10, 32), (1, 1, 32, 64), {}),                     # 100 rows of a 1x1
    ("conv2d", (1, 10, 10, 32), (1, 1, 32, 48), {}),                     # BLAS: filters not whole blocks
])
def test_few_rows_do_not_depend_on_threads_or_batch(op, x_shape, w_shape, kwargs):
    # the register tiles or BLAS are chosen by the shapes, never by the thread count, and an
    # image gives the same bits alone or in a batch
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w, b = rng.standard_normal(w_shape).astype(np.float32), rng.standard_normal(w_shape[-1]).astype(np.float32)
    f = getattr(fastconv, op)
    results = []
    for n in (1, 2):
        fastconv.set_num_threads(n)
        try:
            results.append(f(x, w, b, backend="numba", **kwargs))
            results.append(np.concatenate([f(x[i:i + 1], w, b, backend="numba", **kwargs)
                                           for i in range(x.shape[0])]))
        finally:
            fastconv.set_num_threads(None)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("op", ["depthwise_conv2d", "separable_conv2d"])
def test_depthwise_row_pairs_give_the_bits_of_single_rows(op):
    # 3x3 unit-stride rows are computed two at a time inside the image (2-row tiles) and
    # alone at its edges; a row must get the same bits whichever it is: cropping one input
    # row moves every output row from one position of its pair to the other (or to alone)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 12, 21, 24)).astype(np.float32)
    dk = rng.standard_normal((3, 3, 24, 1)).astype(np.float32)
    extra = (rng.standard_normal((1, 1, 24, 64)).astype(np.float32),) if op == "separable_conv2d" else ()
    f = lambda x: getattr(fastconv, op)(x, dk, *extra, backend="numba", activation="relu")  # noqa: E731
    full = f(x)
    for n in (1, 2):
        fastconv.set_num_threads(n)
        try:
            np.testing.assert_array_equal(f(x[:, 1:]), full[:, 1:])
            np.testing.assert_array_equal(f(x[:, 2:]), full[:, 2:])
        finally:
            fastconv.set_num_threads(None)
    assert_close(full, getattr(fastconv, op)(x, dk, *extra, backend="reference", activation="relu"))
