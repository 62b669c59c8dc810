# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Direct kernels of the Cython backend: depthwise convolution and global pooling.

All arrays are the kernel contract's channels-last ones, C-contiguous, so the
innermost loops run along contiguous channels and GCC vectorises them.  Work is
split with OpenMP (``prange``) into jobs that write disjoint parts of the output,
and every output element is computed by one thread in an order that does not
depend on the split, so results are identical for any thread count.

Depthwise convolution (register tiling)
---------------------------------------
A tile is ``TW`` neighbouring output pixels of one row times a block of ``CB``
channels, its accumulators in a local ``TW x CB`` array that GCC keeps in
vector registers.  Each kernel row's weights are loaded once per tile and used
for all ``TW`` pixels.  Interior tiles, whose windows lie inside the input
along W, run without bounds checks; for the common kernel widths (3 and 5, at
stride 1 or 2, no dilation) they are compiled with the width and stride as
constants, so the fully unrolled tile loads each input pixel once per kernel
row however many taps use it.  The few border pixels at both ends of a row go
one at a time through a loop that checks each tap; kernel rows outside the
input along D and H are skipped whole.  Bias and the piecewise-linear
activations (relu, relu6, leaky_relu, hard_tanh, hard_sigmoid, hard_silu) are
applied to the accumulators before the tile is stored (the epilogue); the
driver applies the other activations afterwards.
"""

from cython.parallel cimport prange
from libc.stdlib cimport free, malloc

ctypedef fused real:
    float
    double

# The vector width the compiler targets (set by -march at build time).
cdef extern from *:
    """
    #if defined(__AVX512F__)
    #define FC_VEC_BYTES 64
    #define FC_TILE_PIXELS 8
    #elif defined(__AVX__)
    #define FC_VEC_BYTES 32
    #define FC_TILE_PIXELS 4
    #else
    #define FC_VEC_BYTES 16
    #define FC_TILE_PIXELS 4
    #endif
    """
    const int VEC_BYTES "FC_VEC_BYTES"
    const int TW "FC_TILE_PIXELS"

# Tile sizes.  A channel block is two vector registers: CB = 2 * VEC_BYTES / itemsize
# channels (32 float32 with AVX-512, 16 with AVX2).  A tile of TW pixels x CB channels
# keeps 2 * TW accumulator registers: 16 of the 32 AVX-512 registers for TW = 8, 8 of
# the 16 AVX2 ones for TW = 4, which leaves room for one kernel row's weights (2 * KW
# registers for KW = 3) and the input vector being multiplied.  What a tile reads per
# kernel row, (TW - 1) * stride + KW input pixels of CB channels, is about 1 KiB, far
# inside the 32 KiB L1d; a job's KH input rows (W * CB channels each, ~43 KiB for
# 3 x 112 x 32 float32) stay in the 512 KiB L2 for the job of the next output row.
# TW_MAX and CB_MAX size the accumulator arrays for every target.
cdef enum:
    TW_MAX = 8
    CB_MAX = 32

# Activation codes fused in the epilogue (piecewise linear, so they vectorise).
cdef enum:
    ACT_LINEAR = 0
    ACT_RELU = 1
    ACT_RELU6 = 2
    ACT_LEAKY_RELU = 3
    ACT_HARD_TANH = 4
    ACT_HARD_SIGMOID = 5
    ACT_HARD_SILU = 6

ACTIVATIONS = {None: ACT_LINEAR, "relu": ACT_RELU, "relu6": ACT_RELU6, "leaky_relu": ACT_LEAKY_RELU,
               "hard_tanh": ACT_HARD_TANH, "hard_sigmoid": ACT_HARD_SIGMOID, "hard_silu": ACT_HARD_SILU}

#: Channels per block for float32 and float64 (two vector registers).
BLOCK_CHANNELS = {4: 2 * VEC_BYTES // 4, 8: 2 * VEC_BYTES // 8}
#: Output pixels per interior tile.
TILE_PIXELS = TW


ctypedef struct Geometry:
    # input (N, D, H, W, C), output (N, OD, OH, OW, C * M), kernel (KD, KH, KW)
    Py_ssize_t N, D, H, W, C, M, OD, OH, OW, KD, KH, KW
    Py_ssize_t sd, sh, sw, dd, dh, dw, pd, ph, pw
    # output columns [ow_lo, ow_hi) whose windows lie inside the input along W
    Py_ssize_t ow_lo, ow_hi
    # output columns per job, jobs per row along W, channel blocks per row
    Py_ssize_t seg, nseg, nblk
    int act


cdef inline void _epilogue(real* a, const real* bias, Py_ssize_t cn, int act) noexcept nogil:
    """``a[c] = act(a[c] + bias[c])`` in place, with one loop per activation so that each
    vectorises (the branch is outside the loops).  Computed in the data's precision as
    fastconv.activations does; NaN passes through (comparisons with NaN are false)."""
    cdef Py_ssize_t c
    cdef real v, t
    if act == ACT_LINEAR:
        for c in range(cn):
            a[c] = a[c] + bias[c]
    elif act == ACT_RELU:
        for c in range(cn):
            v = a[c] + bias[c]
            a[c] = 0 if v < 0 else v
    elif act == ACT_RELU6:
        for c in range(cn):
            v = a[c] + bias[c]
            v = 0 if v < 0 else v
            a[c] = 6 if v > 6 else v
    elif act == ACT_LEAKY_RELU:
        for c in range(cn):
            v = a[c] + bias[c]
            a[c] = v if v >= 0 else v * <real>0.2
    elif act == ACT_HARD_TANH:
        for c in range(cn):
            v = a[c] + bias[c]
            v = -1 if v < -1 else v
            a[c] = 1 if v > 1 else v
    elif act == ACT_HARD_SIGMOID:
        for c in range(cn):
            t = a[c] + bias[c] + 3
            t = 0 if t < 0 else t
            t = 6 if t > 6 else t
            a[c] = t / 6
    elif act == ACT_HARD_SILU:
        for c in range(cn):
            v = a[c] + bias[c]
            t = v + 3
            t = 0 if t < 0 else t
            t = 6 if t > 6 else t
            a[c] = v * (t / 6)


cdef inline void _store(real* yp, real* a, const real* bias, Py_ssize_t cn, Py_ssize_t M,
                        int act) noexcept nogil:
    """The epilogue of one output pixel's channel block, stored to ``yp`` (stride M)."""
    cdef Py_ssize_t c
    _epilogue(a, bias, cn, act)
    if M == 1:
        for c in range(cn):
            yp[c] = a[c]
    else:
        for c in range(cn):
            yp[c * M] = a[c]


