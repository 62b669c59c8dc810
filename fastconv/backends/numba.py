"""The numba backend: parallel Numba kernels, with dense work handed to BLAS.

How each op is computed (chosen by measurement on a 2-core Zen 3, see README):

* dense convolutions (groups=1, and groups with >= ``_GROUP_GEMM_MIN`` channels
  per group): GEMM.  A 1x1 stride-1 convolution is one GEMM on the
  channels-last buffer itself.  Otherwise output pixels are taken in tiles;
  a parallel Numba kernel packs each tile's receptive fields (implicit im2col,
  never the whole matrix) and NumPy's sgemm/dgemm multiplies the tile by the
  (K, filters) weight matrix straight into the output; bias and activation
  follow on the tile while it is still in cache.
* transposed convolutions: one GEMM per image, input pixels x (in_channels,
  taps * filters), then a parallel gather (col2im) that sums each output pixel's
  contributions — no zero insertion, no atomics — with bias and activation fused.
* depthwise, grouped with few channels per group, pooling: direct loops, one
  thread per output row, vectorised along channels, bias and activation fused.

Numba's threads and BLAS's threads never run nested: packing, GEMM and the
epilogue alternate.  The Numba thread count follows
:func:`fastconv.set_num_threads`.
"""

import math
import threading

import numba
import numpy as np
from scipy.linalg import blas

from .._threads import get_num_threads
from . import _numba_kernels as K

NAME = "numba"
OPS = frozenset({"conv", "depthwise_conv", "conv_transpose", "max_pool", "avg_pool",
                 "global_max_pool", "global_avg_pool"})

# One im2col tile holds at most this many bytes: 2 MiB keeps the tile and the
# output rows it feeds in the 32 MiB L3 while OpenBLAS packs its own L2 panels
# from it, and gives each GEMM call enough rows (>= ~900 for K = 576) to keep
# both cores busy.
_TILE_BYTES = 2 << 20
# Grouped convolutions with at least this many input channels per group run as
# one GEMM per group; below it the direct kernel wins (measured: groups=32 with 4
# channels each is 3x faster direct).
_GROUP_GEMM_MIN = 16


_local = threading.local()


