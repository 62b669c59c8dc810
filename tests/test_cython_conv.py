"""The Cython backend's convolutions: every algorithm path against the reference backend.

The fixture and property tests run ``backend="cython"`` on small Keras cases; here each
path of :func:`fastconv.backends._cython_conv.choose_algorithm` is forced with shapes
that select it (checked), in float32 and float64, with fused epilogues, grouped and
transposed variants, with 1 and 2 threads giving identical results, and with a batch
giving, bit for bit, the results of its images computed in uneven sub-batches.
"""

import numpy as np
import pytest

import fastconv
from conftest import assert_close
from fastconv import activations
from fastconv.backends import _cython_conv as C
from fastconv.backends import reference as R
from fastconv.backends._cython import conv as K

# grouped layers whose vector blocks span several groups run the permuting direct kernel
# where AVX-512 makes permutations cheap, else im2col GEMM (test_direct_grouped_forced
# runs the kernel on any CPU)
PERMUTING = "direct_grouped" if K.HAS_AVX512 else "im2col_gemm"


def _out(x_shape, w_shape, strides, dilation, pads):
    return tuple((i + lo + hi - (k - 1) * d - 1) // s + 1
                 for i, k, s, d, (lo, hi) in zip(x_shape[1:4], w_shape[:3], strides, dilation, pads))


def _arrays(x_shape, w_shape, dtype, seed=0, filters=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[:-1]))).astype(dtype)
    b = rng.standard_normal(w_shape[-1] if filters is None else filters).astype(dtype)
    return x, w, b


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)