# Compile-time tags.  The tile functions are fused over them, so each case is compiled
# on its own with constants where the tag fixes them (trip counts GCC unrolls and
# vectorises, addresses it can compare).
ctypedef struct FullBlock:   # CB channels (two vectors)
    char _
ctypedef struct HalfBlock:   # CB / 2 channels (one vector)
    char _
ctypedef struct PartBlock:   # fewer channels, counted at run time
    char _
ctypedef fused chans:
    FullBlock
    HalfBlock
    PartBlock

ctypedef struct AnyKernel:   # kernel width, stride and dilation at run time
    char _
ctypedef struct K3S1:        # KW = 3, stride 1, dilation 1: neighbouring pixels share 2 inputs
    char _
ctypedef struct K3S2:        # KW = 3, stride 2, dilation 1: neighbouring pixels share 1 input
    char _
ctypedef fused kshape:
    AnyKernel
    K3S1
    K3S2


cdef inline Py_ssize_t _block(const real* like, chans* tag, Py_ssize_t cn) noexcept nogil:
    """Channels in a block of this kind for data of type ``real`` (a constant for full and half
    blocks)."""
    if chans is FullBlock:
        return 2 * VEC_BYTES // sizeof(real)
    elif chans is HalfBlock:
        return VEC_BYTES // sizeof(real)
    else:
        return cn


