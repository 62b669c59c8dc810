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


@njit(parallel=True, cache=True, fastmath={"contract"})
def depthwise(x, wt, y, strides, dilation, before, ksize, bias, has_bias, code):
    """Depthwise convolution, direct: ``y[.., c*M + m] = sum_tap x[.., c] * w[tap, c, m]``,
    vectorised along channels; one thread per output row.  ``wt`` is the kernel as
    contiguous (taps, C * M) rows."""
    N, D, H, W, C = x.shape
    M = wt.shape[1] // C
    _, OD, OH, OW, CM = y.shape
    in_shape = (D, H, W)
    fast3 = ksize[0] == 1 and ksize[1] == 3 and ksize[2] == 3 and M == 1
    zero = np.zeros(1, y.dtype)[0]
    for row in prange(N * OD * OH):
        n = row // (OD * OH)
        od = (row // OH) % OD
        oh = row % OH
        taps = np.empty((wt.shape[0], 4), np.int64)
        i_d = od * strides[0] - before[0]
        h0 = oh * strides[1] - before[1]
        h2 = h0 + 2 * dilation[1]
        for ow in range(OW):
            dst = y[n, od, oh, ow]
            w0 = ow * strides[2] - before[2]
            w2 = w0 + 2 * dilation[2]
            if fast3 and h0 >= 0 and h2 < H and w0 >= 0 and w2 < W:
                # 3x3, multiplier 1, window inside the input: the nine taps summed in
                # registers in one pass over the channels (measured 1.8x faster than
                # accumulating tap by tap into the output).
                h1, w1 = h0 + dilation[1], w0 + dilation[2]
                a0, a1, a2 = x[n, i_d, h0, w0], x[n, i_d, h0, w1], x[n, i_d, h0, w2]
                b0, b1, b2 = x[n, i_d, h1, w0], x[n, i_d, h1, w1], x[n, i_d, h1, w2]
                c0, c1, c2 = x[n, i_d, h2, w0], x[n, i_d, h2, w1], x[n, i_d, h2, w2]
                k0, k1, k2, k3, k4, k5, k6, k7, k8 = wt[0], wt[1], wt[2], wt[3], wt[4], wt[5], wt[6], wt[7], wt[8]
                for c in range(C):
                    dst[c] = (a0[c] * k0[c] + a1[c] * k1[c] + a2[c] * k2[c]
                              + b0[c] * k3[c] + b1[c] * k4[c] + b2[c] * k5[c]
                              + c0[c] * k6[c] + c1[c] * k7[c] + c2[c] * k8[c])
                finish_pixel(dst, bias, has_bias, code, zero)
                continue
            for j in range(CM):
                dst[j] = 0
            for t in range(window_taps(od, oh, ow, in_shape, ksize, strides, dilation, before, taps)):
                src = x[n, taps[t, 0], taps[t, 1], taps[t, 2]]
                wc = wt[taps[t, 3]]
                if M == 1:
                    for c in range(C):
                        dst[c] += src[c] * wc[c]
                else:
                    for c in range(C):
                        v = src[c]
                        for m in range(M):
                            dst[c * M + m] += v * wc[c * M + m]
            finish_pixel(dst, bias, has_bias, code, zero)


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


def _make_pool(is_max):
    """Max (padded positions never win, NaN propagates) or mean over the real (unpadded)
    elements of each window; one thread per output row, vectorised along channels.
    One source, compiled once per kind (``is_max`` is a compile-time constant)."""

    @njit(parallel=True, cache=True)
    def pool(x, y, ksize, strides, before):
        N, D, H, W, C = x.shape
        _, OD, OH, OW, _ = y.shape
        for row in prange(N * OD * OH):
            n = row // (OD * OH)
            od = (row // OH) % OD
            oh = row % OH
            for ow in range(OW):
                dst = y[n, od, oh, ow]
                count = 0
                if not is_max:
                    for c in range(C):
                        dst[c] = 0
                for kd in range(ksize[0]):
                    i_d = od * strides[0] - before[0] + kd
                    if i_d < 0 or i_d >= D:
                        continue
                    for kh in range(ksize[1]):
                        i_h = oh * strides[1] - before[1] + kh
                        if i_h < 0 or i_h >= H:
                            continue
                        for kw in range(ksize[2]):
                            i_w = ow * strides[2] - before[2] + kw
                            if i_w < 0 or i_w >= W:
                                continue
                            src = x[n, i_d, i_h, i_w]
                            if not is_max:
                                for c in range(C):
                                    dst[c] += src[c]
                            elif count == 0:
                                for c in range(C):
                                    dst[c] = src[c]
                            else:
                                for c in range(C):
                                    v = src[c]
                                    if v > dst[c] or v != v:
                                        dst[c] = v
                            count += 1
                if not is_max:
                    inv = 1.0 / count
                    for c in range(C):
                        dst[c] *= inv

    return pool


max_pool = _make_pool(True)
avg_pool = _make_pool(False)


@njit(parallel=True, cache=True)
def global_pool(x, y, is_max):
    """Max or mean over all positions of (N, P, C) into (N, C); parallel over channel blocks."""
    N, P, C = x.shape
    blocks = (C + 63) // 64
    for job in prange(N * blocks):
        n = job // blocks
        c0 = (job % blocks) * 64
        c1 = min(c0 + 64, C)
        dst = y[n]
        for c in range(c0, c1):
            dst[c] = x[n, 0, c]
        for p in range(1, P):
            src = x[n, p]
            if is_max:
                for c in range(c0, c1):
                    v = src[c]
                    if v > dst[c] or v != v:
                        dst[c] = v
            else:
                for c in range(c0, c1):
                    dst[c] += src[c]
        if not is_max:
            inv = 1.0 / P
            for c in range(c0, c1):
                dst[c] *= inv


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