P0, P1 = (0, 0), (1, 1)
# (id, x (N, D, H, W, C), w (KD, KH, KW, Cg, F), strides, dilation, pads, groups, expected algorithm)
FORWARD = [
    ("1x1", (2, 1, 15, 17, 48), (1, 1, 1, 48, 40), (1, 1, 1), (1, 1, 1), (P0, P0, P0), 1, "direct_tiled"),
    ("1x1-wide", (1, 1, 5, 6, 2100), (1, 1, 1, 2100, 24), (1, 1, 1), (1, 1, 1), (P0, P0, P0), 1, "gemm_1x1"),
    ("1x1-grouped", (2, 1, 15, 17, 48), (1, 1, 1, 12, 40), (1, 1, 1), (1, 1, 1), (P0, P0, P0), 4, "gemm_1x1"),
    ("1x1-strided", (2, 1, 15, 17, 32), (1, 1, 1, 32, 24), (1, 2, 2), (1, 1, 1), (P0, P0, P0), 1, "direct_tiled"),
    ("3x3-same", (2, 1, 20, 18, 32), (1, 3, 3, 32, 48), (1, 1, 1), (1, 1, 1), (P0, P1, P1), 1, "direct_tiled"),
    ("3x3-f80", (1, 1, 13, 29, 24), (1, 3, 3, 24, 80), (1, 1, 1), (1, 1, 1), (P0, P1, P1), 1, "direct_tiled"),
    ("3x3-f128-narrow", (2, 1, 9, 5, 16), (1, 3, 3, 16, 128), (1, 1, 1), (1, 1, 1), (P0, P1, P1), 1,
     "direct_tiled"),
    ("3x3-stride2", (1, 1, 23, 21, 16), (1, 3, 3, 16, 20), (1, 2, 2), (1, 1, 1), (P0, (0, 1), (1, 1)), 1,
     "direct_tiled"),
    ("3x3-dilated", (1, 1, 20, 20, 16), (1, 3, 3, 16, 16), (1, 1, 1), (1, 2, 3), (P0, (2, 2), (3, 3)), 1,
     "direct_tiled"),
    ("3x3-deep", (1, 1, 6, 7, 240), (1, 3, 3, 240, 20), (1, 1, 1), (1, 1, 1), (P0, P1, P1), 1, "im2col_gemm"),
    ("3x3-deep-stride2", (1, 1, 9, 8, 240), (1, 3, 3, 240, 70), (1, 2, 2), (1, 1, 1), (P0, (0, 1), P1), 1,
     "im2col_gemm"),
    ("conv1d-k5-dil2", (3, 1, 1, 200, 24), (1, 1, 5, 24, 32), (1, 1, 1), (1, 1, 2), (P0, P0, (4, 4)), 1,
     "direct_tiled"),
    ("conv3d", (2, 7, 8, 9, 8), (3, 2, 3, 8, 12), (2, 1, 1), (1, 1, 1), ((1, 1), (0, 1), P1), 1, "direct_tiled"),
    # borders wider than a micro-tile: the border strips grow to hold every pixel whose
    # window crosses the border (12 on the left here; 9 on each side below)
    ("causal-dilated-wide-border", (2, 1, 1, 40, 17), (1, 1, 5, 17, 64), (1, 1, 1), (1, 1, 3), (P0, P0, (12, 0)),
     1, "direct_tiled"),
    ("same-dilated-wide-border", (1, 1, 23, 31, 16), (1, 3, 7, 16, 80), (1, 1, 1), (1, 1, 3), (P0, P1, (9, 9)),
     1, "direct_tiled"),
    ("few-wide-border", (1, 1, 23, 23, 1), (1, 7, 7, 1, 128), (1, 1, 1), (1, 3, 3), (P0, (9, 9), (9, 9)), 1,
     "direct_few_channels"),
    ("uneven-pads", (1, 1, 11, 13, 16), (1, 4, 2, 16, 8), (1, 3, 1), (1, 1, 1), (P0, (3, 0), (0, 2)), 1,
     "direct_tiled"),
    ("grouped-wide", (2, 1, 14, 14, 64), (1, 3, 3, 16, 32), (1, 1, 1), (1, 1, 1), (P0, P1, P1), 4, PERMUTING),
    ("grouped-tiny", (1, 1, 16, 16, 64), (1, 3, 3, 2, 64), (1, 1, 1), (1, 1, 1), (P0, P1, P1), 32, PERMUTING),
    # float32: a block spans 3 groups of 8 inputs, more than the 24 channels hold in vectors
    # of 16, so GEMM; float64 (vectors of 8): direct_grouped
    ("grouped-strided", (1, 1, 15, 15, 24), (1, 3, 3, 8, 12), (1, 2, 2), (1, 1, 1), (P0, P1, P1), 3,
     "im2col_gemm"),
    ("grouped-resnext", (1, 1, 13, 20, 128), (1, 3, 3, 4, 128), (1, 1, 1), (1, 1, 1), (P0, P1, P1), 32,
     PERMUTING),   # 3 taps sharing each permutation
    ("grouped-resnext-s2", (1, 1, 13, 20, 128), (1, 3, 3, 4, 128), (1, 2, 2), (1, 1, 1), (P0, P1, P1), 32,
     PERMUTING),   # one permutation per tap
    ("grouped-two-vectors", (2, 1, 9, 17, 64), (1, 3, 3, 8, 32), (1, 1, 1), (1, 1, 1), (P0, P1, P1), 8,
     PERMUTING),   # float32 blocks span 4 groups of 8 inputs: two input vectors
    ("grouped-mixed", (1, 1, 10, 19, 32), (1, 3, 3, 8, 96), (1, 1, 1), (1, 1, 1), (P0, P1, P1), 4,
     PERMUTING),   # 24 outputs per group: some blocks in one group, some across two
    ("grouped-clamped", (1, 1, 11, 12, 16), (1, 3, 3, 2, 24), (1, 1, 1), (1, 1, 1), (P0, P1, P1), 8,
     PERMUTING),   # the last block's loads are moved back to end at the pixel's last channel
    ("grouped-dilated-k5", (1, 1, 12, 23, 64), (1, 2, 5, 4, 64), (1, 1, 1), (1, 2, 2), (P0, (1, 1), (4, 4)),
     16, PERMUTING),
    ("grouped-3d", (2, 5, 6, 11, 32), (3, 3, 3, 2, 32), (1, 1, 1), (1, 1, 1), (P1, P1, P1), 16, PERMUTING),
    ("grouped-one-group-blocks", (1, 1, 9, 14, 64), (1, 3, 3, 16, 128), (1, 1, 1), (1, 1, 1), (P0, P1, P1), 4,
     "direct_grouped"),   # 32 outputs per group: every block broadcasts, no permutation
    ("grouped-gemm", (1, 1, 9, 10, 72), (1, 3, 3, 12, 18), (1, 1, 1), (1, 1, 1), (P0, P1, P1), 6,
     "im2col_gemm"),      # a block spans 6 groups of 12 inputs: more than two vectors
    ("stem-rgb", (1, 1, 64, 62, 3), (1, 3, 3, 3, 32), (1, 2, 2), (1, 1, 1), (P0, (0, 1), (0, 1)), 1,
     "direct_few_channels"),
    ("conv3d-c1", (2, 12, 11, 13, 1), (3, 3, 3, 1, 16), (1, 1, 1), (1, 1, 1), (P0, P0, P0), 1,
     "direct_few_channels"),
    ("few-odd-f", (1, 1, 19, 23, 5), (1, 3, 2, 5, 7), (1, 1, 2), (1, 1, 1), (P0, P1, (0, 1)), 1,
     "direct_few_channels"),
    ("few-dilated-wide-f", (1, 1, 17, 30, 2), (1, 2, 3, 2, 70), (1, 1, 1), (1, 2, 2), (P0, (1, 1), (2, 2)), 1,
     "direct_few_channels"),
    ("fft-1d", (2, 1, 1, 3000, 1), (1, 1, 129, 1, 1), (1, 1, 1), (1, 1, 1), (P0, P0, (64, 64)), 1, "fft"),
]


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "gelu"])
@pytest.mark.parametrize("case", FORWARD, ids=[c[0] for c in FORWARD])
def test_each_algorithm_matches_reference(case, activation, dtype):
    _, xs, ws, strides, dilation, pads, groups, algo = case
    out = _out(xs, ws, strides, dilation, pads)
    assert C.choose_algorithm(xs, ws, strides, dilation, groups, pads, out) == algo
    x, w, b = _arrays(xs, ws, dtype)
    x0, w0 = x.copy(), w.copy()
    y = C.conv(x, w, b, strides, dilation, pads, groups, out, activation)
    assert y.dtype == dtype and y.shape == (xs[0],) + out + (ws[-1],)
    assert_close(y, R.conv(x, w, b, strides, dilation, pads, groups, out, activation), **_tol(dtype))
    np.testing.assert_array_equal(x, x0)   # inputs are never modified
    np.testing.assert_array_equal(w, w0)


