# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Direct kernels of the Cython backend: depthwise convolution and global pooling.

All arrays are the kernel contract's channels-last ones, C-contiguous, so the
innermost loops run along contiguous channels.  Work is split with OpenMP
(``prange``) into jobs that write disjoint parts of the output, and every output
element is computed by one thread in an order that does not depend on the split,
so results are identical for any thread count.

Depthwise convolution (register tiling)
---------------------------------------
A tile is ``P = 8`` neighbouring output pixels of one row times one vector of
channels (64 bytes: 16 float32 or 8 float64), its 8 accumulators in vector
registers.  For each kernel tap the tap's weight vector is loaded once and used
for all 8 pixels.  Interior tiles (windows inside the input along W) run in small
C micro-kernels written with GCC vector types: a generic one over a list of taps
(any kernel size, stride, dilation), and for 3-wide kernel rows at stride 1 and 2
(MobileNet's and EfficientNet's) ones that load each input vector once for all
the taps that use it (10 loads instead of 24 per kernel row at stride 1).  They
are compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time
(``target_clones``), as in ``conv.pyx``; auto-vectorised Cython loops were measured
about 2x slower here (GCC kept a pointer per input stream and spilled them).
Border pixels, the channels left over after whole vectors, and everything the
micro-kernels do not cover go through a plain Cython loop over the taps inside
the input (its channel loop is vectorised by GCC).  Bias and the piecewise-linear
activations (relu, relu6, leaky_relu, hard_tanh, hard_sigmoid, hard_silu) are
applied to each tile before it is stored (the epilogue); the driver applies the
other activations afterwards.  Each pixel sums its taps in the same order on
every path.
"""

from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc

ctypedef fused real:
    float
    double


# ---------------------------------------------------------------- micro-kernels (C)
cdef extern from *:
    """
    #include <stddef.h>
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #  define FC_DW_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #else
    #  define FC_DW_CLONES
    #endif

    /* out[p * ldo .. + VL] (p < 8, VL = 64 / sizeof(T)) = act(bias + sum over taps of input
       vector times weight vector).
       taps:  tap t reads x + xoff[t] + p * ps for pixel p and w + woff[t].
       k3s1:  nr kernel rows of 3 taps at stride 1: input column j of row r is at
              x + xoff[r] + j * ps (ps = the channel count C), tap k's weights at
              w + woff[r] + k * ws; column j is pixel j's tap 0, pixel j - 1's tap 1 and
              pixel j - 2's tap 2, loaded once.
       k3s2:  the same at stride 2: column 2q + 2 is pixel q's tap 2 and pixel q + 1's tap 0.
       pix:   one pixel (any position): out[0 .. VL] from the nt taps listed.
       Every pixel adds its taps in order (rows, then k), as the generic loop does. */
    /* where mask m is set (all ones): b, else a (V the vector type, M its integer mask type) */
    #define FC_DW_BLEND(V, M, a, b, m) ((V)(((M)(a) & ~(m)) | ((M)(b) & (m))))

    #define FC_DW_KERNELS(T, I, SUF)                                                                \\
    typedef T fc_dv_##SUF __attribute__((vector_size(64)));                                         \\
    typedef T fc_dvu_##SUF __attribute__((vector_size(64), aligned(sizeof(T))));                    \\
    typedef I fc_dm_##SUF __attribute__((vector_size(64)));                                         \\
    /* dst = act(a + bias) for the fused codes (ACT_* below), computed as the plain Cython       \\
       loop does; comparisons with NaN are false, so NaN passes through every activation. */       \\
    static inline __attribute__((always_inline)) void fc_dw_finish_##SUF(const fc_dv_##SUF* acc,    \\
            const T* bias, int act, T* dst) {                                                       \\
        fc_dv_##SUF a = *acc;                                                                       \\
        const fc_dv_##SUF zero = {0};                                                               \\
        const fc_dv_##SUF one = zero + 1, three = zero + 3, six = zero + 6;                         \\
        fc_dv_##SUF t;                                                                              \\
        a += *(const fc_dvu_##SUF*)(bias);                                                          \\
        switch (act) {                                                                              \\
        case 1: a = FC_DW_BLEND(fc_dv_##SUF, fc_dm_##SUF, a, zero, a < zero); break;                                    \\
        case 2: a = FC_DW_BLEND(fc_dv_##SUF, fc_dm_##SUF, a, zero, a < zero);                                           \\
                a = FC_DW_BLEND(fc_dv_##SUF, fc_dm_##SUF, a, six, a > six); break;                                      \\
        case 3: a = FC_DW_BLEND(fc_dv_##SUF, fc_dm_##SUF, a * (T)0.2, a, a >= zero); break;                             \\
        case 4: a = FC_DW_BLEND(fc_dv_##SUF, fc_dm_##SUF, a, -one, a < -one);                                           \\
                a = FC_DW_BLEND(fc_dv_##SUF, fc_dm_##SUF, a, one, a > one); break;                                      \\
        case 5: case 6:                                                                             \\
            t = a + three;                                                                          \\
            t = FC_DW_BLEND(fc_dv_##SUF, fc_dm_##SUF, t, zero, t < zero);                                               \\
            t = FC_DW_BLEND(fc_dv_##SUF, fc_dm_##SUF, t, six, t > six) / six;                                           \\
            a = act == 5 ? t : a * t;                                                               \\
            break;                                                                                  \\
        }                                                                                           \\
        *(fc_dvu_##SUF*)(dst) = a;                                                                  \\
    }                                                                                               \\
    static FC_DW_CLONES void fc_dw_taps_##SUF(const T* x, ptrdiff_t ps, const ptrdiff_t* xoff,      \\
            const ptrdiff_t* woff, ptrdiff_t nt, const T* w, const T* bias, int act, T* out,     \\
            ptrdiff_t ldo) {                                                                        \\
        fc_dv_##SUF a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};\\
        for (ptrdiff_t t = 0; t < nt; t++) {                                                        \\
            const T* s = x + xoff[t];                                                               \\
            fc_dv_##SUF wv = *(const fc_dvu_##SUF*)(w + woff[t]);                                   \\
            a0 += *(const fc_dvu_##SUF*)(s) * wv;                                                   \\
            a1 += *(const fc_dvu_##SUF*)(s + ps) * wv;                                              \\
            a2 += *(const fc_dvu_##SUF*)(s + 2 * ps) * wv;                                          \\
            a3 += *(const fc_dvu_##SUF*)(s + 3 * ps) * wv;                                          \\
            a4 += *(const fc_dvu_##SUF*)(s + 4 * ps) * wv;                                          \\
            a5 += *(const fc_dvu_##SUF*)(s + 5 * ps) * wv;                                          \\
            a6 += *(const fc_dvu_##SUF*)(s + 6 * ps) * wv;                                          \\
            a7 += *(const fc_dvu_##SUF*)(s + 7 * ps) * wv;                                          \\
        }                                                                                           \\
        fc_dw_finish_##SUF(&a0, bias, act, out); fc_dw_finish_##SUF(&a1, bias, act, out + ldo);       \\
        fc_dw_finish_##SUF(&a2, bias, act, out + 2 * ldo);                                           \\
        fc_dw_finish_##SUF(&a3, bias, act, out + 3 * ldo);                                           \\
        fc_dw_finish_##SUF(&a4, bias, act, out + 4 * ldo);                                           \\
        fc_dw_finish_##SUF(&a5, bias, act, out + 5 * ldo);                                           \\
        fc_dw_finish_##SUF(&a6, bias, act, out + 6 * ldo);                                           \\
        fc_dw_finish_##SUF(&a7, bias, act, out + 7 * ldo);                                           \\
    }                                                                                               \\
    static FC_DW_CLONES void fc_dw_pix_##SUF(const T* x, const ptrdiff_t* xoff,                     \\
            const ptrdiff_t* woff, ptrdiff_t nt, const T* w, const T* bias, int act, T* out) {      \\
        fc_dv_##SUF a = {0};                                                                        \\
        for (ptrdiff_t t = 0; t < nt; t++)                                                          \\
            a += *(const fc_dvu_##SUF*)(x + xoff[t]) * *(const fc_dvu_##SUF*)(w + woff[t]);         \\
        fc_dw_finish_##SUF(&a, bias, act, out);                                                     \\
    }                                                                                               \\
    static FC_DW_CLONES void fc_dw_k3s1_##SUF(const T* x, ptrdiff_t ps, const ptrdiff_t* xoff,      \\
            const ptrdiff_t* woff, ptrdiff_t nr, const T* w, ptrdiff_t ws, const T* bias, int act,\\
            T* out, ptrdiff_t ldo) {                                                                \\
        fc_dv_##SUF a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};\\
        fc_dv_##SUF v;                                                                              \\
        for (ptrdiff_t r = 0; r < nr; r++) {                                                        \\
            const T* s = x + xoff[r];                                                               \\
            const T* k = w + woff[r];                                                               \\
            fc_dv_##SUF w0 = *(const fc_dvu_##SUF*)(k), w1 = *(const fc_dvu_##SUF*)(k + ws);        \\
            fc_dv_##SUF w2 = *(const fc_dvu_##SUF*)(k + 2 * ws);                                    \\
            v = *(const fc_dvu_##SUF*)(s);          a0 += v * w0;                                   \\
            v = *(const fc_dvu_##SUF*)(s + ps);     a0 += v * w1; a1 += v * w0;                     \\
            v = *(const fc_dvu_##SUF*)(s + 2 * ps); a0 += v * w2; a1 += v * w1; a2 += v * w0;       \\
            v = *(const fc_dvu_##SUF*)(s + 3 * ps); a1 += v * w2; a2 += v * w1; a3 += v * w0;       \\
            v = *(const fc_dvu_##SUF*)(s + 4 * ps); a2 += v * w2; a3 += v * w1; a4 += v * w0;       \\
            v = *(const fc_dvu_##SUF*)(s + 5 * ps); a3 += v * w2; a4 += v * w1; a5 += v * w0;       \\
            v = *(const fc_dvu_##SUF*)(s + 6 * ps); a4 += v * w2; a5 += v * w1; a6 += v * w0;       \\
            v = *(const fc_dvu_##SUF*)(s + 7 * ps); a5 += v * w2; a6 += v * w1; a7 += v * w0;       \\
            v = *(const fc_dvu_##SUF*)(s + 8 * ps); a6 += v * w2; a7 += v * w1;                     \\
            v = *(const fc_dvu_##SUF*)(s + 9 * ps); a7 += v * w2;                                   \\
        }                                                                                           \\
        fc_dw_finish_##SUF(&a0, bias, act, out); fc_dw_finish_##SUF(&a1, bias, act, out + ldo);       \\
        fc_dw_finish_##SUF(&a2, bias, act, out + 2 * ldo);                                           \\
        fc_dw_finish_##SUF(&a3, bias, act, out + 3 * ldo);                                           \\
        fc_dw_finish_##SUF(&a4, bias, act, out + 4 * ldo);                                           \\
        fc_dw_finish_##SUF(&a5, bias, act, out + 5 * ldo);                                           \\
        fc_dw_finish_##SUF(&a6, bias, act, out + 6 * ldo);                                           \\
        fc_dw_finish_##SUF(&a7, bias, act, out + 7 * ldo);                                           \\
    }                                                                                               \\
    static FC_DW_CLONES void fc_dw_k3s2_##SUF(const T* x, ptrdiff_t ps, const ptrdiff_t* xoff,      \\
            const ptrdiff_t* woff, ptrdiff_t nr, const T* w, ptrdiff_t ws, const T* bias, int act,\\
            T* out, ptrdiff_t ldo) {                                                                \\
        fc_dv_##SUF a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};\\
        fc_dv_##SUF v;                                                                              \\
        for (ptrdiff_t r = 0; r < nr; r++) {                                                        \\
            const T* s = x + xoff[r];                                                               \\
            const T* k = w + woff[r];                                                               \\
            fc_dv_##SUF w0 = *(const fc_dvu_##SUF*)(k), w1 = *(const fc_dvu_##SUF*)(k + ws);        \\
            fc_dv_##SUF w2 = *(const fc_dvu_##SUF*)(k + 2 * ws);                                    \\
            v = *(const fc_dvu_##SUF*)(s);           a0 += v * w0;                                  \\
            v = *(const fc_dvu_##SUF*)(s + ps);      a0 += v * w1;                                  \\
            v = *(const fc_dvu_##SUF*)(s + 2 * ps);  a0 += v * w2; a1 += v * w0;                    \\
            v = *(const fc_dvu_##SUF*)(s + 3 * ps);  a1 += v * w1;                                  \\
            v = *(const fc_dvu_##SUF*)(s + 4 * ps);  a1 += v * w2; a2 += v * w0;                    \\
            v = *(const fc_dvu_##SUF*)(s + 5 * ps);  a2 += v * w1;                                  \\
            v = *(const fc_dvu_##SUF*)(s + 6 * ps);  a2 += v * w2; a3 += v * w0;                    \\
            v = *(const fc_dvu_##SUF*)(s + 7 * ps);  a3 += v * w1;                                  \\
            v = *(const fc_dvu_##SUF*)(s + 8 * ps);  a3 += v * w2; a4 += v * w0;                    \\
            v = *(const fc_dvu_##SUF*)(s + 9 * ps);  a4 += v * w1;                                  \\
            v = *(const fc_dvu_##SUF*)(s + 10 * ps); a4 += v * w2; a5 += v * w0;                    \\
            v = *(const fc_dvu_##SUF*)(s + 11 * ps); a5 += v * w1;                                  \\
            v = *(const fc_dvu_##SUF*)(s + 12 * ps); a5 += v * w2; a6 += v * w0;                    \\
            v = *(const fc_dvu_##SUF*)(s + 13 * ps); a6 += v * w1;                                  \\
            v = *(const fc_dvu_##SUF*)(s + 14 * ps); a6 += v * w2; a7 += v * w0;                    \\
            v = *(const fc_dvu_##SUF*)(s + 15 * ps); a7 += v * w1;                                  \\
            v = *(const fc_dvu_##SUF*)(s + 16 * ps); a7 += v * w2;                                  \\
        }                                                                                           \\
        fc_dw_finish_##SUF(&a0, bias, act, out); fc_dw_finish_##SUF(&a1, bias, act, out + ldo);       \\
        fc_dw_finish_##SUF(&a2, bias, act, out + 2 * ldo);                                           \\
        fc_dw_finish_##SUF(&a3, bias, act, out + 3 * ldo);                                           \\
        fc_dw_finish_##SUF(&a4, bias, act, out + 4 * ldo);                                           \\
        fc_dw_finish_##SUF(&a5, bias, act, out + 5 * ldo);                                           \\
        fc_dw_finish_##SUF(&a6, bias, act, out + 6 * ldo);                                           \\
        fc_dw_finish_##SUF(&a7, bias, act, out + 7 * ldo);                                           \\
    }

    FC_DW_KERNELS(float, int, f)
    FC_DW_KERNELS(double, long long, d)
    """
    void fc_dw_taps_f(const float* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                      Py_ssize_t nt, const float* w, const float* bias, int act, float* out,
                      Py_ssize_t ldo) noexcept nogil
    void fc_dw_taps_d(const double* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                      Py_ssize_t nt, const double* w, const double* bias, int act, double* out,
                      Py_ssize_t ldo) noexcept nogil
    void fc_dw_pix_f(const float* x, const Py_ssize_t* xoff, const Py_ssize_t* woff, Py_ssize_t nt,
                     const float* w, const float* bias, int act, float* out) noexcept nogil
    void fc_dw_pix_d(const double* x, const Py_ssize_t* xoff, const Py_ssize_t* woff, Py_ssize_t nt,
                     const double* w, const double* bias, int act, double* out) noexcept nogil
    void fc_dw_k3s1_f(const float* x, Py_ssize_t ps, const Py_ssize_t* xoff,
                      const Py_ssize_t* woff, Py_ssize_t nr, const float* w, Py_ssize_t ws,
                      const float* bias, int act, float* out, Py_ssize_t ldo) noexcept nogil
    void fc_dw_k3s1_d(const double* x, Py_ssize_t ps, const Py_ssize_t* xoff,
                      const Py_ssize_t* woff, Py_ssize_t nr, const double* w, Py_ssize_t ws,
                      const double* bias, int act, double* out, Py_ssize_t ldo) noexcept nogil
    void fc_dw_k3s2_f(const float* x, Py_ssize_t ps, const Py_ssize_t* xoff,
                      const Py_ssize_t* woff, Py_ssize_t nr, const float* w, Py_ssize_t ws,
                      const float* bias, int act, float* out, Py_ssize_t ldo) noexcept nogil
    void fc_dw_k3s2_d(const double* x, Py_ssize_t ps, const Py_ssize_t* xoff,
                      const Py_ssize_t* woff, Py_ssize_t nr, const double* w, Py_ssize_t ws,
                      const double* bias, int act, double* out, Py_ssize_t ldo) noexcept nogil


# Tile sizes.  A tile is TW = 8 output pixels x one 64-byte vector of channels (VL = 16
# float32 / 8 float64): 8 accumulator registers of the 32 AVX-512 ones (16 of the 16
# AVX2 ones, half of them then kept in L1), plus one kernel row's 3 weight vectors and
# the input vector.  What a tile reads per kernel row, (TW - 1) * stride + KW input
# pixels of one vector, is about 1 KiB, far inside the 32 KiB L1d; a job (one output
# row, one channel block) reads KH input rows of W vectors (~22 KiB for 3 x 112 x 16
# float32) that stay in the 512 KiB L2 for the job of the next output row, which
# reuses KH - 1 of them.
cdef enum:
    TW = 8
    VEC_BYTES = 64
    VL_MAX = 16

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

#: Channels per block (one vector) for float32 and float64.
BLOCK_CHANNELS = {4: VEC_BYTES // 4, 8: VEC_BYTES // 8}
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
    # micro-kernel: 0 generic taps, 1 three taps at stride 1, 2 three taps at stride 2
    int kind
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


cdef inline void _dw_pixel(const real* x, const real* wt, const real* bias, real* y,
                           const Geometry* g, Py_ssize_t n, Py_ssize_t od, Py_ssize_t oh,
                           Py_ssize_t ow, Py_ssize_t c0, Py_ssize_t cn, Py_ssize_t m) noexcept nogil:
    """One output pixel, any position, channels ``c0 .. c0 + cn - 1`` (cn <= VL_MAX),
    multiplier ``m``: the taps inside the input, in order."""
    cdef real acc[VL_MAX]
    cdef Py_ssize_t c, kd, kh, kw, i_d, i_h, iw
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


cdef inline void _dw_vpixel(const real* x, const real* wt, const real* bias, real* y,
                            const Geometry* g, Py_ssize_t n, Py_ssize_t od, Py_ssize_t oh,
                            Py_ssize_t ow, Py_ssize_t c0, Py_ssize_t m, Py_ssize_t* offs) noexcept nogil:
    """One output pixel, any position, one whole vector of channels from ``c0``: the taps
    inside the input are listed (in order) into ``offs`` for the one-pixel micro-kernel."""
    cdef real out[VL_MAX]
    cdef Py_ssize_t VL = VEC_BYTES // sizeof(real), C = g.C, M = g.M, ntaps = g.KD * g.KH * g.KW
    cdef Py_ssize_t kd, kh, kw, i_d, i_h, iw, c, nt = 0
    cdef Py_ssize_t* xoff = offs
    cdef Py_ssize_t* woff = offs + ntaps
    cdef real* yp = y + (((n * g.OD + od) * g.OH + oh) * g.OW + ow) * C * M + c0 * M + m
    for kd in range(g.KD):
        i_d = od * g.sd - g.pd + kd * g.dd
        if i_d < 0 or i_d >= g.D:
            continue
        for kh in range(g.KH):
            i_h = oh * g.sh - g.ph + kh * g.dh
            if i_h < 0 or i_h >= g.H:
                continue
            for kw in range(g.KW):
                iw = ow * g.sw - g.pw + kw * g.dw
                if iw < 0 or iw >= g.W:
                    continue
                xoff[nt] = (((n * g.D + i_d) * g.H + i_h) * g.W + iw) * C
                woff[nt] = ((kd * g.KH + kh) * g.KW + kw) * M * C
                nt += 1
    if real is float:
        fc_dw_pix_f(x + c0, xoff, woff, nt, wt + m * C + c0, bias + m * C + c0, g.act,
                    yp if M == 1 else out)
    else:
        fc_dw_pix_d(x + c0, xoff, woff, nt, wt + m * C + c0, bias + m * C + c0, g.act,
                    yp if M == 1 else out)
    if M > 1:
        for c in range(VL):
            yp[c * M] = out[c]


cdef inline void _dw_tile(const real* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                          Py_ssize_t nt, const real* w, Py_ssize_t ws, const real* bias, int act,
                          real* out, Py_ssize_t ldo, int kind) noexcept nogil:
    """The micro-kernel of this kind and type."""
    if real is float:
        if kind == 1:
            fc_dw_k3s1_f(x, ps, xoff, woff, nt, w, ws, bias, act, out, ldo)
        elif kind == 2:
            fc_dw_k3s2_f(x, ps, xoff, woff, nt, w, ws, bias, act, out, ldo)
        else:
            fc_dw_taps_f(x, ps, xoff, woff, nt, w, bias, act, out, ldo)
    else:
        if kind == 1:
            fc_dw_k3s1_d(x, ps, xoff, woff, nt, w, ws, bias, act, out, ldo)
        elif kind == 2:
            fc_dw_k3s2_d(x, ps, xoff, woff, nt, w, ws, bias, act, out, ldo)
        else:
            fc_dw_taps_d(x, ps, xoff, woff, nt, w, bias, act, out, ldo)


cdef void _dw_job(const real* x, const real* wt, const real* bias, real* y, const Geometry* g,
                  Py_ssize_t job, Py_ssize_t* offs) noexcept nogil:
    """Job ``job``: (output row, column segment, channel block), channel blocks innermost and
    rows outermost, so a thread's consecutive jobs share input rows in cache.  ``offs`` has
    room for four offsets per kernel tap (the row's tap list and a pixel's)."""
    cdef real out[TW * VL_MAX]
    cdef Py_ssize_t VL = VEC_BYTES // sizeof(real), C = g.C, M = g.M
    cdef Py_ssize_t blk = job % g.nblk, seg = (job // g.nblk) % g.nseg, row = job // (g.nblk * g.nseg)
    cdef Py_ssize_t n = row // (g.OD * g.OH), od = (row // g.OH) % g.OD, oh = row % g.OH
    cdef Py_ssize_t a = seg * g.seg, b = min(a + g.seg, g.OW)
    cdef Py_ssize_t c0 = blk * VL, cn = min(VL, C - c0)
    cdef Py_ssize_t lo = min(max(g.ow_lo, a), b), hi = max(min(g.ow_hi, b), lo)
    cdef Py_ssize_t m, ow, p, c, kd, kh, kw, i_d, i_h, nt = 0, rowoff, tap
    cdef Py_ssize_t* xoff = offs
    cdef Py_ssize_t* woff = offs + g.KD * g.KH * g.KW
    cdef Py_ssize_t* pixoffs = offs + 2 * g.KD * g.KH * g.KW
    cdef real* yrow = y + ((n * g.OD + od) * g.OH + oh) * g.OW * C * M + c0 * M
    if cn < VL:
        # the channels left over after whole vectors
        for m in range(M):
            for ow in range(a, b):
                _dw_pixel(x, wt, bias, y, g, n, od, oh, ow, c0, cn, m)
        return
    if hi - lo < TW:
        # too few interior pixels for a tile (small images)
        for m in range(M):
            for ow in range(a, b):
                _dw_vpixel(x, wt, bias, y, g, n, od, oh, ow, c0, m, pixoffs)
        return
    # the taps inside the input along D and H (the same for every tile of the row), as
    # offsets from the tile's first input pixel and from the multiplier's weights
    for kd in range(g.KD):
        i_d = od * g.sd - g.pd + kd * g.dd
        if i_d < 0 or i_d >= g.D:
            continue
        for kh in range(g.KH):
            i_h = oh * g.sh - g.ph + kh * g.dh
            if i_h < 0 or i_h >= g.H:
                continue
            rowoff = ((n * g.D + i_d) * g.H + i_h) * g.W * C - g.pw * C
            tap = (kd * g.KH + kh) * g.KW
            if g.kind:
                # one entry per kernel row: the micro-kernel walks its 3 taps
                xoff[nt] = rowoff
                woff[nt] = tap * M * C
                nt += 1
            else:
                for kw in range(g.KW):
                    xoff[nt] = rowoff + kw * g.dw * C
                    woff[nt] = (tap + kw) * M * C
                    nt += 1
    for m in range(M):
        for ow in range(a, lo):
            _dw_vpixel(x, wt, bias, y, g, n, od, oh, ow, c0, m, pixoffs)
        ow = lo
        while ow < hi:
            if ow + TW > hi:
                # the interior pixels left over: one more tile ending at hi, overlapping
                # the previous one (its pixels are recomputed in the same order: same values)
                ow = hi - TW
            if M == 1:
                # bias and activation in the micro-kernel, stored straight into y
                _dw_tile(x + ow * g.sw * C + c0, C if g.kind else g.sw * C, xoff, woff, nt,
                         wt + c0, C, bias + c0, g.act, yrow + ow * C, C, g.kind)
            else:
                # into a buffer, then to every M-th channel of y
                _dw_tile(x + ow * g.sw * C + c0, C if g.kind else g.sw * C, xoff, woff, nt,
                         wt + m * C + c0, M * C, bias + m * C + c0, g.act, out, VL, g.kind)
                for p in range(TW):
                    for c in range(VL):
                        yrow[(ow + p) * C * M + c * M + m] = out[p * VL + c]
            ow += TW
        for ow in range(hi, b):
            _dw_vpixel(x, wt, bias, y, g, n, od, oh, ow, c0, m, pixoffs)


cdef void _depthwise(const real* x, const real* wt, const real* bias, real* y, const Geometry* g,
                     int num_threads) noexcept nogil:
    cdef Py_ssize_t jobs = g.N * g.OD * g.OH * g.nseg * g.nblk, job, ntaps = g.KD * g.KH * g.KW
    cdef Py_ssize_t* offs = NULL
    with nogil, parallel(num_threads=num_threads):
        offs = <Py_ssize_t*>malloc(4 * ntaps * sizeof(Py_ssize_t))
        if offs != NULL:
            for job in prange(jobs, schedule="static"):
                _dw_job(x, wt, bias, y, g, job, offs)
            free(offs)


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
    cdef Py_ssize_t last, vl = VEC_BYTES // x.itemsize
    g.N, g.D, g.H, g.W, g.C = x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    g.M = wt.shape[1]
    g.OD, g.OH, g.OW = y.shape[1], y.shape[2], y.shape[3]
    g.KD, g.KH, g.KW = ksize
    g.sd, g.sh, g.sw = strides
    g.dd, g.dh, g.dw = dilation
    g.pd, g.ph, g.pw = before
    g.act = act
    g.kind = g.sw if g.KW == 3 and g.dw == 1 and g.sw <= 2 else 0
    # interior columns: ow * sw - pw >= 0 and ow * sw - pw + (KW - 1) * dw <= W - 1
    g.ow_lo = min((g.pw + g.sw - 1) // g.sw, g.OW)
    last = g.W - 1 + g.pw - (g.KW - 1) * g.dw
    g.ow_hi = min(last // g.sw + 1, g.OW) if last >= 0 else 0
    g.ow_hi = max(g.ow_hi, g.ow_lo)
    g.seg = max(1, seg)
    g.nseg = (g.OW + g.seg - 1) // g.seg
    g.nblk = (g.C + vl - 1) // vl
    if y.shape[0] == 0 or y.shape[1] == 0 or y.shape[2] == 0 or y.shape[3] == 0 or y.shape[4] == 0:
        return
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

ctypedef struct FullBlock:   # GB channels
    char _
ctypedef struct PartBlock:   # fewer, counted at run time
    char _
ctypedef fused chans:
    FullBlock
    PartBlock

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
