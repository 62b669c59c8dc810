"""Numba kernels for the numba backend (compiled on first use, cached on disk).

Every kernel works on the kernel contract's 3-D channels-last arrays and loops
innermost along channels, which are contiguous, so LLVM vectorises those loops
(AVX2 + FMA here).  Parallel loops split the work by output rows (``prange``);
no two threads write the same output row.
"""

import math

import numpy as np
from numba import get_thread_id, njit, prange

from ._blas import gemm
from ._numba_simd import (lanes, vadd, vbroadcast, vdiv, vfma, vload, vload_n, vmax, vrot_groups, vsplat, vstore,
                          vstore_n, vzero)

# Activation codes: the elementwise Keras activations the kernels fuse.
ACT_CODES = {None: 0, "relu": 1, "relu6": 2, "leaky_relu": 3, "elu": 4, "selu": 5, "celu": 6,
             "gelu": 7, "sigmoid": 8, "hard_sigmoid": 9, "silu": 10, "hard_silu": 11, "tanh": 12,
             "hard_tanh": 13, "tanh_shrink": 14, "softplus": 15, "softsign": 16, "exponential": 17,
             "mish": 18, "log_sigmoid": 19, "squareplus": 20, "sparse_plus": 21, "soft_shrink": 22,
             "hard_shrink": 23}

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_SQRT1_2 = 0.70710678118654752440


@njit(cache=True, inline="always")
def _softplus(v):
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


@njit(cache=True, inline="always")
def _sigmoid(v):
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


@njit(cache=True)
def activate(v, code):
    """One activation by code, on a scalar (computed in float64, rounded by the caller)."""
    if code == 1:
        return max(v, 0.0)
    if code == 2:
        return min(max(v, 0.0), 6.0)
    if code == 3:
        return v if v >= 0 else 0.2 * v
    if code == 4:
        return v if v > 0 else math.expm1(v)
    if code == 5:
        return _SELU_SCALE * (v if v > 0 else _SELU_ALPHA * math.expm1(v))
    if code == 6:
        return max(v, 0.0) + min(0.0, math.expm1(min(v, 0.0)))
    if code == 7:
        return 0.5 * v * math.erfc(-v * _SQRT1_2)  # no cancellation for large negative v
    if code == 8:
        return _sigmoid(v)
    if code == 9:
        return min(max(v + 3.0, 0.0), 6.0) / 6.0
    if code == 10:
        return v * _sigmoid(v)
    if code == 11:
        return v * (min(max(v + 3.0, 0.0), 6.0) / 6.0)
    if code == 12:
        return math.tanh(v)
    if code == 13:
        return min(max(v, -1.0), 1.0)
    if code == 14:
        return v - math.tanh(v)
    if code == 15:
        return _softplus(v)
    if code == 16:
        return v / (1.0 + abs(v))
    if code == 17:
        return math.exp(v)
    if code == 18:
        return v * math.tanh(_softplus(v))
    if code == 19:
        return -_softplus(-v)
    if code == 20:
        return (v + math.sqrt(v * v + 4.0)) / 2.0
    if code == 21:
        if v <= -1.0:
            return 0.0
        if v >= 1.0:
            return v
        return (v + 1.0) * (v + 1.0) / 4.0
    if code == 22:
        return v - 0.5 if v > 0.5 else (v + 0.5 if v < -0.5 else 0.0)
    if code == 23:
        return v if abs(v) > 0.5 else 0.0
    return v


@njit(cache=True)
def epilogue(y, bias, has_bias, code):
    """In place on a (rows, channels) tile: add bias, then the activation (one thread).

    ReLU and ReLU6 run in the tile's own precision in the same pass as the bias
    (constants typed like the data, so the loop stays one vector pass)."""
    rows, ch = y.shape
    zero = np.zeros(1, y.dtype)[0]
    six = zero + np.float32(6)
    for r in range(rows):
        row = y[r]
        if code == 1 or code == 2:
            top = six if code == 2 else zero
            for c in range(ch):
                v = row[c] + bias[c] if has_bias else row[c]
                v = max(v, zero)
                row[c] = min(v, top) if code == 2 else v
            continue
        if has_bias:
            for c in range(ch):
                row[c] += bias[c]
        if code != 0:
            for c in range(ch):
                row[c] = activate(row[c], code)


@njit(cache=True, inline="always")
def finish_pixel(dst, bias, has_bias, code, zero):
    """Bias and activation on one output pixel's channels, while they are in L1
    (ReLU and ReLU6 in one pass, with ``zero`` typed like the data, as in :func:`epilogue`)."""
    if code == 1 or code == 2:
        six = zero + np.float32(6)
        top = six if code == 2 else zero
        for c in range(dst.shape[0]):
            v = dst[c] + bias[c] if has_bias else dst[c]
            v = max(v, zero)
            dst[c] = min(v, top) if code == 2 else v
        return
    if has_bias:
        for c in range(dst.shape[0]):
            dst[c] += bias[c]
    if code != 0:
        for c in range(dst.shape[0]):
            dst[c] = activate(dst[c], code)


@njit(cache=True, inline="always")
def pack_pixel(x, dst, m, out_shape, strides, dilation, before, ksize):
    """im2col of one output pixel ``m`` (flat index): its receptive field as
    (KD, KH, KW, C) into ``dst``, zeros where the window is in the padding."""
    _, D, H, W, C = x.shape
    OD, OH, OW = out_shape
    KD, KH, KW = ksize
    ow = m % OW
    t = m // OW
    oh = t % OH
    t //= OH
    od = t % OD
    n = t // OD
    k = 0
    w0 = ow * strides[2] - before[2]
    row_inside = dilation[2] == 1 and w0 >= 0 and w0 + KW <= W
    for kd in range(KD):
        i_d = od * strides[0] - before[0] + kd * dilation[0]
        for kh in range(KH):
            i_h = oh * strides[1] - before[1] + kh * dilation[1]
            if row_inside and 0 <= i_d < D and 0 <= i_h < H:
                # the KW taps of this kernel row, all inside the input row
                src = x[n, i_d, i_h]
                for kw in range(KW):
                    for c in range(C):
                        dst[k + c] = src[w0 + kw, c]
                    k += C
                continue
            for kw in range(KW):
                i_w = w0 + kw * dilation[2]
                if 0 <= i_d < D and 0 <= i_h < H and 0 <= i_w < W:
                    src = x[n, i_d, i_h, i_w]
                    for c in range(C):
                        dst[k + c] = src[c]
                else:
                    for c in range(C):
                        dst[k + c] = 0
                k += C


@njit(cache=True)
def pack_patches(x, cols, m0, out_shape, strides, dilation, before, ksize):
    """im2col for output pixels ``m0 .. m0 + len(cols)``: ``cols[r]`` is pixel ``m0 + r``'s patch."""
    for r in range(cols.shape[0]):
        pack_pixel(x, cols[r], m0 + r, out_shape, strides, dilation, before, ksize)


@njit(cache=True)
def pack_pixels(x, cols, pixels, out_shape, strides, dilation, before, ksize):
    """im2col for an explicit list of output pixel indices."""
    for r in range(pixels.shape[0]):
        pack_pixel(x, cols[r], pixels[r], out_shape, strides, dilation, before, ksize)