@pytest.mark.parametrize("case", FORWARD, ids=[c[0] for c in FORWARD])
def test_without_bias(case):
    _, xs, ws, strides, dilation, pads, groups, _ = case
    out = _out(xs, ws, strides, dilation, pads)
    x, w, _ = _arrays(xs, ws, np.float32, seed=1)
    assert_close(C.conv(x, w, None, strides, dilation, pads, groups, out, None),
                 R.conv(x, w, None, strides, dilation, pads, groups, out, None))


@pytest.mark.parametrize("name", sorted(activations.ELEMENTWISE))
@pytest.mark.parametrize("engine", ["gemm", "direct"])
def test_every_fused_activation(name, engine):
    # bias puts the pre-activations on both sides of every activation's kinks
    c = 240 if engine == "gemm" else 16
    x, w, b = _arrays((1, 1, 9, 10, c), (1, 3, 3, c, 20), np.float64, seed=2)
    args = ((1, 1, 1), (1, 1, 1), (P0, P1, P1), 1, (1, 9, 10))
    assert C.choose_algorithm(x.shape, w.shape, pads=(P0, P1, P1)) == ("im2col_gemm" if engine == "gemm"
                                                                      else "direct_tiled")
    assert_close(C.conv(x, w, b, *args, name), R.conv(x, w, b, *args, name), rtol=1e-11, atol=1e-12)


GROUPED = [c for c in FORWARD if c[6] > 1 and c[0] != "1x1-grouped"]


@pytest.mark.parametrize("case", GROUPED, ids=[c[0] for c in GROUPED])
def test_direct_grouped_forced(case, dtype, monkeypatch):
    # the grouped direct kernel on every grouped case it can run (on any CPU: without AVX-512
    # the auto choice avoids it, not its correctness)
    _, xs, ws, strides, dilation, pads, groups, _ = case
    if C._blocks(xs[-1], ws[-1], groups, dtype) is None:
        assert case[0] in ("grouped-gemm", "grouped-strided") and (case[0] == "grouped-gemm" or dtype == np.float32)
        return
    monkeypatch.setattr(C, "choose_algorithm", lambda *a, **k: "direct_grouped")
    out = _out(xs, ws, strides, dilation, pads)
    x, w, b = _arrays(xs, ws, dtype, seed=8)
    y = C.conv(x, w, b, strides, dilation, pads, groups, out, "gelu")
    assert_close(y, R.conv(x, w, b, strides, dilation, pads, groups, out, "gelu"), **_tol(dtype))