cdef inline void _row_k3s1(real (*acc)[CB_MAX], const real* xr, const real* w0, Py_ssize_t C,
                           Py_ssize_t ws, Py_ssize_t cn) noexcept nogil:
    """One kernel row (3 taps, stride 1) of a tile: input column j feeds pixel j through tap 0,
    pixel j - 1 through tap 1 and pixel j - 2 through tap 2, so each input vector is loaded
    once for its three uses.  Each pixel still sums its taps in order 0, 1, 2 (the order of
    the generic loop: the same results)."""
    cdef Py_ssize_t j, c
    cdef const real* w1 = w0 + ws
    cdef const real* w2 = w0 + 2 * ws
    cdef const real* xp
    cdef real v
    for c in range(cn):
        acc[0][c] += xr[c] * w0[c]
    xp = xr + C
    for c in range(cn):
        v = xp[c]
        acc[0][c] += v * w1[c]
        acc[1][c] += v * w0[c]
    for j in range(2, TW):
        xp = xr + j * C
        for c in range(cn):
            v = xp[c]
            acc[j - 2][c] += v * w2[c]
            acc[j - 1][c] += v * w1[c]
            acc[j][c] += v * w0[c]
    xp = xr + TW * C
    for c in range(cn):
        v = xp[c]
        acc[TW - 2][c] += v * w2[c]
        acc[TW - 1][c] += v * w1[c]
    xp = xr + (TW + 1) * C
    for c in range(cn):
        acc[TW - 1][c] += xp[c] * w2[c]


cdef inline void _row_k3s2(real (*acc)[CB_MAX], const real* xr, const real* w0, Py_ssize_t C,
                           Py_ssize_t ws, Py_ssize_t cn) noexcept nogil:
    """One kernel row (3 taps, stride 2) of a tile: pixel q reads input columns 2q, 2q + 1,
    2q + 2, and column 2q + 2 is also pixel q + 1's tap 0, loaded once for both."""
    cdef Py_ssize_t q, c
    cdef const real* w1 = w0 + ws
    cdef const real* w2 = w0 + 2 * ws
    cdef const real* xp
    cdef real v
    for c in range(cn):
        acc[0][c] += xr[c] * w0[c]
        acc[0][c] += xr[C + c] * w1[c]
    for q in range(1, TW):
        xp = xr + 2 * q * C
        for c in range(cn):
            v = xp[c]
            acc[q - 1][c] += v * w2[c]
            acc[q][c] += v * w0[c]
            acc[q][c] += xp[C + c] * w1[c]
    xp = xr + 2 * TW * C
    for c in range(cn):
        acc[TW - 1][c] += xp[c] * w2[c]


cdef inline void _dw_interior(const real* x, const real* wt, const real* bias, real* y,
                              const Geometry* g, Py_ssize_t n, Py_ssize_t od, Py_ssize_t oh,
                              Py_ssize_t ow, Py_ssize_t c0, Py_ssize_t m, Py_ssize_t cn_,
                              chans* ctag, kshape* ktag) noexcept nogil:
    """``TW`` interior output pixels ``ow ..`` of row (n, od, oh), channels ``c0 ..``, multiplier
    ``m``: no bounds checks along W (the caller guarantees the windows are inside)."""
    cdef real acc[TW_MAX][CB_MAX]
    cdef Py_ssize_t p, c, kd, kh, kw, i_d, i_h, KW, sw, dw
    cdef Py_ssize_t cn = _block(x, ctag, cn_)
    cdef Py_ssize_t C = g.C, M = g.M
    cdef const real* xrow
    cdef const real* wrow
    cdef const real* wv
    cdef const real* xp
    if kshape is K3S1:
        KW, sw, dw = 3, 1, 1
    elif kshape is K3S2:
        KW, sw, dw = 3, 2, 1
    else:
        KW, sw, dw = g.KW, g.sw, g.dw
    for p in range(TW):
        for c in range(cn):
            acc[p][c] = 0
    for kd in range(g.KD):
        i_d = od * g.sd - g.pd + kd * g.dd
        if i_d < 0 or i_d >= g.D:
            continue
        for kh in range(g.KH):
            i_h = oh * g.sh - g.ph + kh * g.dh
            if i_h < 0 or i_h >= g.H:
                continue
            xrow = x + (((n * g.D + i_d) * g.H + i_h) * g.W + ow * sw - g.pw) * C + c0
            wrow = wt + ((kd * g.KH + kh) * KW * M + m) * C + c0
            if kshape is K3S1:
                _row_k3s1(acc, xrow, wrow, C, M * C, cn)
            elif kshape is K3S2:
                _row_k3s2(acc, xrow, wrow, C, M * C, cn)
            else:
                for kw in range(KW):
                    wv = wrow + kw * M * C
                    for p in range(TW):
                        xp = xrow + (p * sw + kw * dw) * C
                        for c in range(cn):
                            acc[p][c] += xp[c] * wv[c]
    for p in range(TW):
        _store(y + (((n * g.OD + od) * g.OH + oh) * g.OW + ow + p) * C * M + c0 * M + m,
               acc[p], bias + m * C + c0, cn, M, g.act)