@njit(cache=True)
def pack_patches_t(x, cols_t, row0, out_shape, strides, dilation, before, ksize):
    """im2col transposed, for inputs with few channels: ``cols_t[k, j]`` is patch element
    ``k = ((kd * KH + kh) * KW + kw) * C + c`` of output pixel ``row0 * OW + j``, for whole
    output rows.  The inner loop runs along an output row (long, unlike C)."""
    k_all, n_cols = cols_t.shape
    _, D, H, W, C = x.shape
    OD, OH, OW = out_shape
    KD, KH, KW = ksize
    n_rows = n_cols // OW
    for k in range(k_all):
        c = k % C
        t = k // C
        kw = t % KW
        t //= KW
        kh = t % KH
        kd = t // KH
        dst = cols_t[k]
        for r in range(n_rows):
            row = row0 + r
            n = row // (OD * OH)
            od = (row // OH) % OD
            oh = row % OH
            i_d = od * strides[0] - before[0] + kd * dilation[0]
            i_h = oh * strides[1] - before[1] + kh * dilation[1]
            base = r * OW
            if i_d < 0 or i_d >= D or i_h < 0 or i_h >= H:
                for ow in range(OW):
                    dst[base + ow] = 0
                continue
            src = x[n, i_d, i_h]
            off = kw * dilation[2] - before[2]
            s = strides[2]
            # output columns whose input column is inside the row: [lo, hi)
            lo = 0 if off >= 0 else (-off + s - 1) // s
            hi = min(OW, (W - 1 - off) // s + 1) if W - 1 - off >= 0 else 0
            lo = min(lo, hi)
            for ow in range(lo):
                dst[base + ow] = 0
            for ow in range(lo, hi):
                dst[base + ow] = src[ow * s + off, c]
            for ow in range(hi, OW):
                dst[base + ow] = 0


@njit(cache=True, inline="always")
def window_taps(od, oh, ow, in_shape, ksize, strides, dilation, before, taps):
    """The taps of output pixel (od, oh, ow)'s window that fall inside the input:
    fills ``taps[t] = (d, h, w, tap index)`` and returns how many there are."""
    nt = 0
    for kd in range(ksize[0]):
        i_d = od * strides[0] - before[0] + kd * dilation[0]
        if i_d < 0 or i_d >= in_shape[0]:
            continue
        for kh in range(ksize[1]):
            i_h = oh * strides[1] - before[1] + kh * dilation[1]
            if i_h < 0 or i_h >= in_shape[1]:
                continue
            for kw in range(ksize[2]):
                i_w = ow * strides[2] - before[2] + kw * dilation[2]
                if i_w < 0 or i_w >= in_shape[2]:
                    continue
                taps[nt, 0] = i_d
                taps[nt, 1] = i_h
                taps[nt, 2] = i_w
                taps[nt, 3] = (kd * ksize[1] + kh) * ksize[2] + kw
                nt += 1
    return nt


# ------------------------------------------------------- SIMD direct kernels
# These spell out register tiles with the explicit vectors of ``_numba_simd``:
# a tile is a few output pixels times one vector of channels, accumulated in
# registers over every tap.  Tiles cover the "interior" columns of an output
# row, whose windows lie inside the input along W, so their loads need no
# checks; the kernel rows outside the input along D and H are dropped per row
# (``kernel_rows``), and the few border columns go through a per-pixel loop
# that checks each tap.  The last vector of a row of channels is masked.

# Output pixels per register tile: 4 pixels x (1 vector + the taps' loads) fit the
# 16/32 vector registers, and the 3x3 tile reads 6 input columns for 4 outputs.
_TILE = 4


@njit(cache=True, inline="always")
def kernel_rows(n, od, oh, x_shape, ksize, strides, dilation, before, rows, taps0):
    """The kernel rows (kd, kh) of output row (n, od, oh) that fall inside the input:
    ``rows[r]`` is the flat offset of that input row in ``x`` (channels-last, contiguous)
    and ``taps0[r]`` the index of its first tap; returns how many there are."""
    _, D, H, W, C = x_shape
    nr = 0
    for kd in range(ksize[0]):
        i_d = od * strides[0] - before[0] + kd * dilation[0]
        if i_d < 0 or i_d >= D:
            continue
        for kh in range(ksize[1]):
            i_h = oh * strides[1] - before[1] + kh * dilation[1]
            if i_h < 0 or i_h >= H:
                continue
            rows[nr] = ((n * D + i_d) * H + i_h) * W * C
            taps0[nr] = (kd * ksize[1] + kh) * ksize[2]
            nr += 1
    return nr


@njit(cache=True, inline="always")
def interior_columns(W, OW, kw, stride, dilation, before):
    """[lo, hi): the output columns whose KW taps all fall inside the W input columns."""
    lo = min(OW, max(0, -(-before // stride)))
    top = W - 1 - (kw - 1) * dilation + before
    hi = min(OW, top // stride + 1) if top >= 0 else 0
    return lo, max(lo, hi)


@njit(cache=True, inline="always")
def _dw_tile_3x3(x, y, o, xc, r0, r1, r2, C, m, k0, k1, k2, k3, k4, k5, k6, k7, k8, b):
    """Four neighbouring output pixels of a 3x3, unit-stride depthwise kernel, one vector
    of channels: the 6 input columns of each kernel row are loaded once and shared."""
    a0 = b
    a1 = b
    a2 = b
    a3 = b
    for r in range(3):
        base = (r0 if r == 0 else (r1 if r == 1 else r2)) + xc
        w0 = k0 if r == 0 else (k3 if r == 1 else k6)
        w1 = k1 if r == 0 else (k4 if r == 1 else k7)
        w2 = k2 if r == 0 else (k5 if r == 1 else k8)
        x0 = vload_n(x, base, m)
        x1 = vload_n(x, base + C, m)
        a0 = vfma(x0, w0, a0)
        a1 = vfma(x1, w0, a1)
        a0 = vfma(x1, w1, a0)
        x2 = vload_n(x, base + 2 * C, m)
        a0 = vfma(x2, w2, a0)
        a1 = vfma(x2, w1, a1)
        a2 = vfma(x2, w0, a2)
        x3 = vload_n(x, base + 3 * C, m)
        a1 = vfma(x3, w2, a1)
        a2 = vfma(x3, w1, a2)
        a3 = vfma(x3, w0, a3)
        x4 = vload_n(x, base + 4 * C, m)
        a2 = vfma(x4, w2, a2)
        a3 = vfma(x4, w1, a3)
        x5 = vload_n(x, base + 5 * C, m)
        a3 = vfma(x5, w2, a3)
    vstore_n(y, o, a0, m)
    vstore_n(y, o + C, a1, m)
    vstore_n(y, o + 2 * C, a2, m)
    vstore_n(y, o + 3 * C, a3, m)


@njit(cache=True, inline="always")
def _dw_tile_3x3_8(x, y, o, xc, r0, r1, r2, C, m, k0, k1, k2, k3, k4, k5, k6, k7, k8, b):
    """Eight neighbouring output pixels of a 3x3, unit-stride depthwise kernel, one vector
    of channels: each kernel row's 10 input columns are loaded once; eight independent
    accumulators keep both FMA pipes busy (four leave them waiting on FMA latency)."""
    a0 = b
    a1 = b
    a2 = b
    a3 = b
    a4 = b
    a5 = b
    a6 = b
    a7 = b
    for r in range(3):
        base = (r0 if r == 0 else (r1 if r == 1 else r2)) + xc
        w0 = k0 if r == 0 else (k3 if r == 1 else k6)
        w1 = k1 if r == 0 else (k4 if r == 1 else k7)
        w2 = k2 if r == 0 else (k5 if r == 1 else k8)
        v = vload_n(x, base, m)
        a0 = vfma(v, w0, a0)
        v = vload_n(x, base + C, m)
        a0 = vfma(v, w1, a0)
        a1 = vfma(v, w0, a1)
        v = vload_n(x, base + 2 * C, m)
        a0 = vfma(v, w2, a0)
        a1 = vfma(v, w1, a1)
        a2 = vfma(v, w0, a2)
        v = vload_n(x, base + 3 * C, m)
        a1 = vfma(v, w2, a1)
        a2 = vfma(v, w1, a2)
        a3 = vfma(v, w0, a3)
        v = vload_n(x, base + 4 * C, m)
        a2 = vfma(v, w2, a2)
        a3 = vfma(v, w1, a3)
        a4 = vfma(v, w0, a4)
        v = vload_n(x, base + 5 * C, m)
        a3 = vfma(v, w2, a3)
        a4 = vfma(v, w1, a4)
        a5 = vfma(v, w0, a5)
        v = vload_n(x, base + 6 * C, m)
        a4 = vfma(v, w2, a4)
        a5 = vfma(v, w1, a5)
        a6 = vfma(v, w0, a6)
        v = vload_n(x, base + 7 * C, m)
        a5 = vfma(v, w2, a5)
        a6 = vfma(v, w1, a6)
        a7 = vfma(v, w0, a7)
        v = vload_n(x, base + 8 * C, m)
        a6 = vfma(v, w2, a6)
        a7 = vfma(v, w1, a7)
        v = vload_n(x, base + 9 * C, m)
        a7 = vfma(v, w2, a7)
    vstore_n(y, o, a0, m)
    vstore_n(y, o + C, a1, m)
    vstore_n(y, o + 2 * C, a2, m)
    vstore_n(y, o + 3 * C, a3, m)
    vstore_n(y, o + 4 * C, a4, m)
    vstore_n(y, o + 5 * C, a5, m)
    vstore_n(y, o + 6 * C, a6, m)
    vstore_n(y, o + 7 * C, a7, m)


@njit(cache=True, inline="always")
def _dw_tile_3x3_8x2(x, y, o, o2, xc, r0, r1, r2, r3, C, m, k0, k1, k2, k3, k4, k5, k6, k7, k8, b):
    """Eight neighbouring output pixels of two neighbouring output rows (stored from ``o`` and
    ``o2``) of a 3x3, unit-stride depthwise kernel, one vector of channels: the 4 input rows
    ``r0``..``r3`` the pair reads are each walked once, every input vector loaded once for both
    rows (40 loads for 144 multiply-adds; one row at a time loads 60).  Each accumulator adds
    its taps in the order :func:`_dw_tile_3x3_8` does, so results are the same bits."""
    a0 = b
    a1 = b
    a2 = b
    a3 = b
    a4 = b
    a5 = b
    a6 = b
    a7 = b
    c0 = b
    c1 = b
    c2 = b
    c3 = b
    c4 = b
    c5 = b
    c6 = b
    c7 = b
    base = r0 + xc
    v = vload_n(x, base, m)
    a0 = vfma(v, k0, a0)
    v = vload_n(x, base + 1 * C, m)
    a0 = vfma(v, k1, a0)
    a1 = vfma(v, k0, a1)
    v = vload_n(x, base + 2 * C, m)
    a0 = vfma(v, k2, a0)
    a1 = vfma(v, k1, a1)
    a2 = vfma(v, k0, a2)
    v = vload_n(x, base + 3 * C, m)
    a1 = vfma(v, k2, a1)
    a2 = vfma(v, k1, a2)
    a3 = vfma(v, k0, a3)
    v = vload_n(x, base + 4 * C, m)
    a2 = vfma(v, k2, a2)
    a3 = vfma(v, k1, a3)
    a4 = vfma(v, k0, a4)
    v = vload_n(x, base + 5 * C, m)
    a3 = vfma(v, k2, a3)
    a4 = vfma(v, k1, a4)
    a5 = vfma(v, k0, a5)
    v = vload_n(x, base + 6 * C, m)
    a4 = vfma(v, k2, a4)
    a5 = vfma(v, k1, a5)
    a6 = vfma(v, k0, a6)
    v = vload_n(x, base + 7 * C, m)
    a5 = vfma(v, k2, a5)
    a6 = vfma(v, k1, a6)
    a7 = vfma(v, k0, a7)
    v = vload_n(x, base + 8 * C, m)
    a6 = vfma(v, k2, a6)
    a7 = vfma(v, k1, a7)
    v = vload_n(x, base + 9 * C, m)
    a7 = vfma(v, k2, a7)
    base = r1 + xc
    v = vload_n(x, base, m)
    a0 = vfma(v, k3, a0)
    c0 = vfma(v, k0, c0)
    v = vload_n(x, base + 1 * C, m)
    a0 = vfma(v, k4, a0)
    c0 = vfma(v, k1, c0)
    a1 = vfma(v, k3, a1)
    c1 = vfma(v, k0, c1)
    v = vload_n(x, base + 2 * C, m)
    a0 = vfma(v, k5, a0)
    c0 = vfma(v, k2, c0)
    a1 = vfma(v, k4, a1)
    c1 = vfma(v, k1, c1)
    a2 = vfma(v, k3, a2)
    c2 = vfma(v, k0, c2)
    v = vload_n(x, base + 3 * C, m)
    a1 = vfma(v, k5, a1)
    c1 = vfma(v, k2, c1)
    a2 = vfma(v, k4, a2)
    c2 = vfma(v, k1, c2)
    a3 = vfma(v, k3, a3)
    c3 = vfma(v, k0, c3)
    v = vload_n(x, base + 4 * C, m)
    a2 = vfma(v, k5, a2)
    c2 = vfma(v, k2, c2)
    a3 = vfma(v, k4, a3)
    c3 = vfma(v, k1, c3)
    a4 = vfma(v, k3, a4)
    c4 = vfma(v, k0, c4)
    v = vload_n(x, base + 5 * C, m)
    a3 = vfma(v, k5, a3)
    c3 = vfma(v, k2, c3)
    a4 = vfma(v, k4, a4)
    c4 = vfma(v, k1, c4)
    a5 = vfma(v, k3, a5)
    c5 = vfma(v, k0, c5)
    v = vload_n(x, base + 6 * C, m)
    a4 = vfma(v, k5, a4)
    c4 = vfma(v, k2, c4)
    a5 = vfma(v, k4, a5)
    c5 = vfma(v, k1, c5)
    a6 = vfma(v, k3, a6)
    c6 = vfma(v, k0, c6)
    v = vload_n(x, base + 7 * C, m)
    a5 = vfma(v, k5, a5)
    c5 = vfma(v, k2, c5)
    a6 = vfma(v, k4, a6)
    c6 = vfma(v, k1, c6)
    a7 = vfma(v, k3, a7)
    c7 = vfma(v, k0, c7)
    v = vload_n(x, base + 8 * C, m)
    a6 = vfma(v, k5, a6)
    c6 = vfma(v, k2, c6)
    a7 = vfma(v, k4, a7)
    c7 = vfma(v, k1, c7)
    v = vload_n(x, base + 9 * C, m)
    a7 = vfma(v, k5, a7)
    c7 = vfma(v, k2, c7)
    base = r2 + xc
    v = vload_n(x, base, m)
    a0 = vfma(v, k6, a0)
    c0 = vfma(v, k3, c0)
    v = vload_n(x, base + 1 * C, m)
    a0 = vfma(v, k7, a0)
    c0 = vfma(v, k4, c0)
    a1 = vfma(v, k6, a1)
    c1 = vfma(v, k3, c1)
    v = vload_n(x, base + 2 * C, m)
    a0 = vfma(v, k8, a0)
    c0 = vfma(v, k5, c0)
    a1 = vfma(v, k7, a1)
    c1 = vfma(v, k4, c1)
    a2 = vfma(v, k6, a2)
    c2 = vfma(v, k3, c2)
    v = vload_n(x, base + 3 * C, m)
    a1 = vfma(v, k8, a1)
    c1 = vfma(v, k5, c1)
    a2 = vfma(v, k7, a2)
    c2 = vfma(v, k4, c2)
    a3 = vfma(v, k6, a3)
    c3 = vfma(v, k3, c3)
    v = vload_n(x, base + 4 * C, m)
    a2 = vfma(v, k8, a2)
    c2 = vfma(v, k5, c2)
    a3 = vfma(v, k7, a3)
    c3 = vfma(v, k4, c3)
    a4 = vfma(v, k6, a4)
    c4 = vfma(v, k3, c4)
    v = vload_n(x, base + 5 * C, m)
    a3 = vfma(v, k8, a3)
    c3 = vfma(v, k5, c3)
    a4 = vfma(v, k7, a4)
    c4 = vfma(v, k4, c4)
    a5 = vfma(v, k6, a5)
    c5 = vfma(v, k3, c5)
    v = vload_n(x, base + 6 * C, m)
    a4 = vfma(v, k8, a4)
    c4 = vfma(v, k5, c4)
    a5 = vfma(v, k7, a5)
    c5 = vfma(v, k4, c5)
    a6 = vfma(v, k6, a6)
    c6 = vfma(v, k3, c6)
    v = vload_n(x, base + 7 * C, m)
    a5 = vfma(v, k8, a5)
    c5 = vfma(v, k5, c5)
    a6 = vfma(v, k7, a6)
    c6 = vfma(v, k4, c6)
    a7 = vfma(v, k6, a7)
    c7 = vfma(v, k3, c7)
    v = vload_n(x, base + 8 * C, m)
    a6 = vfma(v, k8, a6)
    c6 = vfma(v, k5, c6)
    a7 = vfma(v, k7, a7)
    c7 = vfma(v, k4, c7)
    v = vload_n(x, base + 9 * C, m)
    a7 = vfma(v, k8, a7)
    c7 = vfma(v, k5, c7)
    base = r3 + xc
    v = vload_n(x, base, m)
    c0 = vfma(v, k6, c0)
    v = vload_n(x, base + 1 * C, m)
    c0 = vfma(v, k7, c0)
    c1 = vfma(v, k6, c1)
    v = vload_n(x, base + 2 * C, m)
    c0 = vfma(v, k8, c0)
    c1 = vfma(v, k7, c1)
    c2 = vfma(v, k6, c2)
    v = vload_n(x, base + 3 * C, m)
    c1 = vfma(v, k8, c1)
    c2 = vfma(v, k7, c2)
    c3 = vfma(v, k6, c3)
    v = vload_n(x, base + 4 * C, m)
    c2 = vfma(v, k8, c2)
    c3 = vfma(v, k7, c3)
    c4 = vfma(v, k6, c4)
    v = vload_n(x, base + 5 * C, m)
    c3 = vfma(v, k8, c3)
    c4 = vfma(v, k7, c4)
    c5 = vfma(v, k6, c5)
    v = vload_n(x, base + 6 * C, m)
    c4 = vfma(v, k8, c4)
    c5 = vfma(v, k7, c5)
    c6 = vfma(v, k6, c6)
    v = vload_n(x, base + 7 * C, m)
    c5 = vfma(v, k8, c5)
    c6 = vfma(v, k7, c6)
    c7 = vfma(v, k6, c7)
    v = vload_n(x, base + 8 * C, m)
    c6 = vfma(v, k8, c6)
    c7 = vfma(v, k7, c7)
    v = vload_n(x, base + 9 * C, m)
    c7 = vfma(v, k8, c7)
    vstore_n(y, o, a0, m)
    vstore_n(y, o + 1 * C, a1, m)
    vstore_n(y, o + 2 * C, a2, m)
    vstore_n(y, o + 3 * C, a3, m)
    vstore_n(y, o + 4 * C, a4, m)
    vstore_n(y, o + 5 * C, a5, m)
    vstore_n(y, o + 6 * C, a6, m)
    vstore_n(y, o + 7 * C, a7, m)
    vstore_n(y, o2, c0, m)
    vstore_n(y, o2 + 1 * C, c1, m)
    vstore_n(y, o2 + 2 * C, c2, m)
    vstore_n(y, o2 + 3 * C, c3, m)
    vstore_n(y, o2 + 4 * C, c4, m)
    vstore_n(y, o2 + 5 * C, c5, m)
    vstore_n(y, o2 + 6 * C, c6, m)
    vstore_n(y, o2 + 7 * C, c7, m)


@njit(cache=True, inline="always")
def _dw_tile_3x3_s2(x, y, o, xc, r0, r1, r2, C, m, k0, k1, k2, k3, k4, k5, k6, k7, k8, b):
    """Eight neighbouring output pixels of a 3x3, stride-2 depthwise kernel (MobileNet's
    downsampling layers), one vector of channels: each kernel row's 17 input columns are
    loaded once (the generic tile loads 24 and reloads the weights)."""
    a0 = b
    a1 = b
    a2 = b
    a3 = b
    a4 = b
    a5 = b
    a6 = b
    a7 = b
    for r in range(3):
        base = (r0 if r == 0 else (r1 if r == 1 else r2)) + xc
        w0 = k0 if r == 0 else (k3 if r == 1 else k6)
        w1 = k1 if r == 0 else (k4 if r == 1 else k7)
        w2 = k2 if r == 0 else (k5 if r == 1 else k8)
        v = vload_n(x, base, m)
        a0 = vfma(v, w0, a0)
        v = vload_n(x, base + 1 * C, m)
        a0 = vfma(v, w1, a0)
        v = vload_n(x, base + 2 * C, m)
        a0 = vfma(v, w2, a0)
        a1 = vfma(v, w0, a1)
        v = vload_n(x, base + 3 * C, m)
        a1 = vfma(v, w1, a1)
        v = vload_n(x, base + 4 * C, m)
        a1 = vfma(v, w2, a1)
        a2 = vfma(v, w0, a2)
        v = vload_n(x, base + 5 * C, m)
        a2 = vfma(v, w1, a2)
        v = vload_n(x, base + 6 * C, m)
        a2 = vfma(v, w2, a2)
        a3 = vfma(v, w0, a3)
        v = vload_n(x, base + 7 * C, m)
        a3 = vfma(v, w1, a3)
        v = vload_n(x, base + 8 * C, m)
        a3 = vfma(v, w2, a3)
        a4 = vfma(v, w0, a4)
        v = vload_n(x, base + 9 * C, m)
        a4 = vfma(v, w1, a4)
        v = vload_n(x, base + 10 * C, m)
        a4 = vfma(v, w2, a4)
        a5 = vfma(v, w0, a5)
        v = vload_n(x, base + 11 * C, m)
        a5 = vfma(v, w1, a5)
        v = vload_n(x, base + 12 * C, m)
        a5 = vfma(v, w2, a5)
        a6 = vfma(v, w0, a6)
        v = vload_n(x, base + 13 * C, m)
        a6 = vfma(v, w1, a6)
        v = vload_n(x, base + 14 * C, m)
        a6 = vfma(v, w2, a6)
        a7 = vfma(v, w0, a7)
        v = vload_n(x, base + 15 * C, m)
        a7 = vfma(v, w1, a7)
        v = vload_n(x, base + 16 * C, m)
        a7 = vfma(v, w2, a7)
    vstore_n(y, o, a0, m)
    vstore_n(y, o + 1 * C, a1, m)
    vstore_n(y, o + 2 * C, a2, m)
    vstore_n(y, o + 3 * C, a3, m)
    vstore_n(y, o + 4 * C, a4, m)
    vstore_n(y, o + 5 * C, a5, m)
    vstore_n(y, o + 6 * C, a6, m)
    vstore_n(y, o + 7 * C, a7, m)


@njit(cache=True, inline="always")
def _dw_tile(x, wt, y, o, xc, rows, taps0, nr, KW, C, c0, m, step, tapstep, b):
    """Four output pixels ``step`` apart in the input (any kernel, stride, dilation), one
    vector of channels, every tap of the ``nr`` kernel rows inside the input."""
    a0 = b
    a1 = b
    a2 = b
    a3 = b
    for r in range(nr):
        col = rows[r] + xc
        t = taps0[r] * C + c0
        for kw in range(KW):
            wv = vload_n(wt, t, m)
            a0 = vfma(vload_n(x, col, m), wv, a0)
            a1 = vfma(vload_n(x, col + step, m), wv, a1)
            a2 = vfma(vload_n(x, col + 2 * step, m), wv, a2)
            a3 = vfma(vload_n(x, col + 3 * step, m), wv, a3)
            col += tapstep
            t += C
    vstore_n(y, o, a0, m)
    vstore_n(y, o + C, a1, m)
    vstore_n(y, o + 2 * C, a2, m)
    vstore_n(y, o + 3 * C, a3, m)


@njit(cache=True, inline="always")
def _dw_pixel(x, wt, y, o, ow, W, rows, taps0, nr, KW, C, c0, m, sw, dw, bw, b):
    """One output pixel, one vector of channels, checking each tap's column."""
    a = b
    for r in range(nr):
        t = taps0[r] * C + c0
        for kw in range(KW):
            i_w = ow * sw - bw + kw * dw
            if 0 <= i_w < W:
                a = vfma(vload_n(x, rows[r] + i_w * C + c0, m), vload_n(wt, t + kw * C, m), a)
    vstore_n(y, o, a, m)


@njit(cache=True, inline="always")
def _taps_3x3(wt, C, c0, m):
    """The 9 weight vectors of a 3x3 kernel for channels c0 .. c0 + m (``wt``: taps, C)."""
    return (vload_n(wt, c0, m), vload_n(wt, C + c0, m), vload_n(wt, 2 * C + c0, m), vload_n(wt, 3 * C + c0, m),
            vload_n(wt, 4 * C + c0, m), vload_n(wt, 5 * C + c0, m), vload_n(wt, 6 * C + c0, m),
            vload_n(wt, 7 * C + c0, m), vload_n(wt, 8 * C + c0, m))


@njit(cache=True, inline="always")
def _dw_chunk(C, itemsize, unit):
    """Output pixels per chunk of a depthwise row: those whose input columns fill about
    4 KiB, a multiple of ``unit``, and at least one 8-pixel tile (4 KiB holds only 4 pixels
    above 128 float32 channels, and then only the 4-pixel tiles ran, waiting on FMA
    latency: 1x56x56x144 was 15% slower)."""
    return max(2 * _TILE, (4096 // (C * itemsize)) // unit * unit)


@njit(cache=True, inline="always")
def _depthwise_row(x, wt, y, ybase, n, od, oh, rows, taps0, OW, strides, dilation, before, ksize, bias,
                   has_bias, first=-1):
    """Output row (n, od, oh) of a depthwise convolution (multiplier 1, no activation), its
    pixels stored from flat index ``ybase`` of ``y``; ``rows`` and ``taps0`` are scratch
    (one entry per kernel row).  With ``first >= 0`` the interior columns before ``first``
    are already computed (:func:`_depthwise_pair_interior`).  A row is cut into chunks of pixels whose input columns
    stay in L1 while every channel vector of the chunk is computed (with many channels, a
    whole row would evict itself: pixels a multiple of 1 KiB apart share few cache sets)."""
    C = x.shape[4]
    W = x.shape[3]
    KW = ksize[2]
    sw, dw, bw = strides[2], dilation[2], before[2]
    lo, hi = interior_columns(W, OW, KW, sw, dw, bw)
    fast = ksize[0] == 1 and ksize[1] == 3 and KW == 3 and sw == 1 and dw == 1
    fast2 = ksize[0] == 1 and ksize[1] == 3 and KW == 3 and sw == 2 and dw == 1
    chunk = _dw_chunk(C, x.itemsize, _TILE)
    L = lanes(x)  # a constant once inlined
    nr = kernel_rows(n, od, oh, x.shape, ksize, strides, dilation, before, rows, taps0)
    for q0 in range(max(lo, first), hi, chunk):
        q1 = min(hi, q0 + chunk)
        if q1 - q0 < _TILE:  # a short last chunk joins the previous one's pixels
            q0 = max(lo, q1 - _TILE)
        for c0 in range(0, C, L):
            m = min(L, C - c0)
            b = vload_n(bias, c0, m) if has_bias else vzero(x)
            ow = q0
            if q1 - q0 < _TILE:  # fewer pixels than a tile: per pixel below
                pass
            elif fast and nr == 3:
                k0, k1, k2, k3, k4, k5, k6, k7, k8 = _taps_3x3(wt, C, c0, m)
                while ow + 2 * _TILE <= q1:  # tiles of 8 while they fit
                    if m == L:
                        _dw_tile_3x3_8(x, y, ybase + ow * C + c0, (ow - bw) * C + c0, rows[0], rows[1],
                                       rows[2], C, L, k0, k1, k2, k3, k4, k5, k6, k7, k8, b)
                    else:
                        _dw_tile_3x3_8(x, y, ybase + ow * C + c0, (ow - bw) * C + c0, rows[0], rows[1],
                                       rows[2], C, m, k0, k1, k2, k3, k4, k5, k6, k7, k8, b)
                    ow += 2 * _TILE
                while ow < q1:
                    # a last partial tile is moved back to end at q1: it recomputes a few
                    # pixels (same values) instead of taking the slow per-pixel path
                    ow = max(q0, min(ow, q1 - _TILE))
                    if m == L:  # a constant mask: plain loads and stores once inlined
                        _dw_tile_3x3(x, y, ybase + ow * C + c0, (ow - bw) * C + c0, rows[0], rows[1], rows[2],
                                     C, L, k0, k1, k2, k3, k4, k5, k6, k7, k8, b)
                    else:
                        _dw_tile_3x3(x, y, ybase + ow * C + c0, (ow - bw) * C + c0, rows[0], rows[1], rows[2],
                                     C, m, k0, k1, k2, k3, k4, k5, k6, k7, k8, b)
                    ow += _TILE
            else:
                if fast2 and nr == 3:
                    k0, k1, k2, k3, k4, k5, k6, k7, k8 = _taps_3x3(wt, C, c0, m)
                    while ow + 2 * _TILE <= q1:  # stride-2 tiles of 8, then the generic ones
                        if m == L:
                            _dw_tile_3x3_s2(x, y, ybase + ow * C + c0, (2 * ow - bw) * C + c0, rows[0],
                                            rows[1], rows[2], C, L, k0, k1, k2, k3, k4, k5, k6, k7, k8, b)
                        else:
                            _dw_tile_3x3_s2(x, y, ybase + ow * C + c0, (2 * ow - bw) * C + c0, rows[0],
                                            rows[1], rows[2], C, m, k0, k1, k2, k3, k4, k5, k6, k7, k8, b)
                        ow += 2 * _TILE
                while ow < q1:
                    ow = max(q0, min(ow, q1 - _TILE))
                    if m == L:
                        _dw_tile(x, wt, y, ybase + ow * C + c0, (ow * sw - bw) * C + c0, rows, taps0, nr, KW,
                                 C, c0, L, sw * C, dw * C, b)
                    else:
                        _dw_tile(x, wt, y, ybase + ow * C + c0, (ow * sw - bw) * C + c0, rows, taps0, nr, KW,
                                 C, c0, m, sw * C, dw * C, b)
                    ow += _TILE
            for ow in range(ow, q1):
                _dw_pixel(x, wt, y, ybase + ow * C + c0, ow, W, rows, taps0, nr, KW, C, c0, m, sw, dw, bw, b)
    for c0 in range(0, C, L):
        m = min(L, C - c0)
        b = vload_n(bias, c0, m) if has_bias else vzero(x)
        for ow in range(lo):
            _dw_pixel(x, wt, y, ybase + ow * C + c0, ow, W, rows, taps0, nr, KW, C, c0, m, sw, dw, bw, b)
        for ow in range(hi, OW):
            _dw_pixel(x, wt, y, ybase + ow * C + c0, ow, W, rows, taps0, nr, KW, C, c0, m, sw, dw, bw, b)


@njit(cache=True)
def _depthwise_pair_interior(x, wt, y, ybase, n, od, oh, OW, strides, dilation, before, ksize, bias, has_bias):
    """Output rows (n, od, oh) and (n, od, oh + 1) of a 3x3 unit-stride depthwise convolution
    whose six kernel rows all lie inside the input, C a whole number of vectors: their interior
    columns from the first on, in 2-row tiles (:func:`_dw_tile_3x3_8x2`), stored from flat
    indices ``ybase`` and ``ybase + OW * C``.  Returns the first column left to
    :func:`_depthwise_row` (-1: none computed, the pair does not qualify).  Not inlined: one
    compiled copy of the large tile serves every caller."""
    C = x.shape[4]
    W = x.shape[3]
    H = x.shape[2]
    L = lanes(x)
    bw = before[2]
    top = oh * strides[1] - before[1]
    i_d = od * strides[0] - before[0]
    if not (ksize[0] == 1 and ksize[1] == 3 and ksize[2] == 3 and strides[2] == 1 and dilation[2] == 1
            and strides[1] == 1 and dilation[1] == 1 and C % L == 0 and top >= 0 and top + 3 < H
            and 0 <= i_d < x.shape[1]):
        return -1
    lo, hi = interior_columns(W, OW, 3, 1, 1, bw)
    first = lo + (hi - lo) // (2 * _TILE) * (2 * _TILE)
    chunk = _dw_chunk(C, x.itemsize, 2 * _TILE)
    r0 = ((n * x.shape[1] + i_d) * H + top) * W * C
    for q0 in range(lo, first, chunk):
        q1 = min(first, q0 + chunk)
        for c0 in range(0, C, L):
            b = vload(bias, c0) if has_bias else vzero(x)
            k0, k1, k2, k3, k4, k5, k6, k7, k8 = _taps_3x3(wt, C, c0, L)
            for ow in range(q0, q1, 2 * _TILE):
                o = ybase + ow * C + c0
                _dw_tile_3x3_8x2(x, y, o, o + OW * C, (ow - bw) * C + c0, r0, r0 + W * C, r0 + 2 * W * C,
                                 r0 + 3 * W * C, C, L, k0, k1, k2, k3, k4, k5, k6, k7, k8, b)
    return first


@njit(parallel=True, cache=True)
def depthwise(x, wt, y, strides, dilation, before, ksize, bias, has_bias, code):
    """Depthwise convolution with multiplier 1, direct with register tiles:
    ``y[.., c] = bias[c] + sum_tap x[.., c] * wt[tap, c]``, then the activation.
    One task per pair of output rows (:func:`_depthwise_pair_interior`, then
    :func:`_depthwise_row` for each; a plane's last row alone when it has an odd count); ``x``, ``wt`` (taps, C), ``y`` and ``bias`` contiguous."""
    N = x.shape[0]
    _, OD, OH, OW, C = y.shape
    KD, KH = ksize[0], ksize[1]
    NP = (OH + 1) // 2
    # per-task kernel-row tables, allocated once (an allocation per row costs ~0.1 us)
    rows_all = np.empty((N * OD * NP, KD * KH), np.int64)
    taps_all = np.empty((N * OD * NP, KD * KH), np.int64)
    for t in prange(N * OD * NP):
        n = t // (OD * NP)
        od = (t // NP) % OD
        oh = (t % NP) * 2
        row = (n * OD + od) * OH + oh
        pair = oh + 1 < OH
        first = _depthwise_pair_interior(x, wt, y, row * OW * C, n, od, oh, OW, strides, dilation, before, ksize,
                                         bias, has_bias) if pair else -1
        for k in range(2 if pair else 1):
            _depthwise_row(x, wt, y, (row + k) * OW * C, n, od, oh + k, rows_all[t], taps_all[t], OW, strides,
                           dilation, before, ksize, bias, has_bias, first)
            if code != 0:
                epilogue(y[n, od, oh + k], bias, False, code)


@njit(cache=True, inline="always")
def _mm_tile_6x4(A, r, K, offs, W, f0, F, Y, o, b0, b1, b2, b3):
    """Six rows ``r`` ... ``r + 5`` of ``Y = sum_t A[rows + offs[t]] @ W[t]`` (A a C-contiguous
    (m, K) matrix, W (taps, K, F) or (K, F) for one tap) x four vectors of columns from ``f0``,
    into ``Y`` from flat index ``o`` (rows ``F`` apart): 24 accumulators in registers (of
    AVX-512's 32), each step loading four weight vectors and broadcasting one value of each
    row.  Every output adds its terms in order of ``t``, then ``k``, to its start value (``b0``
    ... ``b3``: the bias, or zero), whatever the tiling."""
    L = lanes(W)
    a00, a01, a02, a03 = b0, b1, b2, b3
    a10, a11, a12, a13, a20, a21, a22, a23 = b0, b1, b2, b3, b0, b1, b2, b3
    a30, a31, a32, a33, a40, a41, a42, a43, a50, a51, a52, a53 = b0, b1, b2, b3, b0, b1, b2, b3, b0, b1, b2, b3
    for t in range(offs.shape[0]):
        a = (r + offs[t]) * K
        k = t * K * F + f0
        for j in range(K):
            w0 = vload(W, k)
            w1 = vload(W, k + L)
            w2 = vload(W, k + 2 * L)
            w3 = vload(W, k + 3 * L)
            s = vbroadcast(A, a + j)
            a00 = vfma(s, w0, a00)
            a01 = vfma(s, w1, a01)
            a02 = vfma(s, w2, a02)
            a03 = vfma(s, w3, a03)
            s = vbroadcast(A, a + K + j)
            a10 = vfma(s, w0, a10)
            a11 = vfma(s, w1, a11)
            a12 = vfma(s, w2, a12)
            a13 = vfma(s, w3, a13)
            s = vbroadcast(A, a + 2 * K + j)
            a20 = vfma(s, w0, a20)
            a21 = vfma(s, w1, a21)
            a22 = vfma(s, w2, a22)
            a23 = vfma(s, w3, a23)
            s = vbroadcast(A, a + 3 * K + j)
            a30 = vfma(s, w0, a30)
            a31 = vfma(s, w1, a31)
            a32 = vfma(s, w2, a32)
            a33 = vfma(s, w3, a33)
            s = vbroadcast(A, a + 4 * K + j)
            a40 = vfma(s, w0, a40)
            a41 = vfma(s, w1, a41)
            a42 = vfma(s, w2, a42)
            a43 = vfma(s, w3, a43)
            s = vbroadcast(A, a + 5 * K + j)
            a50 = vfma(s, w0, a50)
            a51 = vfma(s, w1, a51)
            a52 = vfma(s, w2, a52)
            a53 = vfma(s, w3, a53)
            k += F
    vstore(Y, o, a00)
    vstore(Y, o + L, a01)
    vstore(Y, o + 2 * L, a02)
    vstore(Y, o + 3 * L, a03)
    o += F
    vstore(Y, o, a10)
    vstore(Y, o + L, a11)
    vstore(Y, o + 2 * L, a12)
    vstore(Y, o + 3 * L, a13)
    o += F
    vstore(Y, o, a20)
    vstore(Y, o + L, a21)
    vstore(Y, o + 2 * L, a22)
    vstore(Y, o + 3 * L, a23)
    o += F
    vstore(Y, o, a30)
    vstore(Y, o + L, a31)
    vstore(Y, o + 2 * L, a32)
    vstore(Y, o + 3 * L, a33)
    o += F
    vstore(Y, o, a40)
    vstore(Y, o + L, a41)
    vstore(Y, o + 2 * L, a42)
    vstore(Y, o + 3 * L, a43)
    o += F
    vstore(Y, o, a50)
    vstore(Y, o + L, a51)
    vstore(Y, o + 2 * L, a52)
    vstore(Y, o + 3 * L, a53)


@njit(cache=True, inline="always")
def _mm_row(A, r, K, offs, W, f0, F, Y, o, m, acc):
    """Row ``r`` of ``Y`` (see :func:`_mm_tile_6x4`), one vector of columns from ``f0``, masked
    to ``m`` lanes, from the start vector ``acc``; the same order of terms."""
    for t in range(offs.shape[0]):
        a = (r + offs[t]) * K
        k = t * K * F + f0
        for j in range(K):
            acc = vfma(vbroadcast(A, a + j), vload_n(W, k, m), acc)
            k += F
    vstore_n(Y, o, acc, m)


@njit(cache=True)
def conv_tiles(A, q0, q1, offs, W, Y, bias, has_bias):
    """Rows ``q0`` ... ``q1 - 1`` of ``Y = bias + sum_t A[rows + offs[t]] @ W[t]`` (see
    :func:`_mm_tile_6x4`; ``has_bias`` False: from zero) for C-contiguous (m, K) ``A``,
    (taps, K, F) or (K, F) ``W`` and (m', F) ``Y``, one thread: blocks of four vectors of
    columns by tiles of six rows in registers (a block's weights, taps x K x 256 bytes, stay in
    L1/L2 while the rows stream past), the rest of the rows and columns by single rows and
    vectors."""
    K = A.shape[1]
    F = Y.shape[1]
    L = lanes(W)
    f4 = F - F % (4 * L)
    z = vzero(W)
    for f0 in range(0, f4, 4 * L):
        b0, b1, b2, b3 = z, z, z, z
        if has_bias:
            b0 = vload(bias, f0)
            b1 = vload(bias, f0 + L)
            b2 = vload(bias, f0 + 2 * L)
            b3 = vload(bias, f0 + 3 * L)
        i = q0
        while i + 6 <= q1:
            _mm_tile_6x4(A, i, K, offs, W, f0, F, Y, i * F + f0, b0, b1, b2, b3)
            i += 6
        while i < q1:
            _mm_row(A, i, K, offs, W, f0, F, Y, i * F + f0, L, b0)
            _mm_row(A, i, K, offs, W, f0 + L, F, Y, i * F + f0 + L, L, b1)
            _mm_row(A, i, K, offs, W, f0 + 2 * L, F, Y, i * F + f0 + 2 * L, L, b2)
            _mm_row(A, i, K, offs, W, f0 + 3 * L, F, Y, i * F + f0 + 3 * L, L, b3)
            i += 1
    for f0 in range(f4, F, L):
        n = min(L, F - f0)
        b = vload_n(bias, f0, n) if has_bias else z
        for i in range(q0, q1):
            _mm_row(A, i, K, offs, W, f0, F, Y, i * F + f0, n, b)


@njit(cache=True)
def matmul_tiles(A, W, Y, bias, has_bias):
    """``Y = A @ W`` (plus ``bias``, length F, when ``has_bias``: the accumulators start from it)
    for C-contiguous (m, K), (K, F) and (m, F) matrices, one thread, by :func:`conv_tiles`.  It
    replaced per-thread BLAS calls: 1x1 convolutions 56x56x256->64 and 38x38x256->256 took
    18-20% less time at 2 threads, the fused separable 38x38x256 6-11%."""
    conv_tiles(A, 0, A.shape[0], np.zeros(1, np.int64), W, Y, bias, has_bias)


@njit(parallel=True, cache=True)
def separable(x, wt, W2, Y2, OD, OH, OW, task_rows, scratch, strides, dilation, before, ksize, bias, has_bias,
              code, tiles):
    """Depthwise (multiplier 1) then pointwise convolution, fused: each task computes the
    depthwise output of ``task_rows`` output rows into its thread's ``scratch`` (the
    intermediate is never written to memory as a whole), multiplies that
    block by the pointwise matrix ``W2`` (C, F) (:func:`matmul_tiles` from the bias when
    ``tiles``, see ``numba._tiles_fit``; else BLAS) into ``Y2`` (pixels, F), then applies the
    activation while the block is in cache."""
    N = x.shape[0]
    C = x.shape[4]
    KD, KH = ksize[0], ksize[1]
    total = N * OD * OH
    zero = np.zeros(C, x.dtype)
    tables = np.empty((scratch.shape[0], 2, KD * KH), np.int64)
    for t in prange((total + task_rows - 1) // task_rows):
        r0 = t * task_rows
        r1 = min(total, r0 + task_rows)
        tid = get_thread_id()
        buf = scratch[tid]
        row = r0
        while row < r1:
            n = row // (OD * OH)
            od = (row // OH) % OD
            oh = row % OH
            pair = row + 1 < r1 and oh + 1 < OH  # two rows of one image plane at a time
            first = _depthwise_pair_interior(x, wt, buf, (row - r0) * OW * C, n, od, oh, OW, strides, dilation,
                                             before, ksize, zero, False) if pair else -1
            for k in range(2 if pair else 1):
                _depthwise_row(x, wt, buf, (row + k - r0) * OW * C, n, od, oh + k, tables[tid, 0], tables[tid, 1],
                               OW, strides, dilation, before, ksize, zero, False, first)
            row += 2 if pair else 1
        out = Y2[r0 * OW:r1 * OW]
        block = buf[:(r1 - r0) * OW * C].reshape(((r1 - r0) * OW, C))
        if tiles:
            matmul_tiles(block, W2, out, bias, has_bias)
            if code:
                epilogue(out, bias, False, code)
        else:
            gemm(block, W2, out, 0.0)
            if has_bias or code:
                epilogue(out, bias, has_bias, code)


@njit(cache=True, inline="always")
def _fc_tile_4x2(x, w2, y, o, xc, rows, taps0, nr, KW, C, F, f0, m, step, tapstep, b0, b1):
    """Four output pixels x two vectors of output channels (the second masked to ``m``
    lanes): every (tap, input channel) term broadcasts one input value per pixel and
    multiplies two weight vectors."""
    L = lanes(w2)
    a0 = b0
    a1 = b0
    a2 = b0
    a3 = b0
    e0 = b1
    e1 = b1
    e2 = b1
    e3 = b1
    run = KW * C if tapstep == C else C  # as in _fc_tile_8x1
    for r in range(nr):
        for kw in range(0, KW, run // C):
            i = rows[r] + xc + kw * tapstep
            k = (taps0[r] + kw) * C * F + f0
            for j in range(run):
                w0 = vload(w2, k)
                w1 = vload_n(w2, k + L, m)
                s = vbroadcast(x, i)
                a0 = vfma(s, w0, a0)
                e0 = vfma(s, w1, e0)
                s = vbroadcast(x, i + step)
                a1 = vfma(s, w0, a1)
                e1 = vfma(s, w1, e1)
                s = vbroadcast(x, i + 2 * step)
                a2 = vfma(s, w0, a2)
                e2 = vfma(s, w1, e2)
                s = vbroadcast(x, i + 3 * step)
                a3 = vfma(s, w0, a3)
                e3 = vfma(s, w1, e3)
                k += F
                i += 1
    vstore(y, o, a0)
    vstore_n(y, o + L, e0, m)
    vstore(y, o + F, a1)
    vstore_n(y, o + F + L, e1, m)
    vstore(y, o + 2 * F, a2)
    vstore_n(y, o + 2 * F + L, e2, m)
    vstore(y, o + 3 * F, a3)
    vstore_n(y, o + 3 * F + L, e3, m)


@njit(cache=True, inline="always")
def _fc_tile_8x1(x, w2, y, o, xc, rows, taps0, nr, KW, C, F, f0, m, step, tapstep, b):
    """Eight output pixels x one vector of output channels (masked to ``m`` lanes)."""
    a0 = b
    a1 = b
    a2 = b
    a3 = b
    a4 = b
    a5 = b
    a6 = b
    a7 = b
    # the (kw, c) terms of a kernel row: runs of C values, tapstep apart in the input
    run = KW * C if tapstep == C else C
    for r in range(nr):
        for kw in range(0, KW, run // C):
            i = rows[r] + xc + kw * tapstep
            k = (taps0[r] + kw) * C * F + f0
            for j in range(run):
                wv = vload_n(w2, k, m)
                a0 = vfma(vbroadcast(x, i), wv, a0)
                a1 = vfma(vbroadcast(x, i + step), wv, a1)
                a2 = vfma(vbroadcast(x, i + 2 * step), wv, a2)
                a3 = vfma(vbroadcast(x, i + 3 * step), wv, a3)
                a4 = vfma(vbroadcast(x, i + 4 * step), wv, a4)
                a5 = vfma(vbroadcast(x, i + 5 * step), wv, a5)
                a6 = vfma(vbroadcast(x, i + 6 * step), wv, a6)
                a7 = vfma(vbroadcast(x, i + 7 * step), wv, a7)
                k += F
                i += 1
    vstore_n(y, o, a0, m)
    vstore_n(y, o + F, a1, m)
    vstore_n(y, o + 2 * F, a2, m)
    vstore_n(y, o + 3 * F, a3, m)
    vstore_n(y, o + 4 * F, a4, m)
    vstore_n(y, o + 5 * F, a5, m)
    vstore_n(y, o + 6 * F, a6, m)
    vstore_n(y, o + 7 * F, a7, m)


@njit(cache=True, inline="always")
def _fc_pixel(x, w2, y, o, ow, W, rows, taps0, nr, KW, C, F, f0, m, sw, dw, bw, b):
    """One output pixel x one vector of output channels, checking each tap's column."""
    a = b
    for r in range(nr):
        k = taps0[r] * C * F + f0
        for kw in range(KW):
            i_w = ow * sw - bw + kw * dw
            if 0 <= i_w < W:
                col = rows[r] + i_w * C
                for c in range(C):
                    a = vfma(vbroadcast(x, col + c), vload_n(w2, k + c * F, m), a)
            k += C * F
    vstore_n(y, o, a, m)


@njit(parallel=True, cache=True)
def few_channel_conv(x, w2, y, strides, dilation, before, ksize, bias, has_bias, code):
    """Dense convolution of an input with few channels (an RGB stem, a volume), direct with
    register tiles vectorised along the output channels: ``y[.., f] = bias[f] +
    sum_(tap, c) x[.., c] * w2[tap * C + c, f]``, then the activation.  GEMM formulations
    have K = taps * C too short to pay here.  One thread per output row; ``x``, ``w2``
    (taps * C, F), ``y`` and ``bias`` contiguous."""
    N, D, H, W, C = x.shape
    _, OD, OH, OW, F = y.shape
    KD, KH, KW = ksize
    sw, dw, bw = strides[2], dilation[2], before[2]
    lo, hi = interior_columns(W, OW, KW, sw, dw, bw)
    rows_all = np.empty((N * OD * OH, KD * KH), np.int64)
    taps_all = np.empty((N * OD * OH, KD * KH), np.int64)
    for row in prange(N * OD * OH):
        L = lanes(x)  # in the loop body: a constant there (a parfor passes outer values in)
        n = row // (OD * OH)
        od = (row // OH) % OD
        oh = row % OH
        rows = rows_all[row]
        taps0 = taps_all[row]
        nr = kernel_rows(n, od, oh, x.shape, ksize, strides, dilation, before, rows, taps0)
        ybase = row * OW * F
        # interior pixels: tiles of 4 (two vectors of channels) or 8 (one vector)
        f0 = 0
        while f0 < F:
            wide = F - f0 > L
            width = 2 * L if wide else L
            tile = 4 if wide else 8
            m = min(L, F - f0 - L) if wide else F - f0
            b0 = vload(bias, f0) if wide and has_bias else (vload_n(bias, f0, m) if has_bias else vzero(x))
            b1 = vload_n(bias, f0 + L, m) if wide and has_bias else vzero(x)
            ow = lo
            if hi - lo >= tile:
                while ow < hi:
                    ow = min(ow, hi - tile)  # the last tile overlaps its neighbour
                    o = ybase + ow * F + f0
                    xc = (ow * sw - bw) * C
                    # the usual pixel pitches as constants: the tile then addresses its
                    # pixels by displacement from one register (no spilled pointers)
                    step = sw * C
                    if wide:
                        if step == 3:
                            _fc_tile_4x2(x, w2, y, o, xc, rows, taps0, nr, KW, C, F, f0, m, 3, dw * C, b0, b1)
                        elif step == 6:
                            _fc_tile_4x2(x, w2, y, o, xc, rows, taps0, nr, KW, C, F, f0, m, 6, dw * C, b0, b1)
                        elif step == 1:
                            _fc_tile_4x2(x, w2, y, o, xc, rows, taps0, nr, KW, C, F, f0, m, 1, dw * C, b0, b1)
                        else:
                            _fc_tile_4x2(x, w2, y, o, xc, rows, taps0, nr, KW, C, F, f0, m, step, dw * C, b0, b1)
                    else:
                        if step == 1 and m == L:
                            _fc_tile_8x1(x, w2, y, o, xc, rows, taps0, nr, KW, C, F, f0, L, 1, dw * C, b0)
                        elif step == 1:
                            _fc_tile_8x1(x, w2, y, o, xc, rows, taps0, nr, KW, C, F, f0, m, 1, dw * C, b0)
                        elif step == 3:
                            _fc_tile_8x1(x, w2, y, o, xc, rows, taps0, nr, KW, C, F, f0, m, 3, dw * C, b0)
                        elif step == 6:
                            _fc_tile_8x1(x, w2, y, o, xc, rows, taps0, nr, KW, C, F, f0, m, 6, dw * C, b0)
                        else:
                            _fc_tile_8x1(x, w2, y, o, xc, rows, taps0, nr, KW, C, F, f0, m, step, dw * C, b0)
                    ow += tile
            # fewer interior pixels than a tile, and the border: per pixel
            for ow in range(OW):
                if lo <= ow < hi and hi - lo >= tile:
                    continue
                for v in range(2 if wide else 1):
                    fv = f0 + v * L
                    mv = L if wide and v == 0 else m
                    bv = b1 if v == 1 else b0
                    _fc_pixel(x, w2, y, ybase + ow * F + fv, ow, W, rows, taps0, nr, KW, C, F, fv, mv,
                              sw, dw, bw, bv)
            f0 += width
        if code != 0:
            epilogue(y[n, od, oh], bias, False, code)


@njit(cache=True, inline="always")
def _rot(v, G):
    """``vrot_groups`` for a group size known once inlined (2, 4 or 8)."""
    if G == 2:
        return vrot_groups(v, 2)
    if G == 4:
        return vrot_groups(v, 4)
    return vrot_groups(v, 8)


@njit(cache=True, inline="always")
def _gc_tile(x, wr, y, o, col0, rows, taps0, nr, KW, C, G, c0, m, step, tapstep, b):
    """Four output pixels x one vector of channels of a grouped convolution with G input
    and G output channels per group (see :func:`grouped_rot`)."""
    a0 = b
    a1 = b
    a2 = b
    a3 = b
    for r in range(nr):
        col = rows[r] + col0
        k = taps0[r] * G * C + c0
        for kw in range(KW):
            v0 = vload_n(x, col, m)
            v1 = vload_n(x, col + step, m)
            v2 = vload_n(x, col + 2 * step, m)
            v3 = vload_n(x, col + 3 * step, m)
            for s in range(G):
                ws = vload_n(wr, k, m)
                a0 = vfma(v0, ws, a0)
                a1 = vfma(v1, ws, a1)
                a2 = vfma(v2, ws, a2)
                a3 = vfma(v3, ws, a3)
                v0 = _rot(v0, G)
                v1 = _rot(v1, G)
                v2 = _rot(v2, G)
                v3 = _rot(v3, G)
                k += C
            col += tapstep
    vstore_n(y, o, a0, m)
    vstore_n(y, o + C, a1, m)
    vstore_n(y, o + 2 * C, a2, m)
    vstore_n(y, o + 3 * C, a3, m)


@njit(cache=True, inline="always")
def _gc_pixel(x, wr, y, o, ow, W, rows, taps0, nr, KW, C, G, c0, m, sw, dw, bw, b):
    """One output pixel of :func:`grouped_rot`, checking each tap's column."""
    a = b
    for r in range(nr):
        for kw in range(KW):
            i_w = ow * sw - bw + kw * dw
            if 0 <= i_w < W:
                v = vload_n(x, rows[r] + i_w * C + c0, m)
                k = (taps0[r] + kw) * G * C + c0
                for s in range(G):
                    a = vfma(v, vload_n(wr, k, m), a)
                    v = _rot(v, G)
                    k += C
    vstore_n(y, o, a, m)


@njit(cache=True, inline="always")
def _grouped_rot_row(x, wr, y, row, G, strides, dilation, before, ksize, bias, has_bias, rows, taps0):
    N, D, H, W, C = x.shape
    _, OD, OH, OW, _ = y.shape
    KD, KH, KW = ksize
    L = lanes(x)
    sw, dw, bw = strides[2], dilation[2], before[2]
    lo, hi = interior_columns(W, OW, KW, sw, dw, bw)
    n = row // (OD * OH)
    od = (row // OH) % OD
    oh = row % OH
    nr = kernel_rows(n, od, oh, x.shape, ksize, strides, dilation, before, rows, taps0)
    ybase = row * OW * C
    for c0 in range(0, C, L):
        m = min(L, C - c0)
        b = vload_n(bias, c0, m) if has_bias else vzero(x)
        ow = lo
        if hi - lo >= _TILE:
            while ow < hi:
                ow = min(ow, hi - _TILE)  # the last tile overlaps its neighbour
                _gc_tile(x, wr, y, ybase + ow * C + c0, (ow * sw - bw) * C + c0, rows, taps0, nr, KW, C, G, c0,
                         m, sw * C, dw * C, b)
                ow += _TILE
        for ow in range(OW):
            if hi - lo >= _TILE and lo <= ow < hi:
                continue
            _gc_pixel(x, wr, y, ybase + ow * C + c0, ow, W, rows, taps0, nr, KW, C, G, c0, m, sw, dw, bw, b)


@njit(parallel=True, cache=True)
def grouped_rot(x, wr, y, G, strides, dilation, before, ksize, bias, has_bias, code):
    """Grouped convolution with G = 2, 4 or 8 input and output channels per group, direct
    with register tiles, vectorised along channels (input channel i and output channel i
    belong to the same group, so a vector of the input lines up with the output).

    Output channel ``f = g * G + o`` is ``sum_j x[g * G + j] * w[j, f]``; rotating the
    input vector by ``s`` lanes within each group brings input ``j = (o + s) % G`` to
    lane ``f``, so the sum is G multiply-adds of rotated vectors with the weights
    ``wr[tap, s, f] = w[tap, (f % G + s) % G, f]`` (prepared by the caller): no
    block-diagonal zeros, no gathers.  ``x``, ``wr`` (taps, G, C), ``y``, ``bias``
    contiguous; one thread per output row."""
    N, D, H, W, C = x.shape
    _, OD, OH, OW, _ = y.shape
    KD, KH, KW = ksize
    rows_all = np.empty((N * OD * OH, KD * KH), np.int64)
    taps_all = np.empty((N * OD * OH, KD * KH), np.int64)
    for row in prange(N * OD * OH):
        # the group size as a constant in each copy: rotations unroll to one shuffle each
        if G == 4:
            _grouped_rot_row(x, wr, y, row, 4, strides, dilation, before, ksize, bias, has_bias,
                             rows_all[row], taps_all[row])
        elif G == 2:
            _grouped_rot_row(x, wr, y, row, 2, strides, dilation, before, ksize, bias, has_bias,
                             rows_all[row], taps_all[row])
        else:
            _grouped_rot_row(x, wr, y, row, 8, strides, dilation, before, ksize, bias, has_bias,
                             rows_all[row], taps_all[row])
        if code != 0:
            n = row // (OD * OH)
            epilogue(y[n, (row // OH) % OD, row % OH], bias, False, code)


@njit(parallel=True, cache=True)
def grouped_direct(x, wt, y, strides, dilation, before, ksize, groups, bias, has_bias, code):
    """Grouped convolution with few channels per group, direct: each group's small
    (Cg x Fg) matrix is applied in place, no copies of the groups.  ``wt`` is the
    kernel as (taps, Cg, F)."""
    N, D, H, W, C = x.shape
    _, Cg, F = wt.shape
    Fg = F // groups
    _, OD, OH, OW, _ = y.shape
    in_shape = (D, H, W)
    zero = np.zeros(1, y.dtype)[0]
    for row in prange(N * OD * OH):
        n = row // (OD * OH)
        od = (row // OH) % OD
        oh = row % OH
        taps = np.empty((wt.shape[0], 4), np.int64)
        for ow in range(OW):
            dst = y[n, od, oh, ow]
            for f in range(F):
                dst[f] = 0
            for t in range(window_taps(od, oh, ow, in_shape, ksize, strides, dilation, before, taps)):
                src = x[n, taps[t, 0], taps[t, 1], taps[t, 2]]
                wc = wt[taps[t, 3]]
                for g in range(groups):
                    for j in range(Cg):
                        v = src[g * Cg + j]
                        wr = wc[j]
                        for fo in range(g * Fg, g * Fg + Fg):
                            dst[fo] += v * wr[fo]
            finish_pixel(dst, bias, has_bias, code, zero)


def _njit_as(name, **options):
    """``njit(**options)`` for a kernel made by a factory, under its own ``name``: Numba names
    its on-disk cache after the function's qualified name, so two variants of one closure
    would share (and keep overwriting) one cache entry and recompile in every new process."""
    def decorate(fn):
        fn.__name__ = fn.__qualname__ = name
        return njit(**options)(fn)
    return decorate


@njit(cache=True, inline="always")
def _pool_op(a, b, is_max):
    return vmax(a, b) if is_max else vadd(a, b)


@njit(cache=True, inline="always")
def _rows3_column(x, rows, nr, iw, W, C, c0, m, empty, is_max):
    """Input column ``iw`` reduced over the ``nr`` kernel rows; ``empty`` (the identity:
    -inf or 0) for a column in the padding."""
    if iw < 0 or iw >= W or nr == 0:
        return empty
    o = iw * C + c0
    v = vload_n(x, rows[0] + o, m)
    for r in range(1, nr):
        v = _pool_op(v, vload_n(x, rows[r] + o, m), is_max)
    return v


@njit(cache=True, inline="always")
def _rows3_slide(x, y, rows, nr, ybase, OW, W, C, c0, m, bw, empty, is_max):
    v0 = _rows3_column(x, rows, nr, -bw, W, C, c0, m, empty, is_max)
    v1 = _rows3_column(x, rows, nr, 1 - bw, W, C, c0, m, empty, is_max)
    for ow in range(OW):
        v2 = _rows3_column(x, rows, nr, ow - bw + 2, W, C, c0, m, empty, is_max)
        a = _pool_op(_pool_op(v0, v1, is_max), v2, is_max)
        if not is_max:  # the mean over the real elements
            cols = min(W, ow - bw + 3) - max(0, ow - bw)
            a = vdiv(a, vsplat(x, nr * cols))
        vstore_n(y, ybase + ow * C + c0, a, m)
        v0 = v1
        v1 = v2


def _make_pool_rows3(is_max):
    """Pooling with windows 3 wide along W at stride 1 along W (any extent and stride along
    D and H): each input column is reduced down the window's rows once, and every output
    combines the three column results in registers, sliding along the row; one thread per
    output row, one vector of channels at a time.  Max (NaN propagates) or mean over the
    real elements.  ``x`` and ``y`` contiguous."""

    @_njit_as("max_pool_rows3" if is_max else "avg_pool_rows3", parallel=True, cache=True)
    def pool(x, y, ksize, strides, before):
        N, D, H, W, C = x.shape
        _, OD, OH, OW, _ = y.shape
        bw = before[2]
        rows_all = np.empty((N * OD * OH, ksize[0] * ksize[1]), np.int64)
        taps_all = np.empty((N * OD * OH, ksize[0] * ksize[1]), np.int64)
        for row in prange(N * OD * OH):
            L = lanes(x)  # in the loop body: a constant there (a parfor passes outer values in)
            n = row // (OD * OH)
            od = (row // OH) % OD
            oh = row % OH
            rows = rows_all[row]
            nr = kernel_rows(n, od, oh, x.shape, ksize, strides, (1, 1, 1), before, rows, taps_all[row])
            empty = vsplat(x, -np.inf) if is_max else vzero(x)
            for c0 in range(0, C, L):
                m = min(L, C - c0)
                if m == L:  # a constant mask: plain loads and stores once inlined
                    _rows3_slide(x, y, rows, nr, row * OW * C, OW, W, C, c0, L, bw, empty, is_max)
                else:
                    _rows3_slide(x, y, rows, nr, row * OW * C, OW, W, C, c0, m, bw, empty, is_max)

    return pool


max_pool_rows3 = _make_pool_rows3(True)
avg_pool_rows3 = _make_pool_rows3(False)


@njit(cache=True, inline="always")
def _psimd_pixel(x, y, o, rows, nr, ow, W, C, KW, sw, bw, c0, m, empty, is_max):
    a = empty
    cols = 0
    for kw in range(KW):
        iw = ow * sw - bw + kw
        cols += 1 if 0 <= iw < W else 0
    for r in range(nr):  # taps in the reference's order (kd, kh, kw)
        for kw in range(KW):
            iw = ow * sw - bw + kw
            if 0 <= iw < W:
                a = _pool_op(a, vload_n(x, rows[r] + iw * C + c0, m), is_max)
    if not is_max:
        a = vdiv(a, vsplat(x, nr * cols))
    vstore_n(y, o, a, m)


def _make_pool_simd(is_max):
    """Max (NaN propagates; a window wholly in the padding gives -inf, as the reference's
    -inf padding) or mean over the real elements of each window, any pool size and
    strides: one thread per output row, each output pixel's channels as whole vectors
    (a masked tail), the window's taps checked per kernel row and column."""

    @_njit_as("max_pool_simd" if is_max else "avg_pool_simd", parallel=True, cache=True)
    def pool(x, y, ksize, strides, before):
        N, D, H, W, C = x.shape
        _, OD, OH, OW, _ = y.shape
        KW, sw, bw = ksize[2], strides[2], before[2]
        rows_all = np.empty((N * OD * OH, ksize[0] * ksize[1]), np.int64)
        taps_all = np.empty((N * OD * OH, ksize[0] * ksize[1]), np.int64)
        for row in prange(N * OD * OH):
            L = lanes(x)  # in the loop body: a constant there (a parfor passes outer values in)
            n = row // (OD * OH)
            od = (row // OH) % OD
            oh = row % OH
            rows = rows_all[row]
            nr = kernel_rows(n, od, oh, x.shape, ksize, strides, (1, 1, 1), before, rows, taps_all[row])
            empty = vsplat(x, -np.inf) if is_max else vzero(x)
            for ow in range(OW):
                o = (row * OW + ow) * C
                for c0 in range(0, C - C % L, L):
                    _psimd_pixel(x, y, o + c0, rows, nr, ow, W, C, KW, sw, bw, c0, L, empty, is_max)
                if C % L:
                    c0 = C - C % L
                    _psimd_pixel(x, y, o + c0, rows, nr, ow, W, C, KW, sw, bw, c0, C % L, empty, is_max)

    return pool


max_pool = _make_pool_simd(True)
avg_pool = _make_pool_simd(False)


# Global pooling cuts each image's positions into chunks of at least this many positions,
# at most this many chunks (a number of chunks that the usual thread counts divide); each
# chunk is reduced on its own and the partial results are combined in chunk order, so the
# result depends on the image size only, never on the thread count or the batch.
GP_MIN_CHUNK = 64
GP_MAX_CHUNKS = 16


def gp_chunks(P):
    """How many chunks global pooling cuts ``P`` positions into."""
    return max(1, min(GP_MAX_CHUNKS, P // GP_MIN_CHUNK))


@njit(cache=True, inline="always")
def _gpool_block4(x, part, o, p, n_pos, C, c0, is_max):
    """Four full vectors of channels ``c0..`` over ``n_pos`` positions from flat index
    ``o``: four independent accumulators in registers, one pass down the positions."""
    L = lanes(x)
    a0 = vload(x, o)
    a1 = vload(x, o + L)
    a2 = vload(x, o + 2 * L)
    a3 = vload(x, o + 3 * L)
    for _ in range(1, n_pos):
        o += C
        a0 = _pool_op(a0, vload(x, o), is_max)
        a1 = _pool_op(a1, vload(x, o + L), is_max)
        a2 = _pool_op(a2, vload(x, o + 2 * L), is_max)
        a3 = _pool_op(a3, vload(x, o + 3 * L), is_max)
    vstore(part, p, a0)
    vstore(part, p + L, a1)
    vstore(part, p + 2 * L, a2)
    vstore(part, p + 3 * L, a3)


@njit(cache=True, inline="always")
def _gpool_block1(x, part, o, p, n_pos, C, m, is_max):
    """One vector of ``m`` channels (a masked tail when ``m`` < lanes)."""
    a = vload_n(x, o, m)
    for _ in range(1, n_pos):
        o += C
        a = _pool_op(a, vload_n(x, o, m), is_max)
    vstore_n(part, p, a, m)


def _make_global_pool(is_max):
    """Max (NaN propagates) or sum of every position of each image; one source compiled
    once per kind (``is_max`` is a compile-time constant)."""

    @_njit_as("global_max_pool" if is_max else "global_sum_pool", parallel=True, cache=True)
    def pool(x, y, part):
        """``y[n] = max or sum over p of x[n, p]`` for contiguous ``x`` (N, P, C), via the
        contiguous scratch ``part`` (N, chunks, C) of per-chunk results."""
        N, P, C = x.shape
        nch = part.shape[1]
        C4 = C - C % (4 * lanes(x))
        for job in prange(N * nch):
            L = lanes(x)  # in the loop body: a constant there (a parfor passes outer values in)
            n = job // nch
            k = job % nch
            p0 = k * P // nch
            n_pos = (k + 1) * P // nch - p0
            o = (n * P + p0) * C
            p = job * C
            for c0 in range(0, C4, 4 * L):
                _gpool_block4(x, part, o + c0, p + c0, n_pos, C, c0, is_max)
            for c0 in range(C4, C, L):
                m = min(L, C - c0)
                if m == L:
                    _gpool_block1(x, part, o + c0, p + c0, n_pos, C, L, is_max)
                else:
                    _gpool_block1(x, part, o + c0, p + c0, n_pos, C, m, is_max)
        # combine the chunks in order (N * chunks * C elements: cheap, serial)
        L = lanes(x)
        for n in range(N):
            for c0 in range(0, C, L):
                m = min(L, C - c0)
                q = n * nch * C + c0
                a = vload_n(part, q, m)
                for k in range(1, nch):
                    a = _pool_op(a, vload_n(part, q + k * C, m), is_max)
                vstore_n(y, n * C + c0, a, m)

    return pool


global_max_pool = _make_global_pool(True)
global_sum_pool = _make_global_pool(False)


# ---------------------------------------------------------------- GEMM drivers
# Every driver below splits its rows among Numba's threads and calls BLAS on one
# thread per tile (see fastconv.backends._blas): one thread pool for the whole op,
# nothing nested, and bias/activation run on each tile while it is in cache.

# A task is a block of rows times a block of columns (output channels): layers with
# few pixels and many channels (the deep end of a CNN) split their columns, so that
# each weight is read by one thread only instead of every thread.

@njit(parallel=True, cache=True)
def gemm_rows(X, W, Y, chunk, fchunk, bias, has_bias, code):
    """``Y = X @ W`` (then bias, activation) by blocks: 1x1 convolutions."""
    m, f = Y.shape
    nf = (f + fchunk - 1) // fchunk
    for i in prange(((m + chunk - 1) // chunk) * nf):
        q0 = (i // nf) * chunk
        q1 = min(m, q0 + chunk)
        f0 = (i % nf) * fchunk
        f1 = min(f, f0 + fchunk)
        out = Y[q0:q1, f0:f1]
        gemm(X[q0:q1], W[:, f0:f1], out, 0.0)
        if has_bias or code:
            epilogue(out, bias[f0:f1], has_bias, code)


@njit(parallel=True, cache=True)
def tiles_rows(X, W, Y, chunk, bias, has_bias, code):
    """``Y = X @ W + bias`` (then the activation) by blocks of ``chunk`` rows with
    :func:`matmul_tiles`: 1x1 convolutions on C-contiguous operands."""
    m = Y.shape[0]
    for i in prange((m + chunk - 1) // chunk):
        q0 = i * chunk
        q1 = min(m, q0 + chunk)
        out = Y[q0:q1]
        matmul_tiles(X[q0:q1], W, out, bias, has_bias)
        if code:
            epilogue(out, bias, False, code)


@njit(parallel=True, cache=True)
def shifted_taps(X, wt, Y, offsets, lo, hi, chunk, fchunk, bias, has_bias, code):
    """``Y[q] = sum_t X[q + offsets[t]] @ wt[t]`` for ``q`` in ``[lo, hi)``, by blocks."""
    f = Y.shape[1]
    nf = (f + fchunk - 1) // fchunk
    for i in prange(((hi - lo + chunk - 1) // chunk) * nf):
        q0 = lo + (i // nf) * chunk
        q1 = min(hi, q0 + chunk)
        f0 = (i % nf) * fchunk
        f1 = min(f, f0 + fchunk)
        out = Y[q0:q1, f0:f1]
        for t in range(offsets.shape[0]):
            off = offsets[t]
            gemm(X[q0 + off:q1 + off], wt[t][:, f0:f1], out, 0.0 if t == 0 else 1.0)
        if has_bias or code:
            epilogue(out, bias[f0:f1], has_bias, code)


@njit(parallel=True, cache=True)
def shifted_tiles(X, wt, Y, offsets, lo, hi, chunk, bias, has_bias, code):
    """``Y[q] = bias + sum_t X[q + offsets[t]] @ wt[t]`` for ``q`` in ``[lo, hi)`` by
    register tiles (:func:`conv_tiles`), blocks of ``chunk`` rows per task; C-contiguous
    operands, ``wt`` (taps, C, F)."""
    for i in prange((hi - lo + chunk - 1) // chunk):
        q0 = lo + i * chunk
        q1 = min(hi, q0 + chunk)
        conv_tiles(X, q0, q1, offsets, wt, Y, bias, has_bias)
        if code:
            epilogue(Y[q0:q1], bias, False, code)


@njit(parallel=True, cache=True)
def pixels_conv(x, W, Y, pixels, out_shape, strides, dilation, before, ksize, chunk, bias, has_bias, code):
    """Exact convolution of the listed output pixels (im2col of just those), written to ``Y``."""
    n = pixels.shape[0]
    k_all, f = W.shape
    for i in prange((n + chunk - 1) // chunk):
        p0 = i * chunk
        p1 = min(n, p0 + chunk)
        cols = np.empty((p1 - p0, k_all), x.dtype)
        pack_pixels(x, cols, pixels[p0:p1], out_shape, strides, dilation, before, ksize)
        part = np.empty((p1 - p0, f), x.dtype)
        gemm(cols, W, part, 0.0)
        if has_bias or code:
            epilogue(part, bias, has_bias, code)
        for r in range(p1 - p0):
            Y[pixels[p0 + r]] = part[r]


@njit(parallel=True, cache=True)
def im2col_conv(x, W, Y, out_shape, strides, dilation, before, ksize, tile, fchunk, scratch,
                bias, has_bias, code):
    """Tiles of ``tile`` output pixels: pack their patches (L2-sized) and multiply; a tile
    split by columns packs its patches once per column block (only for small layers)."""
    m, f = Y.shape
    nf = (f + fchunk - 1) // fchunk
    for i in prange(((m + tile - 1) // tile) * nf):
        m0 = (i // nf) * tile
        mt = min(tile, m - m0)
        f0 = (i % nf) * fchunk
        f1 = min(f, f0 + fchunk)
        buf = scratch[get_thread_id()][:mt]
        pack_patches(x, buf, m0, out_shape, strides, dilation, before, ksize)
        out = Y[m0:m0 + mt, f0:f1]
        gemm(buf, W[:, f0:f1], out, 0.0)
        if has_bias or code:
            epilogue(out, bias[f0:f1], has_bias, code)


@njit(parallel=True, cache=True)
def im2col_t_conv(x, W, Y, out_shape, strides, dilation, before, ksize, rows, scratch, bias, has_bias, code):
    """Few input channels: patches packed transposed (K, pixels) for ``rows`` output rows
    per tile, so packing runs along image rows rather than along a handful of channels."""
    ow = out_shape[2]
    n_rows = Y.shape[0] // ow
    for i in prange((n_rows + rows - 1) // rows):
        r0 = i * rows
        rt = min(rows, n_rows - r0)
        buf = scratch[get_thread_id()][:, :rt * ow]
        pack_patches_t(x, buf, r0, out_shape, strides, dilation, before, ksize)
        out = Y[r0 * ow:(r0 + rt) * ow]
        gemm(buf.T, W, out, 0.0)
        if has_bias or code:
            epilogue(out, bias, has_bias, code)


@njit(parallel=True, cache=True)
def transpose_col2im(x2, w2, y, in_shape, ksize, strides, dilation, before, scratch, bias, has_bias, code):
    """A small transposed convolution, one image per task: one GEMM ``cols = x2 @ w2``
    (each input pixel of the image times every tap's (C, F) matrix), then each input
    pixel's tap rows are added into the output pixels they reach (col2im), in a fixed
    order (pixels, then taps), starting from the bias; then the activation."""
    N, OD, OH, OW, F = y.shape
    D, H, W = in_shape
    KD, KH, KW = ksize
    P = D * H * W
    KF = KD * KH * KW * F
    for n in prange(N):
        L = lanes(y)  # in the loop body: a constant there (a parfor passes outer values in)
        cols = scratch[get_thread_id()]
        gemm(x2[n * P:(n + 1) * P], w2, cols, 0.0)
        yn = y[n].reshape((OD * OH * OW, F))
        for q in range(OD * OH * OW):
            for j0 in range(0, F, L):
                m_ = min(L, F - j0)
                vstore_n(yn, q * F + j0, vload_n(bias, j0, m_) if has_bias else vzero(y), m_)
        for m in range(P):
            i_d = m // (H * W)
            i_h = (m // W) % H
            i_w = m % W
            t = 0
            for kd in range(KD):
                o_d = i_d * strides[0] + kd * dilation[0] - before[0]
                for kh in range(KH):
                    o_h = i_h * strides[1] + kh * dilation[1] - before[1]
                    for kw in range(KW):
                        o_w = i_w * strides[2] + kw * dilation[2] - before[2]
                        if 0 <= o_d < OD and 0 <= o_h < OH and 0 <= o_w < OW:
                            q = ((o_d * OH + o_h) * OW + o_w) * F
                            src = m * KF + t * F
                            for j0 in range(0, F, L):
                                m_ = min(L, F - j0)
                                vstore_n(yn, q + j0, vadd(vload_n(yn, q + j0, m_), vload_n(cols, src + j0, m_)),
                                         m_)
                        t += 1
        if code:
            epilogue(yn, bias, False, code)