def test_grouped_blocks():
    # ResNeXt's 4 x 4 groups in float32: 4 groups per vector, each lane's input c is at
    # 4 * (lane // 4) + c of the block's vector, which starts at the block's first group
    blk, idx, ns = C._blocks(128, 128, 32, np.float32)
    assert ns == 1 and blk[:, 0].tolist() == list(range(0, 128, 16)) and blk[:, 1].all() and not blk[:, 2].any()
    np.testing.assert_array_equal(idx[3, 2], np.arange(16) // 4 * 4 + 2)
    # one group per 64 channels: broadcasting 4-vector blocks, as with groups=1
    blk, _, _ = C._blocks(128, 128, 2, np.float32)
    assert blk[:, 0].tolist() == [0] * 4 + [64] * 4 and not blk[:, 1].any() and blk[:, 2].tolist() == [1] + [0] * 3 + [1] + [0] * 3
    # "grouped-clamped", float64: the last block (groups 5..7, channels 10..15) loads x[8:16]
    blk, idx, ns = C._blocks(16, 24, 8, np.float64)
    assert ns == 1 and blk[2, 0] == 8
    np.testing.assert_array_equal(idx[2, 1], np.arange(16, 24) // 3 * 2 + 1 - 8)


def test_describe():
    names = {"direct_tiled", "direct_grouped", "direct_few_channels", "gemm_1x1", "im2col_gemm", "fft"}
    chosen = {c[-1] for c in FORWARD} | {"direct_grouped"}
    assert chosen <= names
    for name in names:
        text = C.describe(name)
        assert isinstance(text, str) and text and "\n" not in text
    assert len({C.describe(n) for n in names}) == len(names)
    with pytest.raises(KeyError):
        C.describe("winograd")


@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("xs, ws, groups", [
    ((1, 1, 9, 20, 16), (1, 3, 3, 16, 64), 1),     # 6 x 4-vector tiles
    ((1, 1, 9, 20, 16), (1, 3, 3, 16, 48), 1),     # 8 x 1-vector tiles
    ((1, 1, 9, 20, 3), (1, 3, 3, 3, 32), 1),       # few channels
    ((1, 1, 9, 20, 64), (1, 3, 3, 4, 64), 16),     # grouped, shared permutations
    ((1, 1, 9, 20, 64), (1, 1, 3, 4, 64), 16),     # grouped, one permutation per tap
])
def test_fused_clamps(xs, ws, groups, activation, dtype):
    # where the output has no padded channels the micro-kernels add the bias and clamp as
    # they store: outputs well past 0 and 6 on both sides, and a NaN input, which the
    # clamps pass through as the reference does
    x, w, b = _arrays(xs, ws, dtype, seed=9)
    x *= 8
    x[0, 0, 4, 10, 1] = np.nan
    pads = (P0, P1, P1) if ws[2] == 3 else (P0, P1, P0)
    out = _out(xs, ws, (1, 1, 1), (1, 1, 1), pads)
    assert C.choose_algorithm(xs, ws, (1, 1, 1), (1, 1, 1), groups, pads, out, dtype).startswith("direct")
    y = C.conv(x, w, b, (1, 1, 1), (1, 1, 1), pads, groups, out, activation)
    r = R.conv(x, w, b, (1, 1, 1), (1, 1, 1), pads, groups, out, activation)
    assert np.isnan(r).any() and (r == 0).any() and ((r == 6) if activation == "relu6" else (r > 6)).any()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(r))
    assert_close(np.nan_to_num(y), np.nan_to_num(r), **_tol(dtype))


# (x (N, D, H, W, C), w (KD, KH, KW, F, C), strides, dilation, output padding per axis)
TRANSPOSED = [
    ((1, 1, 16, 16, 32), (1, 3, 3, 64, 32), (1, 2, 2), (1, 1, 1), (0, 1, 1)),
    ((1, 1, 14, 14, 24), (1, 4, 4, 16, 24), (1, 2, 2), (1, 1, 1), (0, 0, 0)),
    ((2, 4, 5, 6, 16), (2, 2, 2, 8, 16), (2, 2, 2), (1, 1, 1), (0, 0, 0)),   # 1 tap per phase: x's rows
    ((2, 1, 6, 7, 16), (1, 1, 1, 8, 16), (1, 3, 3), (1, 1, 1), (0, 2, 1)),   # phases no tap reaches
    ((1, 1, 9, 11, 16), (1, 3, 3, 12, 16), (1, 1, 1), (1, 2, 2), (0, 0, 0)),  # stride 1, dilated
    ((3, 1, 1, 40, 12), (1, 1, 5, 8, 12), (1, 1, 3), (1, 1, 1), (0, 0, 2)),
    ((1, 1, 16, 16, 3), (1, 3, 3, 20, 3), (1, 2, 2), (1, 1, 1), (0, 1, 0)),   # few channels: direct
    ((2, 3, 6, 5, 1), (3, 3, 3, 4, 1), (2, 2, 1), (1, 1, 1), (1, 0, 0)),
    ((1, 1, 5, 6, 600), (1, 4, 4, 24, 600), (1, 2, 2), (1, 1, 1), (0, 1, 0)),  # phases too deep: GEMM
    ((2, 1, 4, 5, 2100), (1, 1, 1, 8, 2100), (1, 2, 2), (1, 1, 1), (0, 0, 1)),  # GEMM on x's rows
]


def test_transposed_engines():
    # the cases above run both engines: direct while the phases' weights fit, else GEMM
    fits = [C._direct_fits(int(np.prod(ws[:3]) // np.prod(s)) * ws[4]) or ws[4] < C._FEW_CHANNELS
            for _, ws, s, _, _ in TRANSPOSED]
    assert any(fits) and not all(fits)


@pytest.mark.parametrize("crop, activation", [(0, "relu"), (1, "relu"), (1, "gelu")])
@pytest.mark.parametrize("case", TRANSPOSED, ids=[str(i) for i in range(len(TRANSPOSED))])
def test_transposed_matches_reference(case, crop, activation, dtype):
    # the direct engine writes each phase's outputs straight into their strided places in y
    # (fusing ReLU there; GELU gets a pass over them)
    xs, ws, strides, dilation, extra = case
    x, w, b = _arrays(xs, ws, dtype, seed=3, filters=ws[3])
    full = [(i - 1) * s + (k - 1) * d + 1 for i, s, k, d in zip(xs[1:4], strides, ws[:3], dilation)]
    before = [min(crop, f - 1) for f in full]
    out = tuple(f - 2 * p + e for f, p, e in zip(full, before, extra))
    y = C.conv_transpose(x, w, b, strides, dilation, before, out, activation)
    assert_close(y, R.conv_transpose(x, w, b, strides, dilation, before, out, activation), **_tol(dtype))


@pytest.mark.parametrize("strides, dilation, groups, cg, f", [
    ((1, 1, 1), (1, 1, 1), 1, 1, 1),
    ((1, 1, 3), (1, 1, 1), 1, 2, 3),       # strided: stride-1 FFT, then subsampled
    ((1, 1, 1), (1, 1, 3), 1, 3, 2),       # dilated kernel; contraction over F (Cg > F)
    ((1, 1, 1), (1, 1, 1), 2, 2, 4),       # grouped, contraction over Cg
    ((1, 1, 1), (1, 1, 1), 2, 3, 2),       # grouped, contraction over F
])
def test_fft_variants_match_reference(strides, dilation, groups, cg, f, dtype):
    x, w, b = _arrays((2, 1, 3, 300, cg * groups), (1, 2, 31, cg, f), dtype, seed=4)
    pads = (P0, (1, 0), (20, 7))
    out = _out(x.shape, w.shape, strides, dilation, pads)
    assert_close(C._fft_conv(x, w, b, strides, dilation, pads, groups, out, "tanh"),
                 R.conv(x, w, b, strides, dilation, pads, groups, out, "tanh"), **_tol(dtype))


def test_fft_is_chosen_only_where_it_pays():
    # a long 1-D kernel on a signal pays; the same kernel on 64 channels, or a 7x7 stem, doesn't
    assert C.choose_algorithm((1, 1, 1, 16000, 1), (1, 1, 255, 1, 1), pads=(P0, P0, (127, 127))) == "fft"
    assert C.choose_algorithm((1, 1, 1, 16000, 64), (1, 1, 255, 64, 64), pads=(P0, P0, (127, 127))) != "fft"
    assert C.choose_algorithm((1, 1, 224, 224, 3), (1, 7, 7, 3, 64), (1, 2, 2),
                              pads=(P0, (2, 3), (2, 3))) == "direct_few_channels"
    # small kernels never go to FFT
    assert C.choose_algorithm((1, 1, 1, 100000, 1), (1, 1, 5, 1, 1)) != "fft"


THREADED = [c for c in FORWARD if c[-1] != "fft"]


@pytest.mark.parametrize("case", THREADED, ids=[c[0] for c in THREADED])
def test_thread_count_does_not_change_results(case):
    _, xs, ws, strides, dilation, pads, groups, _ = case
    out = _out(xs, ws, strides, dilation, pads)
    n = -(-C._PARALLEL_MIN_MACS // int(np.prod(out) * np.prod(ws)))  # enough work for the parallel path
    xs = (n,) + xs[1:]
    x, w, b = _arrays(xs, ws, np.float32, seed=5)
    results = []
    for n in (1, 2):
        fastconv.set_num_threads(n)
        try:
            results.append(C.conv(x, w, b, strides, dilation, pads, groups, out, "relu"))
        finally:
            fastconv.set_num_threads(None)
    np.testing.assert_array_equal(results[0], results[1])
    assert_close(results[1], R.conv(x, w, b, strides, dilation, pads, groups, out, "relu"))


@pytest.mark.parametrize("case", [TRANSPOSED[0], TRANSPOSED[6], TRANSPOSED[8]], ids=["direct", "direct-few", "gemm"])
def test_transposed_thread_count_does_not_change_results(case):
    xs, ws, strides, dilation, _ = case
    xs = (8,) + xs[1:]
    x, w, b = _arrays(xs, ws, np.float32, seed=6, filters=ws[3])
    out = tuple((i - 1) * s + k for i, s, k in zip(xs[1:4], strides, ws[:3]))
    results = []
    for n in (1, 2):
        fastconv.set_num_threads(n)
        try:
            results.append(C.conv_transpose(x, w, b, strides, dilation, (0, 0, 0), out, None))
        finally:
            fastconv.set_num_threads(None)
    np.testing.assert_array_equal(results[0], results[1])


_BY_ID = {c[0]: c for c in FORWARD}


@pytest.mark.parametrize("case", [_BY_ID[i] for i in ("1x1-wide", "3x3-deep", "3x3-same", "stem-rgb",
                                                       "grouped-resnext")],
                         ids=["1x1", "im2col", "direct", "direct-few", "direct-grouped"])
def test_empty_batch(case):
    _, xs, ws, strides, dilation, pads, groups, _ = case
    x, w, b = _arrays((0,) + xs[1:], ws, np.float32)
    out = _out(xs, ws, strides, dilation, pads)
    y = C.conv(x, w, b, strides, dilation, pads, groups, out, "relu")
    assert y.shape == (0,) + out + (ws[-1],)


def test_public_ops_use_it():
    # 2-D and 1-D public ops, channels_first, through backend="cython"
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 12, 12)).astype(np.float32)
    k = rng.standard_normal((3, 3, 5, 6)).astype(np.float32)
    kw = dict(strides=2, padding="same", data_format="channels_first", activation="softmax")
    assert_close(fastconv.conv2d(x, k, backend="cython", **kw), fastconv.conv2d(x, k, backend="reference", **kw))
    xt = rng.standard_normal((2, 9, 4)).astype(np.float32)
    kt = rng.standard_normal((4, 3, 4)).astype(np.float32)
    assert_close(fastconv.conv1d_transpose(xt, kt, strides=3, padding="same", backend="cython"),
                 fastconv.conv1d_transpose(xt, kt, strides=3, padding="same", backend="reference"))


def test_cached_plans_hold_no_weights():
    # the per-geometry plans are reused: a second call with the same shapes and other
    # weights (forward and transposed, both engines' weight layouts) gets its own result
    for seed in (10, 11):
        x, w, b = _arrays((1, 1, 9, 10, 8), (1, 3, 3, 8, 20), np.float32, seed=seed)
        args = ((1, 1, 1), (1, 1, 1), (P0, P1, P1), 1, (1, 9, 10), "relu")
        assert_close(C.conv(x, w, b, *args), R.conv(x, w, b, *args))
        xt, wt, bt = _arrays((1, 1, 5, 6, 24), (1, 4, 4, 16, 24), np.float32, seed=seed, filters=16)
        targs = ((1, 2, 2), (1, 1, 1), (0, 1, 1), (1, 10, 12), None)
        assert_close(C.conv_transpose(xt, wt, bt, *targs), R.conv_transpose(xt, wt, bt, *targs))


# sub-batch sizes that cut a batch of 11 unevenly (a batch alone, pairs, one image, the rest)
_SPLITS = (0, 1, 3, 4, 6, 11)


def _batch_invariant(run, x):
    """``run`` on the whole batch ``x`` equals, bit for bit, ``run`` on uneven sub-batches."""
    whole = run(x)
    parts = np.concatenate([run(x[a:b]) for a, b in zip(_SPLITS[:-1], _SPLITS[1:])])
    np.testing.assert_array_equal(whole, parts)
    return whole


@pytest.mark.parametrize("fused", [True, False], ids=["bias-relu", "plain"])
@pytest.mark.parametrize("case", FORWARD, ids=[c[0] for c in FORWARD])
def test_batch_invariant(case, fused, dtype):
    # an image's result must not depend on the rest of the batch: the pixels each task and
    # micro-tile covers are laid out within an image, never across the flattened batch
    _, xs, ws, strides, dilation, pads, groups, algo = case
    out = _out(xs, ws, strides, dilation, pads)
    xs = (_SPLITS[-1],) + xs[1:]
    assert C.choose_algorithm(xs, ws, strides, dilation, groups, pads, out) == algo
    x, w, b = _arrays(xs, ws, dtype, seed=8)
    b, act = (b, "relu") if fused else (None, None)
    y = _batch_invariant(lambda v: C.conv(v, w, b, strides, dilation, pads, groups, out, act), x)
    assert_close(y, R.conv(x, w, b, strides, dilation, pads, groups, out, act), **_tol(dtype))


@pytest.mark.parametrize("fused", [True, False], ids=["bias-relu", "plain"])
@pytest.mark.parametrize("case", TRANSPOSED, ids=[str(i) for i in range(len(TRANSPOSED))])
def test_transposed_batch_invariant(case, fused, dtype):
    xs, ws, strides, dilation, _ = case
    xs = (_SPLITS[-1],) + xs[1:]
    x, w, b = _arrays(xs, ws, dtype, seed=9, filters=ws[3])
    b, act = (b, "relu") if fused else (None, None)
    out = tuple((i - 1) * s + k for i, s, k in zip(xs[1:4], strides, ws[:3]))
    y = _batch_invariant(lambda v: C.conv_transpose(v, w, b, strides, dilation, (0, 0, 0), out, act), x)
    assert_close(y, R.conv_transpose(x, w, b, strides, dilation, (0, 0, 0), out, act), **_tol(dtype))


def _skip_padding_conv2d(x, w, pads):
    """Stride-1 2-D convolution that adds nothing for padded taps (what Keras's TensorFlow
    backend does: an inf weight gives +-inf, never NaN, at border outputs; checked with
    TensorFlow 2.21, tf.nn.conv2d 'SAME'), one tap at a time on the valid region."""
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    (pt, pb), (pl, pr) = pads
    oh, ow = h + pt + pb - kh + 1, wd + pl + pr - kw + 1
    y = np.zeros((n, oh, ow, f), np.float64)
    for i in range(kh):
        for j in range(kw):
            o0, o1 = max(0, pt - i), min(oh, h + pt - i)        # outputs whose tap row is inside
            q0, q1 = max(0, pl - j), min(ow, wd + pl - j)
            if o1 > o0 and q1 > q0:
                xs = x[:, o0 + i - pt:o1 + i - pt, q0 + j - pl:q1 + j - pl].astype(np.float64)
                with np.errstate(invalid="ignore"):
                    y[:, o0:o1, q0:q1] += xs @ w[i, j].astype(np.float64)
    return y


@pytest.mark.parametrize("f", [16, 64, 80])
@pytest.mark.parametrize("tap", [(0, 0), (1, 2), (2, 1)])
def test_inf_weight_gives_keras_borders(f, tap):
    # border pixels go through zero-padded strips, where a padded tap adds 0 * inf = NaN;
    # Keras adds nothing there, so those pixels are computed again over their real taps
    rng = np.random.default_rng(f)
    x = rng.standard_normal((2, 6, 13, 16)).astype(np.float32)
    w = rng.standard_normal((3, 3, 16, f)).astype(np.float32)
    w[tap + (0, 0)] = np.inf
    w[tap + (3, f - 1)] = -np.inf
    got = fastconv.conv2d(x, w, padding="same", backend="cython")
    want = _skip_padding_conv2d(x, w, ((1, 1), (1, 1)))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    assert np.isinf(want).any()
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-4)