cdef inline void _dw_border(const real* x, const real* wt, const real* bias, real* y,
                            const Geometry* g, Py_ssize_t n, Py_ssize_t od, Py_ssize_t oh,
                            Py_ssize_t ow, Py_ssize_t c0, Py_ssize_t m, Py_ssize_t cn_,
                            chans* ctag) noexcept nogil:
    """One output pixel, any position: taps outside the input are skipped."""
    cdef real acc[CB_MAX]
    cdef Py_ssize_t c, kd, kh, kw, i_d, i_h, iw
    cdef Py_ssize_t cn = _block(x, ctag, cn_)
    cdef Py_ssize_t C = g.C, M = g.M
    cdef const real* xrow
    cdef const real* wrow
    cdef const real* wv
    cdef const real* xp
    for c in range(cn):
        acc[c] = 0
    for kd in range(g.KD):
        i_d = od * g.sd - g.pd + kd * g.dd
        if i_d < 0 or i_d >= g.D:
            continue
        for kh in range(g.KH):
            i_h = oh * g.sh - g.ph + kh * g.dh
            if i_h < 0 or i_h >= g.H:
                continue
            xrow = x + ((n * g.D + i_d) * g.H + i_h) * g.W * C + c0
            wrow = wt + ((kd * g.KH + kh) * g.KW * M + m) * C + c0
            for kw in range(g.KW):
                iw = ow * g.sw - g.pw + kw * g.dw
                if iw < 0 or iw >= g.W:
                    continue
                wv = wrow + kw * M * C
                xp = xrow + iw * C
                for c in range(cn):
                    acc[c] += xp[c] * wv[c]
    _store(y + (((n * g.OD + od) * g.OH + oh) * g.OW + ow) * C * M + c0 * M + m,
           acc, bias + m * C + c0, cn, M, g.act)


cdef inline void _dw_segment(const real* x, const real* wt, const real* bias, real* y,
                             const Geometry* g, Py_ssize_t n, Py_ssize_t od, Py_ssize_t oh,
                             Py_ssize_t c0, Py_ssize_t cn, Py_ssize_t a, Py_ssize_t b,
                             chans* ctag, kshape* ktag) noexcept nogil:
    """Output columns [a, b) of one row and one channel block: interior pixels ``TW`` at a
    time, the rest (border, and interior pixels left over) one by one."""
    cdef Py_ssize_t m, ow, lo = min(max(g.ow_lo, a), b), hi = max(min(g.ow_hi, b), lo)
    for m in range(g.M):
        for ow in range(a, lo):
            _dw_border(x, wt, bias, y, g, n, od, oh, ow, c0, m, cn, ctag)
        ow = lo
        while ow + TW <= hi:
            _dw_interior(x, wt, bias, y, g, n, od, oh, ow, c0, m, cn, ctag, ktag)
            ow += TW
        if ow < hi and hi - lo >= TW:
            # the interior pixels left over: one more tile ending at hi, overlapping the
            # previous one (those pixels are recomputed in the same order: same values)
            _dw_interior(x, wt, bias, y, g, n, od, oh, hi - TW, c0, m, cn, ctag, ktag)
            ow = hi
        while ow < b:
            _dw_border(x, wt, bias, y, g, n, od, oh, ow, c0, m, cn, ctag)
            ow += 1