def _scratch(shape, dtype):
    """A reusable scratch buffer of this shape (per thread): large fresh allocations cost
    page faults on first touch (measured ~0.3 ms per MiB), so packing buffers are kept."""
    size = math.prod(shape)
    key = np.dtype(dtype).str
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def _threads():
    numba.set_num_threads(max(1, min(get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _fused(b, activation, dtype, channels):
    has_bias = b is not None
    bias = b if has_bias else np.zeros(channels, dtype)
    return bias, has_bias, K.ACT_CODES[activation]


def _gemm_conv(x, w2, y2, out_shape, strides, dilation, before, ksize, bias, has_bias, code):
    """Tiled implicit-im2col GEMM: y2 (M, F) = patches(x) (M, K) @ w2 (K, F)."""
    m_all, k_all = y2.shape[0], w2.shape[0]
    if x.shape[-1] < _FEW_CHANNELS:
        return _gemm_conv_t(x, w2, y2, out_shape, strides, dilation, before, ksize, bias, has_bias, code)
    rows = max(1, min(m_all, _TILE_BYTES // (k_all * x.itemsize)))
    cols = _scratch((rows, k_all), x.dtype)
    for m0 in range(0, m_all, rows):
        mt = min(rows, m_all - m0)
        K.pack_patches_serial(x, cols[:mt], m0, out_shape, strides, dilation, before, ksize)
        out = y2[m0:m0 + mt]
        _gemm(cols[:mt], w2, out, 0.0)
        if has_bias or code:
            K.epilogue_serial(out, bias, has_bias, code)


def _gemm(a, w, c, beta):
    """``c = beta * c + a @ w`` in place, all C-ordered 2-D; via BLAS on the transposes
    (a C-ordered matrix is the Fortran-ordered transpose), so nothing is copied."""
    gemm = blas.sgemm if a.dtype == np.float32 else blas.dgemm
    r = gemm(1.0, w.T, a.T, beta=beta, c=c.T, overwrite_c=1)
    if r.ctypes.data != c.ctypes.data:  # pragma: no cover - a copy would lose the result
        raise AssertionError("BLAS did not write in place")


# Shifted GEMM pays when the frame of pixels whose windows cross the border is
# small; above this share of border pixels the tiled im2col path is used.
_MAX_BORDER_SHARE = 0.25
# Below this many input channels a tap's GEMM is too thin (K = C); im2col then.
_SHIFT_MIN_CHANNELS = 16


def _border_pixels(out_shape, in_shape, ksize, dilation, before, n):
    """Flat indices of output pixels (stride 1) whose window leaves the input."""
    masks = []
    for o, i, k, d, lo in zip(out_shape, in_shape, ksize, dilation, before):
        pos = np.arange(o)
        masks.append((pos < lo) | (pos - lo + (k - 1) * d >= i))
    bad = masks[0][:, None, None] | masks[1][None, :, None] | masks[2][None, None, :]
    idx = np.flatnonzero(bad)
    per_image = math.prod(out_shape)
    return (idx[None, :] + per_image * np.arange(n)[:, None]).ravel()


def _shifted_conv(x, w, y, out_shape, dilation, before, border):
    """Stride-1 convolution as one GEMM per kernel tap on shifted views of the input.

    Output pixel ``q`` (indexed on the input's own grid) reads input pixel
    ``q + offset(tap)``, so each tap is ``Y[lo:hi] += X[lo+off:hi+off] @ W[tap]``
    over contiguous rows: no im2col and no padded copy.  Rows whose window wraps
    across an edge are the ``border`` pixels, recomputed exactly afterwards.
    """
    n, D, H, W, C = x.shape
    kd, kh, kw, _, F = w.shape
    X = x.reshape(-1, C)
    same_grid = tuple(out_shape) == (D, H, W)
    Yv = y.reshape(-1, F) if same_grid else np.empty((X.shape[0], F), x.dtype)
    offsets = [((a * dilation[0] - before[0]) * H + (b * dilation[1] - before[1])) * W
               + (c * dilation[2] - before[2])
               for a in range(kd) for b in range(kh) for c in range(kw)]
    lo, hi = max(0, -min(offsets)), min(X.shape[0], X.shape[0] - max(offsets))
    wt = w.reshape(len(offsets), C, F)
    if hi > lo:
        for t, off in enumerate(offsets):
            _gemm(X[lo + off:hi + off], wt[t], Yv[lo:hi], 0.0 if t == 0 else 1.0)
    if not same_grid:
        y[...] = Yv.reshape(n, D, H, W, F)[:, :out_shape[0], :out_shape[1], :out_shape[2]]
    if border.size:
        cols = np.empty((border.size, len(offsets) * C), x.dtype)
        K.pack_pixels_serial(x, cols, border, tuple(out_shape), (1, 1, 1), dilation, before, (kd, kh, kw))
        part = np.empty((border.size, F), x.dtype)
        _gemm(cols, w.reshape(-1, F), part, 0.0)
        y.reshape(-1, F)[border] = part


def _gemm_conv_t(x, w2, y2, out_shape, strides, dilation, before, ksize, bias, has_bias, code):
    """Few input channels: patches packed transposed (K, pixels), whole output rows per
    tile, so packing runs along rows instead of along a handful of channels."""
    ow = out_shape[2]
    k_all = w2.shape[0]
    n_rows = y2.shape[0] // ow
    rows = max(1, min(n_rows, _TILE_BYTES // (k_all * ow * x.itemsize)))
    cols_t = _scratch((k_all, rows * ow), x.dtype)
    gemm = blas.sgemm if x.dtype == np.float32 else blas.dgemm
    for r0 in range(0, n_rows, rows):
        rt = min(rows, n_rows - r0)
        ct = cols_t[:, :rt * ow] if rt == rows else np.empty((k_all, rt * ow), x.dtype)
        K.pack_patches_t_serial(x, ct, r0, tuple(out_shape), strides, dilation, before, ksize)
        out = y2[r0 * ow:(r0 + rt) * ow]
        # out^T (F, m) = w2^T (F, K) @ ct (K, m): ct is C-ordered, i.e. the transpose of a
        # Fortran-ordered (m, K) matrix, hence trans_b.
        r = gemm(1.0, w2.T, ct.T, beta=0.0, c=out.T, overwrite_c=1, trans_b=1)
        if r.ctypes.data != out.ctypes.data:  # pragma: no cover
            raise AssertionError("BLAS did not write in place")
        if has_bias or code:
            K.epilogue_serial(out, bias, has_bias, code)


# Below this many input channels, patches are packed transposed (see _gemm_conv_t).
_FEW_CHANNELS = 8


def conv(x, w, b, strides, dilation, pads, groups, out_shape, activation):
    _threads()
    n, c = x.shape[0], x.shape[-1]
    kd, kh, kw, cg, f = w.shape
    before = tuple(p[0] for p in pads)
    y = np.empty((n,) + tuple(out_shape) + (f,), x.dtype)
    y2 = y.reshape(-1, f)
    bias, has_bias, code = _fused(b, activation, x.dtype, f)
    if groups > 1 and cg < _GROUP_GEMM_MIN:
        K.grouped_direct(x, w, y, strides, dilation, before, groups, bias, has_bias, code)
        return y
    ksize = (kd, kh, kw)
    if groups == 1:
        w2 = w.reshape(-1, f)
        if ksize == (1, 1, 1) and strides == (1, 1, 1) and not any(before) and \
                tuple(out_shape) == x.shape[1:4]:
            _gemm(x.reshape(-1, c), w2, y2, 0.0)
        elif strides == (1, 1, 1) and c >= _SHIFT_MIN_CHANNELS and (border := _border_pixels(
                out_shape, x.shape[1:4], ksize, dilation, before, n)).size <= _MAX_BORDER_SHARE * y2.shape[0]:
            _shifted_conv(x, w, y, out_shape, dilation, before, border)
        else:
            _gemm_conv(x, w2, y2, out_shape, strides, dilation, before, ksize, bias, has_bias, code)
            return y
        if has_bias or code:
            K.epilogue_serial(y2, bias, has_bias, code)
        return y
    fg = f // groups
    part = np.empty((y2.shape[0], fg), x.dtype)
    for g in range(groups):
        w2 = np.ascontiguousarray(w[..., g * fg:(g + 1) * fg].reshape(-1, fg))
        _gemm_conv(x[..., g * cg:(g + 1) * cg], w2, part, out_shape, strides, dilation, before, ksize,
                   bias[g * fg:(g + 1) * fg], has_bias, code)
        y2[:, g * fg:(g + 1) * fg] = part
    return y


def conv_transpose(x, w, b, strides, dilation, pads_before, out_shape, activation):
    _threads()
    n, c = x.shape[0], x.shape[-1]
    kd, kh, kw, f, _ = w.shape
    taps = kd * kh * kw
    # (C, taps * F): input channel -> every tap's contribution to every filter.
    wt = np.ascontiguousarray(w.reshape(taps, f, c).transpose(2, 0, 1).reshape(c, taps * f))
    y = np.empty((n,) + tuple(out_shape) + (f,), x.dtype)
    bias, has_bias, code = _fused(b, activation, x.dtype, f)
    in_shape = x.shape[1:4]
    cols = _scratch((math.prod(in_shape), taps * f), x.dtype)
    for i in range(n):  # one image at a time bounds the GEMM result's size
        _gemm(x[i].reshape(-1, c), wt, cols, 0.0)
        K.col2im_serial(cols, y[i:i + 1], in_shape, strides, dilation, tuple(pads_before), (kd, kh, kw),
                 bias, has_bias, code)
    return y


def depthwise_conv(x, w, b, strides, dilation, pads, out_shape, activation):
    _threads()
    cm = w.shape[3] * w.shape[4]
    y = np.empty((x.shape[0],) + tuple(out_shape) + (cm,), x.dtype)
    bias, has_bias, code = _fused(b, activation, x.dtype, cm)
    K.depthwise(x, w, w.reshape(-1, cm), y, strides, dilation, tuple(p[0] for p in pads), bias, has_bias, code)
    return y


def _pool(kernel, x, pool, strides, pads, out_shape):
    _threads()
    y = np.empty((x.shape[0],) + tuple(out_shape) + (x.shape[-1],), x.dtype)
    kernel(x, y, tuple(pool), tuple(strides), tuple(p[0] for p in pads))
    return y


def max_pool(x, pool, strides, pads, out_shape):
    return _pool(K.max_pool, x, pool, strides, pads, out_shape)


def avg_pool(x, pool, strides, pads, out_shape):
    return _pool(K.avg_pool, x, pool, strides, pads, out_shape)


def _global(x, is_max):
    _threads()
    y = np.empty((x.shape[0], x.shape[-1]), x.dtype)
    K.global_pool(x.reshape(x.shape[0], -1, x.shape[-1]), y, is_max)
    return y


def global_max_pool(x):
    return _global(x, True)


def global_avg_pool(x):
    return _global(x, False)