cdef inline void _dw_job(const real* x, const real* wt, const real* bias, real* y,
                         const Geometry* g, Py_ssize_t job, kshape* ktag) noexcept nogil:
    """Job ``job``: (output row, column segment, channel block), channel blocks innermost
    and rows outermost, so a thread's consecutive jobs share input rows in cache."""
    cdef Py_ssize_t cb_full = 2 * VEC_BYTES // sizeof(real), cb_half = VEC_BYTES // sizeof(real)
    cdef Py_ssize_t nfull = g.C // cb_full, rest = g.C % cb_full
    cdef Py_ssize_t blk = job % g.nblk, seg = (job // g.nblk) % g.nseg, row = job // (g.nblk * g.nseg)
    cdef Py_ssize_t n = row // (g.OD * g.OH), od = (row // g.OH) % g.OD, oh = row % g.OH
    cdef Py_ssize_t a = seg * g.seg, b = min(a + g.seg, g.OW), c0
    cdef FullBlock* full = NULL
    cdef HalfBlock* half = NULL
    cdef PartBlock* part = NULL
    if blk < nfull:
        _dw_segment(x, wt, bias, y, g, n, od, oh, blk * cb_full, cb_full, a, b, full, ktag)
        return
    c0 = nfull * cb_full
    if rest >= cb_half:
        if blk == nfull:
            _dw_segment(x, wt, bias, y, g, n, od, oh, c0, cb_half, a, b, half, ktag)
            return
        c0 += cb_half
        rest -= cb_half
    _dw_segment(x, wt, bias, y, g, n, od, oh, c0, rest, a, b, part, ktag)


cdef void _depthwise(const real* x, const real* wt, const real* bias, real* y, Geometry* g,
                     int num_threads) noexcept nogil:
    cdef Py_ssize_t jobs = g.N * g.OD * g.OH * g.nseg * g.nblk, job
    cdef AnyKernel* kany = NULL
    cdef K3S1* k3s1 = NULL
    cdef K3S2* k3s2 = NULL
    cdef int kind = 0
    if g.KW == 3 and g.dw == 1 and (g.sw == 1 or g.sw == 2):
        kind = g.sw
    for job in prange(jobs, schedule="static", num_threads=num_threads):
        if kind == 1:
            _dw_job(x, wt, bias, y, g, job, k3s1)
        elif kind == 2:
            _dw_job(x, wt, bias, y, g, job, k3s2)
        else:
            _dw_job(x, wt, bias, y, g, job, kany)


def depthwise(const real[:, :, :, :, ::1] x, const real[:, :, ::1] wt, const real[:, ::1] bias,
              real[:, :, :, :, ::1] y, tuple strides, tuple dilation, tuple before, tuple ksize,
              int act, Py_ssize_t seg, int num_threads):
    """Depthwise convolution ``y[..., c * M + m] = act(sum_tap x[..., c] * w[tap, c, m] + b[c * M + m])``.

    Parameters
    ----------
    x : (N, D, H, W, C) array
    wt : (KD * KH * KW, M, C) array
        The kernel with its multiplier axis before the channels.
    bias : (M, C) array
        The bias in the same order (zeros for none).
    y : (N, OD, OH, OW, C * M) array
        The output, written in full.
    strides, dilation, before, ksize : 3-tuples
        Geometry; ``before`` is the zero padding before each axis.
    act : int
        A code from ``ACTIVATIONS``.
    seg : int
        Output columns per job (rows are split along W when there are few).
    num_threads : int
    """
    cdef Geometry g
    cdef Py_ssize_t last, cb_full = 2 * VEC_BYTES // x.itemsize, cb_half = VEC_BYTES // x.itemsize
    g.N, g.D, g.H, g.W, g.C = x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    g.M = wt.shape[1]
    g.OD, g.OH, g.OW = y.shape[1], y.shape[2], y.shape[3]
    g.KD, g.KH, g.KW = ksize
    g.sd, g.sh, g.sw = strides
    g.dd, g.dh, g.dw = dilation
    g.pd, g.ph, g.pw = before
    g.act = act
    # interior columns: ow * sw - pw >= 0 and ow * sw - pw + (KW - 1) * dw <= W - 1
    g.ow_lo = min((g.pw + g.sw - 1) // g.sw, g.OW)
    last = g.W - 1 + g.pw - (g.KW - 1) * g.dw
    g.ow_hi = min(last // g.sw + 1, g.OW) if last >= 0 else 0
    g.ow_hi = max(g.ow_hi, g.ow_lo)
    g.seg = max(1, seg)
    g.nseg = (g.OW + g.seg - 1) // g.seg
    g.nblk = g.C // cb_full + (1 if g.C % cb_full >= cb_half else 0) + (1 if g.C % cb_half else 0)
    if y.shape[0] == 0 or y.shape[1] == 0 or y.shape[2] == 0 or y.shape[3] == 0 or y.shape[4] == 0:
        return
    with nogil:
        _depthwise(&x[0, 0, 0, 0, 0], &wt[0, 0, 0], &bias[0, 0], &y[0, 0, 0, 0, 0], &g, num_threads)


# ---------------------------------------------------------------- global pooling
# A job reduces a chunk of pixels of one image to a partial (max or sum) per channel,
# a channel block at a time with the block's accumulators in registers; a second pass
# combines each image's partials in chunk order.  The chunking depends only on the
# shapes (never on the thread count), so results are the same for any thread count,
# and a single image with many pixels still gives every thread work.  GB channels
# per block: 4 AVX-512 float32 vectors; a chunk's rows (sized by the driver to about
# 32 KiB) are read from L2 once and stay in L1d for the chunk's other channel blocks.
cdef enum:
    GB = 64

ctypedef struct MaxPool:
    char _
ctypedef struct AvgPool:
    char _
ctypedef fused reduction:
    MaxPool
    AvgPool


cdef inline void _gp_block(const real* x, Py_ssize_t stride, Py_ssize_t count, real* dst,
                           Py_ssize_t cn_, chans* ctag, reduction* rtag) noexcept nogil:
    """``dst[c] = max/sum over i < count of x[i * stride + c]`` for ``c < cn`` (a max takes
    NaN wherever one occurs)."""
    cdef real acc[GB]
    cdef Py_ssize_t i, c, cn
    cdef const real* xp
    cdef real v
    if chans is FullBlock:
        cn = GB
    else:
        cn = cn_
    for c in range(cn):
        acc[c] = x[c]
    for i in range(1, count):
        xp = x + i * stride
        if reduction is MaxPool:
            for c in range(cn):
                v = xp[c]
                acc[c] = v if (v > acc[c] or v != v) else acc[c]
        else:
            for c in range(cn):
                acc[c] = acc[c] + xp[c]
    for c in range(cn):
        dst[c] = acc[c]


cdef inline void _gp_rows(const real* x, Py_ssize_t stride, Py_ssize_t count, real* dst, Py_ssize_t C,
                          reduction* rtag) noexcept nogil:
    """All channels of ``count`` rows, block by block."""
    cdef Py_ssize_t c0 = 0
    cdef FullBlock* full = NULL
    cdef PartBlock* part = NULL
    while c0 + GB <= C:
        _gp_block(x + c0, stride, count, dst + c0, GB, full, rtag)
        c0 += GB
    if c0 < C:
        _gp_block(x + c0, stride, count, dst + c0, C - c0, part, rtag)


cdef void _global(const real* x, real* part, real* y, Py_ssize_t N, Py_ssize_t P, Py_ssize_t C,
                  Py_ssize_t chunk, int num_threads, reduction* rtag) noexcept nogil:
    cdef Py_ssize_t nk = (P + chunk - 1) // chunk, job, n, k, c0, cn, c
    cdef Py_ssize_t nb = (C + GB - 1) // GB
    for job in prange(N * nk, schedule="static", num_threads=num_threads):
        n = job // nk
        k = job % nk
        _gp_rows(x + (n * P + k * chunk) * C, C, min(chunk, P - k * chunk), part + job * C, C, rtag)
    for job in prange(N * nb, schedule="static", num_threads=num_threads):
        n = job // nb
        c0 = (job % nb) * GB
        cn = min(GB, C - c0)
        _gp_rows(part + n * nk * C + c0, C, nk, y + n * C + c0, cn, rtag)
        if reduction is AvgPool:
            for c in range(c0, c0 + cn):
                y[n * C + c] = y[n * C + c] / P


def global_pool(const real[:, :, ::1] x, real[:, :, ::1] part, real[:, ::1] y, bint is_max,
                int num_threads):
    """Max or mean over axis 1 of ``x`` (N, P, C) into ``y`` (N, C).

    ``part`` (N, K, C) receives the partial results of K chunks of ``ceil(P / K)`` pixels.
    """
    cdef Py_ssize_t N = x.shape[0], P = x.shape[1], C = x.shape[2], K = part.shape[1]
    cdef Py_ssize_t chunk = (P + K - 1) // K
    cdef MaxPool* mx = NULL
    cdef AvgPool* av = NULL
    if N == 0 or C == 0:
        return
    with nogil:
        if is_max:
            _global(&x[0, 0, 0], &part[0, 0, 0], &y[0, 0], N, P, C, chunk, num_threads, mx)
        else:
            _global(&x[0, 0, 0], &part[0, 0, 0], &y[0, 0], N, P, C, chunk, num_threads, av)
