# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Convolution kernels of the Cython backend: GEMM over implicit-im2col tiles and direct loops.

Every kernel works on the kernel contract's channels-last arrays (N, D, H, W, C)
and runs a list of *tasks* under one OpenMP ``prange``; the Python driver
(:mod:`fastconv.backends._cython_conv`) builds the lists.  A task is a block of
output pixels (and, for layers with few pixels, a block of output channels) of
one *job*; a job is one convolution geometry (the forward convolution, or one
output phase of a transposed convolution), described by a row of ``jobs``:

====  ============================================================================
cols  meaning
====  ============================================================================
0-2   job output grid (OD, OH, OW)
3-5   padding before, per axis: input index = o * stride - pad + tap * dilation
      (may be negative: a phase of a transposed convolution starts inside x)
6-8   strides          9-11  dilation          12-14  kernel size (KD, KH, KW)
15-17 position in ``y`` of the job's output (0, 0, 0)
18-20 step in ``y`` per job output step (1 for a forward convolution)
21    offset of the job's weight matrix in ``wbuf``
22    mode: 0 pack patches (im2col), 1 read the rows of ``x`` directly (1x1,
      stride 1, no padding: ``x`` *is* the patch matrix), 2 no tap reaches these
      outputs (bias and activation only)
23    1 if the job's output pixels are the rows of ``y`` in order (write in place)
====  ============================================================================

A job's weights are the Keras kernel reshaped, (KD * KH * KW * Cg, F) row-major:
row ``tap * Cg + c``.  ``tasks`` rows are (job, first pixel, pixels, f0, f1).
Bias and activation are applied to each task's output while it is in cache
(the *epilogue*; the direct micro-kernels do bias, ReLU and ReLU6 themselves where
they write into ``y``); ``code`` numbers the activation (see ``ACT_CODES`` in the driver).
"""

from cython.parallel cimport prange, threadid
from libc.math cimport erfc, exp, expm1, fabs, log1p, sqrt, tanh
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

ctypedef fused real:
    float
    double


# ---------------------------------------------------------------- micro-kernels (C)
# The direct kernels' inner loops are written with GCC vector types: one vector is
# 64 bytes (16 floats / 8 doubles, one AVX-512 register), and a micro-tile keeps
# 6 output pixels x 4 vectors, or 8 (6 grouped) pixels x 1 vector of output channels
# in registers while it runs over taps x input channels.  They are compiled for x86-64-v4 (AVX-512), -v3 (AVX2+FMA)
# and baseline, picked at load time (``target_clones``), so the module runs on any
# x86-64 while using the wide units where present; other compilers/platforms get
# the baseline build only.
cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>
    #include <math.h>
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #  define FC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #else
    #  define FC_CLONES
    #endif
    #define FC_P 8

    /* Every micro-kernel starts its accumulators from ``bias`` (a vector per accumulated vector
       of channels; zero if NULL) and applies activation ``act`` (0 none, 1 ReLU, 2 ReLU6) as it
       stores them, so that where it writes straight into the output no epilogue pass remains.
       The clamps are bit selections: NaN passes through them, as through the scalar ones. */
    #define FC_START(SUF, bias, off) ((bias) ? *(const fc_vu_##SUF*)((bias) + (off)) : (fc_v_##SUF){0})
    #define FC_PUT(SUF, ptr, val, act) do {                                                         \\
        fc_v_##SUF v_ = (val);                                                                      \\
        if (act) {                                                                                  \\
            fc_v_##SUF z_ = {0};                                                                    \\
            fc_i_##SUF m_ = v_ < z_;                                                                \\
            v_ = (fc_v_##SUF)((fc_i_##SUF)v_ & ~m_);                                                \\
            if (act == 2) {                                                                         \\
                fc_v_##SUF s_ = z_ + 6;                                                             \\
                m_ = v_ > s_;                                                                       \\
                v_ = (fc_v_##SUF)(((fc_i_##SUF)v_ & ~m_) | ((fc_i_##SUF)s_ & m_));                  \\
            }                                                                                       \\
        }                                                                                           \\
        *(fc_vu_##SUF*)(ptr) = v_;                                                                  \\
    } while (0)

    /* out[p * ldo + 0:VL] = sum_t sum_c x[p * ps + xoff[t] + c] * w[woff[t] + c * ldw + 0:VL],
       p < FC_P (bcast8) or p = 0 (bcast1): the input value is broadcast, the weights are a vector. */
    #define FC_KERNELS(T, SUF, IT)                                                                  \\
    typedef T fc_v_##SUF __attribute__((vector_size(64)));                                          \\
    typedef T fc_vu_##SUF __attribute__((vector_size(64), aligned(sizeof(T))));                     \\
    typedef IT fc_i_##SUF __attribute__((vector_size(64)));                                         \\
    static FC_CLONES void fc_bcast8_##SUF(const T* x, ptrdiff_t ps, const ptrdiff_t* xoff,          \\
            const ptrdiff_t* woff, ptrdiff_t nt, ptrdiff_t C, const T* w, ptrdiff_t ldw,           \\
            T* out, ptrdiff_t ldo, const T* bias, int act) {                                        \\
        fc_v_##SUF a0 = FC_START(SUF, bias, 0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0,        \\
            a6 = a0, a7 = a0;                                                                       \\
        for (ptrdiff_t t = 0; t < nt; t++) {                                                        \\
            const T* xs = x + xoff[t];                                                              \\
            const T* ws = w + woff[t];                                                              \\
            for (ptrdiff_t c = 0; c < C; c++) {                                                     \\
                fc_v_##SUF wv = *(const fc_vu_##SUF*)(ws + c * ldw);                                \\
                a0 += xs[c] * wv; a1 += xs[ps + c] * wv;                                            \\
                a2 += xs[2 * ps + c] * wv; a3 += xs[3 * ps + c] * wv;                               \\
                a4 += xs[4 * ps + c] * wv; a5 += xs[5 * ps + c] * wv;                               \\
                a6 += xs[6 * ps + c] * wv; a7 += xs[7 * ps + c] * wv;                               \\
            }                                                                                       \\
        }                                                                                           \\
        FC_PUT(SUF, out, a0, act); FC_PUT(SUF, out + ldo, a1, act);                                 \\
        FC_PUT(SUF, out + 2 * ldo, a2, act); FC_PUT(SUF, out + 3 * ldo, a3, act);                   \\
        FC_PUT(SUF, out + 4 * ldo, a4, act); FC_PUT(SUF, out + 5 * ldo, a5, act);                   \\
        FC_PUT(SUF, out + 6 * ldo, a6, act); FC_PUT(SUF, out + 7 * ldo, a7, act);                   \\
    }                                                                                               \\
    static FC_CLONES void fc_bcast1_##SUF(const T* x, const ptrdiff_t* xoff, const ptrdiff_t* woff, \\
            ptrdiff_t nt, ptrdiff_t C, const T* w, ptrdiff_t ldw, T* out, const T* bias, int act) { \\
        /* four taps at a time into four accumulators: no chain of dependent FMAs */                \\
        fc_v_##SUF a0 = FC_START(SUF, bias, 0), a1 = {0}, a2 = {0}, a3 = {0};                       \\
        ptrdiff_t t = 0;                                                                            \\
        for (; t + 4 <= nt; t += 4) {                                                               \\
            const T *x0 = x + xoff[t], *x1 = x + xoff[t + 1], *x2 = x + xoff[t + 2], *x3 = x + xoff[t + 3]; \\
            const T *w0 = w + woff[t], *w1 = w + woff[t + 1], *w2 = w + woff[t + 2], *w3 = w + woff[t + 3]; \\
            for (ptrdiff_t c = 0; c < C; c++) {                                                     \\
                a0 += x0[c] * *(const fc_vu_##SUF*)(w0 + c * ldw);                                  \\
                a1 += x1[c] * *(const fc_vu_##SUF*)(w1 + c * ldw);                                  \\
                a2 += x2[c] * *(const fc_vu_##SUF*)(w2 + c * ldw);                                  \\
                a3 += x3[c] * *(const fc_vu_##SUF*)(w3 + c * ldw);                                  \\
            }                                                                                       \\
        }                                                                                           \\
        for (; t < nt; t++) {                                                                       \\
            const T* xs = x + xoff[t];                                                              \\
            const T* ws = w + woff[t];                                                              \\
            for (ptrdiff_t c = 0; c < C; c++)                                                       \\
                a0 += xs[c] * *(const fc_vu_##SUF*)(ws + c * ldw);                                  \\
        }                                                                                           \\
        FC_PUT(SUF, out, (a0 + a1) + (a2 + a3), act);                                               \\
    }

    /* out[p * ldo + 0:4*VL] for p < P (P = 1..6, a compile-time constant per function): the
       4-vector micro-kernel, 6 x 4 accumulators at most (24 of AVX-512's 32 registers). */
    #define FC_BX4(T, SUF, P)                                                                       \\
    static FC_CLONES void fc_bcast##P##x4_##SUF(const T* x, ptrdiff_t ps, const ptrdiff_t* xoff,    \\
            const ptrdiff_t* woff, ptrdiff_t nt, ptrdiff_t C, const T* w, ptrdiff_t ldw,           \\
            T* out, ptrdiff_t ldo, const T* bias, int act) {                                        \\
        const int VL = 64 / sizeof(T);                                                              \\
        fc_v_##SUF a[P][4];                                                                         \\
        for (int v = 0; v < 4; v++) {                                                               \\
            a[0][v] = FC_START(SUF, bias, v * VL);                                                  \\
            for (int p = 1; p < P; p++) a[p][v] = a[0][v];                                          \\
        }                                                                                           \\
        for (ptrdiff_t t = 0; t < nt; t++) {                                                        \\
            const T* xs = x + xoff[t];                                                              \\
            const T* ws = w + woff[t];                                                              \\
            for (ptrdiff_t c = 0; c < C; c++) {                                                     \\
                const T* wr = ws + c * ldw;                                                         \\
                fc_v_##SUF w0 = *(const fc_vu_##SUF*)(wr), w1 = *(const fc_vu_##SUF*)(wr + VL);     \\
                fc_v_##SUF w2 = *(const fc_vu_##SUF*)(wr + 2 * VL);                                 \\
                fc_v_##SUF w3 = *(const fc_vu_##SUF*)(wr + 3 * VL);                                 \\
                for (int p = 0; p < P; p++) {                                                       \\
                    T xv = xs[p * ps + c];                                                          \\
                    a[p][0] += xv * w0; a[p][1] += xv * w1; a[p][2] += xv * w2; a[p][3] += xv * w3; \\
                }                                                                                   \\
            }                                                                                       \\
        }                                                                                           \\
        for (int p = 0; p < P; p++) for (int v = 0; v < 4; v++)                                     \\
            FC_PUT(SUF, out + p * ldo + v * VL, a[p][v], act);                                      \\
    }
    #define FC_BX4_ALL(T, SUF) \\
        FC_BX4(T, SUF, 1) FC_BX4(T, SUF, 2) FC_BX4(T, SUF, 3) FC_BX4(T, SUF, 4) FC_BX4(T, SUF, 5) FC_BX4(T, SUF, 6)

    /* Grouped convolutions with fewer output channels per group than a vector holds: lane l of
       the output vector is channel f = f0 + l, of group g(f), and needs input channel
       g(f) * Cg + c for c < Cg.  Those inputs lie in the NS (1 or 2) vectors at x + xoff[t] + p * ps
       (the driver places the block's base so that they do): they are loaded once per pixel and tap,
       and each c's vector is one permutation of them by the index vector idx[c] (vpermps /
       vpermt2ps on AVX-512), so the groups' inputs are read in place, never copied apart.
       out[p * ldo + 0:VL] = sum_t sum_c perm_c(x[p * ps + xoff[t] ...]) * w[woff[t] + c * ldw + 0:VL],
       p < P, the same sequence of operations per pixel for every P. */
    #define FC_GRP(T, SUF, IT, P)                                                                   \\
    static FC_CLONES void fc_grp##P##_##SUF(const T* x, ptrdiff_t ps, const ptrdiff_t* xoff,        \\
            const ptrdiff_t* woff, ptrdiff_t nt, ptrdiff_t Cg, int NS, const IT* idx, const T* w,   \\
            ptrdiff_t ldw, T* out, ptrdiff_t ldo, const T* bias, int act) {                         \\
        typedef IT fc_mu __attribute__((vector_size(64), aligned(sizeof(IT))));                     \\
        const int VL = 64 / sizeof(T);                                                              \\
        fc_v_##SUF a[P];                                                                            \\
        a[0] = FC_START(SUF, bias, 0);                                                              \\
        for (int p = 1; p < P; p++) a[p] = a[0];                                                    \\
        if (NS == 1) {                                                                              \\
            for (ptrdiff_t t = 0; t < nt; t++) {                                                    \\
                const T* xs = x + xoff[t];                                                          \\
                const T* ws = w + woff[t];                                                          \\
                fc_v_##SUF xv[P];                                                                   \\
                for (int p = 0; p < P; p++) xv[p] = *(const fc_vu_##SUF*)(xs + p * ps);             \\
                for (ptrdiff_t c = 0; c < Cg; c++) {                                                \\
                    fc_i_##SUF m = *(const fc_mu*)(idx + c * VL);                                   \\
                    fc_v_##SUF wv = *(const fc_vu_##SUF*)(ws + c * ldw);                            \\
                    for (int p = 0; p < P; p++) a[p] += __builtin_shuffle(xv[p], m) * wv;           \\
                }                                                                                   \\
            }                                                                                       \\
        } else {                                                                                    \\
            for (ptrdiff_t t = 0; t < nt; t++) {                                                    \\
                const T* xs = x + xoff[t];                                                          \\
                const T* ws = w + woff[t];                                                          \\
                fc_v_##SUF lo[P], hi[P];                                                            \\
                for (int p = 0; p < P; p++) {                                                       \\
                    lo[p] = *(const fc_vu_##SUF*)(xs + p * ps);                                     \\
                    hi[p] = *(const fc_vu_##SUF*)(xs + p * ps + VL);                                \\
                }                                                                                   \\
                for (ptrdiff_t c = 0; c < Cg; c++) {                                                \\
                    fc_i_##SUF m = *(const fc_mu*)(idx + c * VL);                                   \\
                    fc_v_##SUF wv = *(const fc_vu_##SUF*)(ws + c * ldw);                            \\
                    for (int p = 0; p < P; p++) a[p] += __builtin_shuffle(lo[p], hi[p], m) * wv;    \\
                }                                                                                   \\
            }                                                                                       \\
        }                                                                                           \\
        for (int p = 0; p < P; p++) FC_PUT(SUF, out + p * ldo, a[p], act);                          \\
    }

    /* The grouped micro-kernel for 3 taps along the row at stride S (1 or 2) and dilation 1
       (3x3 and 3x3x3 grouped layers): the S * (P - 1) + 3 input columns of a kernel row are
       loaded once and each permutation of a column serves every pixel that reads it (up to 3
       at stride 1, 2 or 1 at stride 2; a zmm permutation costs about two FMA slots on Zen 4:
       one per FMA, as in fc_grp*, halves the throughput).  Kernel row r: inputs at
       x + xoff[3 r] + j * ps (ps: one pixel), weights at w + woff[3 r] + (kw * Cg + c) * ldw. */
    #define FC_GRPW3(T, SUF, IT, S, P)                                                              \\
    static FC_CLONES void fc_grpw3_s##S##_##P##_##SUF(const T* x, ptrdiff_t ps,                     \\
            const ptrdiff_t* xoff, const ptrdiff_t* woff, ptrdiff_t nrow, ptrdiff_t Cg,             \\
            const IT* idx, const T* w, ptrdiff_t ldw, T* out, ptrdiff_t ldo, const T* bias, int act) { \\
        typedef IT fc_mu __attribute__((vector_size(64), aligned(sizeof(IT))));                     \\
        const int VL = 64 / sizeof(T);                                                              \\
        enum { NJ = S * (P - 1) + 3 };                                                              \\
        fc_v_##SUF a[P];                                                                            \\
        a[0] = FC_START(SUF, bias, 0);                                                              \\
        for (int p = 1; p < P; p++) a[p] = a[0];                                                    \\
        for (ptrdiff_t r = 0; r < nrow; r++) {                                                      \\
            const T* xs = x + xoff[3 * r];                                                          \\
            const T* ws = w + woff[3 * r];                                                          \\
            fc_v_##SUF xv[NJ];                                                                      \\
            for (int j = 0; j < NJ; j++) xv[j] = *(const fc_vu_##SUF*)(xs + j * ps);                \\
            for (ptrdiff_t c = 0; c < Cg; c++) {                                                    \\
                fc_i_##SUF m = *(const fc_mu*)(idx + c * VL);                                       \\
                fc_v_##SUF wk[3];                                                                   \\
                for (int k = 0; k < 3; k++) wk[k] = *(const fc_vu_##SUF*)(ws + (k * Cg + c) * ldw); \\
                for (int j = 0; j < NJ; j++) {                                                      \\
                    fc_v_##SUF xp = __builtin_shuffle(xv[j], m);                                    \\
                    for (int k = 0; k < 3; k++)   /* pixel (j - k) / S reads column j with tap k */ \\
                        if (j >= k && (j - k) % S == 0 && (j - k) / S < P) a[(j - k) / S] += xp * wk[k]; \\
                }                                                                                   \\
            }                                                                                       \\
        }                                                                                           \\
        for (int p = 0; p < P; p++) FC_PUT(SUF, out + p * ldo, a[p], act);                          \\
    }

    FC_KERNELS(float, f, int32_t)
    FC_KERNELS(double, d, int64_t)
    FC_BX4_ALL(float, f)
    FC_BX4_ALL(double, d)
    FC_GRP(float, f, int32_t, 1)
    FC_GRP(float, f, int32_t, 8)
    FC_GRP(double, d, int64_t, 1)
    FC_GRP(double, d, int64_t, 8)
    FC_GRPW3(float, f, int32_t, 1, 6)
    FC_GRPW3(double, d, int64_t, 1, 6)
    FC_GRPW3(float, f, int32_t, 2, 6)
    FC_GRPW3(double, d, int64_t, 2, 6)

    /* Epilogue of a block of rows: dst[r * ldd + :n] = act(src[r * lds + :n] + bias[:n]), r < rows,
       for the activations computed in the data's precision (code 0 none, 1 ReLU, 2 ReLU6; bias
       may be NULL, dst may be src); plain loops that GCC vectorises for each clone.  NaN passes
       through both clamps. */
    #define FC_CLAMP(v) ((v) < lo ? lo : ((v) > top ? top : (v)))
    #define FC_FINISH(T, SUF)                                                                       \\
    static FC_CLONES void fc_finish_##SUF(T* dst, ptrdiff_t ldd, const T* src, ptrdiff_t lds,     \\
            ptrdiff_t rows, ptrdiff_t n, const T* bias, int code) {                                 \\
        const T top = code == 2 ? (T)6 : (T)INFINITY;                                               \\
        const T lo = code == 0 ? (T)-INFINITY : (T)0;                                               \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                                      \\
            T* d = dst + r * ldd;                                                                   \\
            const T* s = src + r * lds;                                                             \\
            if (d == s) {  /* in place: one pointer, nothing for the vectoriser to check */         \\
                if (bias != NULL)                                                                   \\
                    for (ptrdiff_t i = 0; i < n; i++) { T v = d[i] + bias[i]; d[i] = FC_CLAMP(v); } \\
                else if (code != 0)                                                                 \\
                    for (ptrdiff_t i = 0; i < n; i++) { T v = d[i]; d[i] = FC_CLAMP(v); }           \\
            } else if (bias != NULL) {                                                              \\
                for (ptrdiff_t i = 0; i < n; i++) { T v = s[i] + bias[i]; d[i] = FC_CLAMP(v); }     \\
            } else {                                                                                \\
                for (ptrdiff_t i = 0; i < n; i++) { T v = s[i]; d[i] = FC_CLAMP(v); }               \\
            }                                                                                       \\
        }                                                                                           \\
    }
    FC_FINISH(float, f)
    FC_FINISH(double, d)

    /* Whether the CPU runs the x86-64-v4 clones (AVX-512 F/BW/DQ/VL): the grouped kernels'
       permutations are single instructions there, and emulated lane by lane elsewhere. */
    static int fc_has_avx512(void) {
    #if defined(__GNUC__) && defined(__x86_64__)
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    #else
        return 0;
    #endif
    }

    """
    void fc_bcast8_f(const float* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                     Py_ssize_t nt, Py_ssize_t C, const float* w, Py_ssize_t ldw, float* out,
                     Py_ssize_t ldo, const float* bias, int act) noexcept nogil
    void fc_bcast8_d(const double* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                     Py_ssize_t nt, Py_ssize_t C, const double* w, Py_ssize_t ldw, double* out,
                     Py_ssize_t ldo, const double* bias, int act) noexcept nogil
    void fc_bcast1_f(const float* x, const Py_ssize_t* xoff, const Py_ssize_t* woff, Py_ssize_t nt,
                     Py_ssize_t C, const float* w, Py_ssize_t ldw, float* out, const float* bias,
                     int act) noexcept nogil
    void fc_bcast1_d(const double* x, const Py_ssize_t* xoff, const Py_ssize_t* woff, Py_ssize_t nt,
                     Py_ssize_t C, const double* w, Py_ssize_t ldw, double* out, const double* bias,
                     int act) noexcept nogil
    void fc_bcast1x4_f(const float* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                       Py_ssize_t nt, Py_ssize_t C, const float* w, Py_ssize_t ldw, float* out,
                       Py_ssize_t ldo, const float* bias, int act) noexcept nogil
    void fc_bcast2x4_f(const float* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                       Py_ssize_t nt, Py_ssize_t C, const float* w, Py_ssize_t ldw, float* out,
                       Py_ssize_t ldo, const float* bias, int act) noexcept nogil
    void fc_bcast3x4_f(const float* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                       Py_ssize_t nt, Py_ssize_t C, const float* w, Py_ssize_t ldw, float* out,
                       Py_ssize_t ldo, const float* bias, int act) noexcept nogil
    void fc_bcast4x4_f(const float* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                       Py_ssize_t nt, Py_ssize_t C, const float* w, Py_ssize_t ldw, float* out,
                       Py_ssize_t ldo, const float* bias, int act) noexcept nogil
    void fc_bcast5x4_f(const float* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                       Py_ssize_t nt, Py_ssize_t C, const float* w, Py_ssize_t ldw, float* out,
                       Py_ssize_t ldo, const float* bias, int act) noexcept nogil
    void fc_bcast6x4_f(const float* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                       Py_ssize_t nt, Py_ssize_t C, const float* w, Py_ssize_t ldw, float* out,
                       Py_ssize_t ldo, const float* bias, int act) noexcept nogil
    void fc_bcast1x4_d(const double* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                       Py_ssize_t nt, Py_ssize_t C, const double* w, Py_ssize_t ldw, double* out,
                       Py_ssize_t ldo, const double* bias, int act) noexcept nogil
    void fc_bcast2x4_d(const double* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                       Py_ssize_t nt, Py_ssize_t C, const double* w, Py_ssize_t ldw, double* out,
                       Py_ssize_t ldo, const double* bias, int act) noexcept nogil
    void fc_bcast3x4_d(const double* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                       Py_ssize_t nt, Py_ssize_t C, const double* w, Py_ssize_t ldw, double* out,
                       Py_ssize_t ldo, const double* bias, int act) noexcept nogil
    void fc_bcast4x4_d(const double* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                       Py_ssize_t nt, Py_ssize_t C, const double* w, Py_ssize_t ldw, double* out,
                       Py_ssize_t ldo, const double* bias, int act) noexcept nogil
    void fc_bcast5x4_d(const double* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                       Py_ssize_t nt, Py_ssize_t C, const double* w, Py_ssize_t ldw, double* out,
                       Py_ssize_t ldo, const double* bias, int act) noexcept nogil
    void fc_bcast6x4_d(const double* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                       Py_ssize_t nt, Py_ssize_t C, const double* w, Py_ssize_t ldw, double* out,
                       Py_ssize_t ldo, const double* bias, int act) noexcept nogil
    void fc_grp1_f(const float* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                   Py_ssize_t nt, Py_ssize_t Cg, int NS, const int32_t* idx, const float* w, Py_ssize_t ldw,
                   float* out, Py_ssize_t ldo, const float* bias, int act) noexcept nogil
    void fc_grp8_f(const float* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                   Py_ssize_t nt, Py_ssize_t Cg, int NS, const int32_t* idx, const float* w, Py_ssize_t ldw,
                   float* out, Py_ssize_t ldo, const float* bias, int act) noexcept nogil
    void fc_grpw3_s1_6_f(const float* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                         Py_ssize_t nrow, Py_ssize_t Cg, const int32_t* idx, const float* w, Py_ssize_t ldw,
                         float* out, Py_ssize_t ldo, const float* bias, int act) noexcept nogil
    void fc_grpw3_s2_6_f(const float* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                         Py_ssize_t nrow, Py_ssize_t Cg, const int32_t* idx, const float* w, Py_ssize_t ldw,
                         float* out, Py_ssize_t ldo, const float* bias, int act) noexcept nogil
    void fc_grp1_d(const double* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                   Py_ssize_t nt, Py_ssize_t Cg, int NS, const int64_t* idx, const double* w, Py_ssize_t ldw,
                   double* out, Py_ssize_t ldo, const double* bias, int act) noexcept nogil
    void fc_grp8_d(const double* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                   Py_ssize_t nt, Py_ssize_t Cg, int NS, const int64_t* idx, const double* w, Py_ssize_t ldw,
                   double* out, Py_ssize_t ldo, const double* bias, int act) noexcept nogil
    void fc_grpw3_s1_6_d(const double* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                         Py_ssize_t nrow, Py_ssize_t Cg, const int64_t* idx, const double* w, Py_ssize_t ldw,
                         double* out, Py_ssize_t ldo, const double* bias, int act) noexcept nogil
    void fc_grpw3_s2_6_d(const double* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                         Py_ssize_t nrow, Py_ssize_t Cg, const int64_t* idx, const double* w, Py_ssize_t ldw,
                         double* out, Py_ssize_t ldo, const double* bias, int act) noexcept nogil
    void fc_finish_f(float* dst, Py_ssize_t ldd, const float* src, Py_ssize_t lds, Py_ssize_t rows,
                     Py_ssize_t n, const float* bias, int code) noexcept nogil
    void fc_finish_d(double* dst, Py_ssize_t ldd, const double* src, Py_ssize_t lds, Py_ssize_t rows,
                     Py_ssize_t n, const double* bias, int code) noexcept nogil
    int fc_has_avx512() noexcept nogil

cdef enum:
    SPAN_TILES = 0       # how _direct_task computes a span of a run (see there)
    SPAN_STRIP = 1
    SPAN_SINGLE = 2

cdef enum:
    MICRO_P = 8          # pixels per direct micro-tile (FC_P above)
    GRP_P = 6            # pixels per fc_grpw3 tile: measured faster than 4, 8, 10 or 12 here
    VECTOR_BYTES = 64    # bytes per micro-kernel vector

#: Pixels per direct micro-tile and bytes per vector, for the driver's buffer sizes.
MICRO_PIXELS = MICRO_P
VECTOR_SIZE = VECTOR_BYTES

# The wrappers below pass ``bias`` (the block's first channel of the bias, or NULL) and
# ``act`` (0, 1 ReLU, 2 ReLU6) through to the micro-kernels (see FC_START / FC_PUT).

cdef inline void _bcast8(const real* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                         Py_ssize_t nt, Py_ssize_t C, const real* w, Py_ssize_t ldw, real* out,
                         Py_ssize_t ldo, const real* bias, int act) noexcept nogil:
    if real is float:
        fc_bcast8_f(x, ps, xoff, woff, nt, C, w, ldw, out, ldo, bias, act)
    else:
        fc_bcast8_d(x, ps, xoff, woff, nt, C, w, ldw, out, ldo, bias, act)


cdef inline void _bcastx4(int P, const real* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                          Py_ssize_t nt, Py_ssize_t C, const real* w, Py_ssize_t ldw, real* out,
                          Py_ssize_t ldo, const real* bias, int act) noexcept nogil:
    """The 4-vector micro-kernel on P = 1..6 pixels."""
    if real is float:
            if P == 6:
                fc_bcast6x4_f(x, ps, xoff, woff, nt, C, w, ldw, out, ldo, bias, act)
            elif P == 5:
                fc_bcast5x4_f(x, ps, xoff, woff, nt, C, w, ldw, out, ldo, bias, act)
            elif P == 4:
                fc_bcast4x4_f(x, ps, xoff, woff, nt, C, w, ldw, out, ldo, bias, act)
            elif P == 3:
                fc_bcast3x4_f(x, ps, xoff, woff, nt, C, w, ldw, out, ldo, bias, act)
            elif P == 2:
                fc_bcast2x4_f(x, ps, xoff, woff, nt, C, w, ldw, out, ldo, bias, act)
            else:
                fc_bcast1x4_f(x, ps, xoff, woff, nt, C, w, ldw, out, ldo, bias, act)
    else:
            if P == 6:
                fc_bcast6x4_d(x, ps, xoff, woff, nt, C, w, ldw, out, ldo, bias, act)
            elif P == 5:
                fc_bcast5x4_d(x, ps, xoff, woff, nt, C, w, ldw, out, ldo, bias, act)
            elif P == 4:
                fc_bcast4x4_d(x, ps, xoff, woff, nt, C, w, ldw, out, ldo, bias, act)
            elif P == 3:
                fc_bcast3x4_d(x, ps, xoff, woff, nt, C, w, ldw, out, ldo, bias, act)
            elif P == 2:
                fc_bcast2x4_d(x, ps, xoff, woff, nt, C, w, ldw, out, ldo, bias, act)
            else:
                fc_bcast1x4_d(x, ps, xoff, woff, nt, C, w, ldw, out, ldo, bias, act)


cdef inline void _bcast1(const real* x, const Py_ssize_t* xoff, const Py_ssize_t* woff, Py_ssize_t nt,
                         Py_ssize_t C, const real* w, Py_ssize_t ldw, real* out, const real* bias, int act) noexcept nogil:
    if real is float:
        fc_bcast1_f(x, xoff, woff, nt, C, w, ldw, out, bias, act)
    else:
        fc_bcast1_d(x, xoff, woff, nt, C, w, ldw, out, bias, act)


cdef inline void _grp(int P, const real* x, Py_ssize_t ps, const Py_ssize_t* xoff, const Py_ssize_t* woff,
                      Py_ssize_t nt, Py_ssize_t Cg, int NS, const void* idx, const real* w, Py_ssize_t ldw,
                      real* out, Py_ssize_t ldo, const real* bias, int act) noexcept nogil:
    """The grouped (permuting) micro-kernel on P = 8 or 1 pixels; ``idx`` holds Cg index
    vectors of int32 (float) or int64 (double)."""
    if real is float:
        if P == 8:
            fc_grp8_f(x, ps, xoff, woff, nt, Cg, NS, <const int32_t*>idx, w, ldw, out, ldo, bias, act)
        else:
            fc_grp1_f(x, ps, xoff, woff, nt, Cg, NS, <const int32_t*>idx, w, ldw, out, ldo, bias, act)
    else:
        if P == 8:
            fc_grp8_d(x, ps, xoff, woff, nt, Cg, NS, <const int64_t*>idx, w, ldw, out, ldo, bias, act)
        else:
            fc_grp1_d(x, ps, xoff, woff, nt, Cg, NS, <const int64_t*>idx, w, ldw, out, ldo, bias, act)


cdef inline void _grpw3(Py_ssize_t S, const real* x, Py_ssize_t ps, const Py_ssize_t* xoff,
                        const Py_ssize_t* woff, Py_ssize_t nrow, Py_ssize_t Cg, const void* idx, const real* w,
                        Py_ssize_t ldw, real* out, Py_ssize_t ldo, const real* bias, int act) noexcept nogil:
    """The grouped micro-kernel sharing permutations along a row of 3 taps at stride S = 1
    or 2, on GRP_P pixels."""
    if real is float:
        if S == 1:
            fc_grpw3_s1_6_f(x, ps, xoff, woff, nrow, Cg, <const int32_t*>idx, w, ldw, out, ldo, bias, act)
        else:
            fc_grpw3_s2_6_f(x, ps, xoff, woff, nrow, Cg, <const int32_t*>idx, w, ldw, out, ldo, bias, act)
    else:
        if S == 1:
            fc_grpw3_s1_6_d(x, ps, xoff, woff, nrow, Cg, <const int64_t*>idx, w, ldw, out, ldo, bias, act)
        else:
            fc_grpw3_s2_6_d(x, ps, xoff, woff, nrow, Cg, <const int64_t*>idx, w, ldw, out, ldo, bias, act)


cdef inline const real* _at(const real* bias, Py_ssize_t f) noexcept nogil:
    """``bias + f``, or NULL without bias."""
    return bias + f if bias != NULL else NULL


#: Whether the CPU has AVX-512 (the grouped micro-kernel's permutations are one instruction).
HAS_AVX512 = bool(fc_has_avx512())


# ---------------------------------------------------------------- BLAS

cdef inline void _gemm(int m, int n, int k, const real* a, int lda, const real* b, int ldb,
                       real* c, int ldc) noexcept nogil:
    """Row-major ``c[:m, :n] = a[:m, :k] @ b[:k, :n]`` (row pitches lda, ldb, ldc) through BLAS:
    column-major BLAS computes ``c^T = b^T a^T``, which is the same memory, nothing copied."""
    cdef char no = b'N'
    cdef real one = 1, zero = 0
    cdef Py_ssize_t i
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        for i in range(m):
            memset(c + i * ldc, 0, n * sizeof(real))
        return
    if real is float:
        sgemm(&no, &no, &n, &m, &k, &one, <float*>b, &ldb, <float*>a, &lda, &zero, c, &ldc)
    else:
        dgemm(&no, &no, &n, &m, &k, &one, <double*>b, &ldb, <double*>a, &lda, &zero, c, &ldc)


# ---------------------------------------------------------------- epilogue

cdef double _SELU_ALPHA = 1.6732632423543772848170429916717
cdef double _SELU_SCALE = 1.0507009873554804934193349852946
cdef double _SQRT1_2 = 0.70710678118654752440


cdef inline double _softplus(double v) noexcept nogil:
    return (v if v > 0 else 0.0) + log1p(exp(-fabs(v)))


cdef inline double _sigmoid(double v) noexcept nogil:
    cdef double e
    if v >= 0:
        return 1.0 / (1.0 + exp(-v))
    e = exp(v)
    return e / (1.0 + e)


cdef inline double _clip(double v, double lo, double hi) noexcept nogil:
    return lo if v < lo else (hi if v > hi else v)


cdef double _act(double v, int code) noexcept nogil:
    """One Keras activation by code (the driver's ``ACT_CODES``), in double precision."""
    if code == 1:
        return 0.0 if v < 0 else v
    if code == 2:
        return _clip(v, 0.0, 6.0)
    if code == 3:
        return v if v >= 0 else 0.2 * v
    if code == 4:
        return v if v > 0 else expm1(v)
    if code == 5:
        return _SELU_SCALE * (v if v > 0 else _SELU_ALPHA * expm1(v))
    if code == 6:
        return (v if v > 0 else 0.0) + expm1(v if v < 0 else 0.0)
    if code == 7:
        return 0.5 * v * erfc(-v * _SQRT1_2)  # erfc: no cancellation for large negative v
    if code == 8:
        return _sigmoid(v)
    if code == 9:
        return _clip(v + 3.0, 0.0, 6.0) / 6.0
    if code == 10:
        return v * _sigmoid(v)
    if code == 11:
        return v * (_clip(v + 3.0, 0.0, 6.0) / 6.0)
    if code == 12:
        return tanh(v)
    if code == 13:
        return _clip(v, -1.0, 1.0)
    if code == 14:
        return v - tanh(v)
    if code == 15:
        return _softplus(v)
    if code == 16:
        return v / (1.0 + fabs(v))
    if code == 17:
        return exp(v)
    if code == 18:
        return v * tanh(_softplus(v))
    if code == 19:
        return -_softplus(-v)
    if code == 20:
        return (v + sqrt(v * v + 4.0)) / 2.0
    if code == 21:
        if v <= -1.0:
            return 0.0
        if v >= 1.0:
            return v
        return (v + 1.0) * (v + 1.0) / 4.0
    if code == 22:
        return v - 0.5 if v > 0.5 else (v + 0.5 if v < -0.5 else 0.0)
    if code == 23:
        return v if fabs(v) > 0.5 else 0.0
    return v


cdef inline void _finish(real* dst, Py_ssize_t ldd, const real* src, Py_ssize_t lds, Py_ssize_t rows,
                         Py_ssize_t n, const real* bias, int code) noexcept nogil:
    """``dst[r, :n] = act(src[r, :n] + bias[:n])`` for ``rows`` rows of pitches ``ldd``, ``lds``
    (``dst`` may be ``src``; ``bias`` may be NULL).  No activation, ReLU and ReLU6 run in the
    data's precision in one vectorised pass (``fc_finish``); the rest in double."""
    cdef Py_ssize_t r, i
    cdef real* d
    if dst == src and bias == NULL and code == 0:
        return
    if real is float:
        fc_finish_f(dst, ldd, src, lds, rows, n, bias, code if code <= 2 else 0)
    else:
        fc_finish_d(dst, ldd, src, lds, rows, n, bias, code if code <= 2 else 0)
    if code > 2:
        for r in range(rows):
            d = dst + r * ldd
            for i in range(n):
                d[i] = <real>_act(d[i], code)


cdef inline void _finish_row(real* dst, const real* src, Py_ssize_t n, const real* bias, int code) noexcept nogil:
    """One row of :func:`_finish`."""
    _finish(dst, n, src, n, 1, n, bias, code)


# ---------------------------------------------------------------- jobs

cdef struct Job:
    Py_ssize_t o[3]
    Py_ssize_t p[3]
    Py_ssize_t s[3]
    Py_ssize_t d[3]
    Py_ssize_t k[3]
    Py_ssize_t y0[3]
    Py_ssize_t ys[3]
    Py_ssize_t woff
    Py_ssize_t mode
    Py_ssize_t inplace

JOB_FIELDS = 24
MODE_PACK = 0
MODE_ROWS = 1
MODE_ZERO = 2


cdef inline Job _job(const Py_ssize_t[:, ::1] jobs, Py_ssize_t j) noexcept nogil:
    cdef Job J
    cdef int a
    for a in range(3):
        J.o[a] = jobs[j, a]
        J.p[a] = jobs[j, 3 + a]
        J.s[a] = jobs[j, 6 + a]
        J.d[a] = jobs[j, 9 + a]
        J.k[a] = jobs[j, 12 + a]
        J.y0[a] = jobs[j, 15 + a]
        J.ys[a] = jobs[j, 18 + a]
    J.woff = jobs[j, 21]
    J.mode = jobs[j, 22]
    J.inplace = jobs[j, 23]
    return J


cdef inline Py_ssize_t _y_pixel(const Job* J, Py_ssize_t m, Py_ssize_t YD, Py_ssize_t YH,
                                Py_ssize_t YW) noexcept nogil:
    """Flat pixel index in ``y`` of the job's output pixel ``m``."""
    cdef Py_ssize_t ow = m % J.o[2], t = m // J.o[2]
    cdef Py_ssize_t oh = t % J.o[1]
    t = t // J.o[1]
    cdef Py_ssize_t od = t % J.o[0], n = t // J.o[0]
    return ((n * YD + J.y0[0] + od * J.ys[0]) * YH + J.y0[1] + oh * J.ys[1]) * YW + J.y0[2] + ow * J.ys[2]


cdef void _store(const real* src, Py_ssize_t lds, real* y, Py_ssize_t F, const Job* J, Py_ssize_t m0,
                 Py_ssize_t mt, Py_ssize_t f0, Py_ssize_t f1, Py_ssize_t YD, Py_ssize_t YH, Py_ssize_t YW,
                 const real* bias, int code) noexcept nogil:
    """Write a finished (mt, f1 - f0) block for job pixels m0.. to their places in ``y``,
    applying the epilogue on the way."""
    cdef Py_ssize_t r
    cdef const real* b = bias + f0 if bias != NULL else NULL
    for r in range(mt):
        _finish_row(y + _y_pixel(J, m0 + r, YD, YH, YW) * F + f0, src + r * lds, f1 - f0, b, code)


# ---------------------------------------------------------------- GEMM engine

cdef void _pack(const real* x, Py_ssize_t D, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, const Job* J,
                Py_ssize_t m0, Py_ssize_t mt, Py_ssize_t g0, Py_ssize_t ng, Py_ssize_t Cg,
                real* buf) noexcept nogil:
    """im2col of job pixels m0 .. m0 + mt: row ``r`` of ``buf`` holds, for groups g0 .. g0 + ng,
    the pixel's receptive field as (group, KD, KH, KW, Cg) (zeros where it is padding), so that
    group ``g``'s patch matrix is ``buf[:, g * K * Cg:]`` with row pitch ``ng * K * Cg``."""
    cdef Py_ssize_t KD = J.k[0], KH = J.k[1], KW = J.k[2]
    cdef Py_ssize_t K = KD * KH * KW, gsize = K * Cg, rowlen = ng * gsize
    cdef Py_ssize_t r, m, t, n, od, oh, ow, kd, kh, kw, i_d, i_h, i_w, w0, g, tap
    cdef const real* src
    cdef real* dst
    cdef bint whole = ng * Cg == C  # every channel of the pixel is packed, in order
    for r in range(mt):
        m = m0 + r
        ow = m % J.o[2]
        t = m // J.o[2]
        oh = t % J.o[1]
        t = t // J.o[1]
        od = t % J.o[0]
        n = t // J.o[0]
        dst = buf + r * rowlen
        w0 = ow * J.s[2] - J.p[2]
        tap = 0
        for kd in range(KD):
            i_d = od * J.s[0] - J.p[0] + kd * J.d[0]
            for kh in range(KH):
                i_h = oh * J.s[1] - J.p[1] + kh * J.d[1]
                if i_d < 0 or i_d >= D or i_h < 0 or i_h >= H:
                    for g in range(ng):
                        memset(dst + g * gsize + tap * Cg, 0, KW * Cg * sizeof(real))
                    tap = tap + KW
                    continue
                src = x + ((n * D + i_d) * H + i_h) * W * C
                if ng == 1 and whole and J.d[2] == 1 and w0 >= 0 and w0 + KW <= W:
                    # the kernel row lies inside the input row: one contiguous copy
                    memcpy(dst + tap * C, src + w0 * C, KW * C * sizeof(real))
                    tap = tap + KW
                    continue
                for kw in range(KW):
                    i_w = w0 + kw * J.d[2]
                    if i_w < 0 or i_w >= W:
                        for g in range(ng):
                            memset(dst + g * gsize + tap * Cg, 0, Cg * sizeof(real))
                    elif whole and ng == 1:
                        memcpy(dst + tap * C, src + i_w * C, C * sizeof(real))
                    else:
                        for g in range(ng):
                            memcpy(dst + g * gsize + tap * Cg, src + i_w * C + (g0 + g) * Cg, Cg * sizeof(real))
                    tap = tap + 1


def gemm_conv(const real[:, :, :, :, ::1] x, const real[::1] wbuf, real[:, :, :, :, ::1] y,
              const Py_ssize_t[:, ::1] jobs, const Py_ssize_t[:, ::1] tasks, real[:, ::1] scratch,
              const real[::1] bias, bint has_bias, int code, Py_ssize_t groups, int num_threads):
    """Run GEMM tasks: per task, pack its patches (or read ``x``'s rows), one BLAS GEMM per
    group on the packed tile, then the epilogue while the output block is in cache.

    ``scratch`` has a row per thread, long enough for the largest task's packed patches
    plus, for jobs not written in place, its (pixels, f1 - f0) output block.  BLAS must be
    single-threaded (the driver arranges it): the threads here are OpenMP's.
    """
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], H = x.shape[2], W = x.shape[3], C = x.shape[4]
    cdef Py_ssize_t YD = y.shape[1], YH = y.shape[2], YW = y.shape[3], F = y.shape[4]
    cdef Py_ssize_t Cg = C // groups, Fg = F // groups
    cdef Py_ssize_t i, j, m0, mt, f0, f1, g0, g1, g, K, rowlen, lda, ldc
    cdef Job J
    cdef const real* xp = &x[0, 0, 0, 0, 0]
    cdef const real* wp = &wbuf[0]
    cdef real* yp = &y[0, 0, 0, 0, 0]
    cdef const real* bp = &bias[0] if has_bias else NULL
    cdef const real* a
    cdef real* buf
    cdef real* out
    cdef real* s0 = &scratch[0, 0]
    cdef Py_ssize_t sstride = scratch.shape[1]
    if N == 0 or tasks.shape[0] == 0:
        return
    with nogil:
        for i in prange(tasks.shape[0], schedule="dynamic", num_threads=num_threads):
            J = _job(jobs, tasks[i, 0])
            m0 = tasks[i, 1]
            mt = tasks[i, 2]
            f0 = tasks[i, 3]
            f1 = tasks[i, 4]
            buf = s0 + threadid() * sstride
            K = J.k[0] * J.k[1] * J.k[2]
            g0 = f0 // Fg
            g1 = (f1 + Fg - 1) // Fg
            if J.inplace:
                out = yp + m0 * F + f0
                ldc = F
            else:
                out = buf
                buf = buf + mt * (f1 - f0)
                ldc = f1 - f0
            if J.mode == 2:
                for j in range(mt):
                    memset(out + j * ldc, 0, (f1 - f0) * sizeof(real))
            else:
                if J.mode == 1:
                    a = xp + m0 * C + g0 * Cg
                    lda = C
                    rowlen = Cg  # the next group's columns start Cg further along
                else:
                    _pack(xp, D, H, W, C, &J, m0, mt, g0, g1 - g0, Cg, buf)
                    a = buf
                    lda = (g1 - g0) * K * Cg
                    rowlen = K * Cg
                if groups == 1:
                    _gemm(<int>mt, <int>(f1 - f0), <int>(K * C), a, <int>lda, wp + J.woff + f0, <int>F,
                          out, <int>ldc)
                else:
                    for g in range(g0, g1):
                        _gemm(<int>mt, <int>Fg, <int>(K * Cg), a + (g - g0) * rowlen, <int>lda,
                              wp + J.woff + g * Fg, <int>F, out + g * Fg - f0, <int>ldc)
            if J.inplace:
                _finish(out, ldc, out, ldc, mt, f1 - f0, bp + f0 if bp != NULL else NULL, code)
            else:
                _store(out, ldc, yp, F, &J, m0, mt, f0, f1, YD, YH, YW, bp, code)


# ---------------------------------------------------------------- direct engine

# Column blocks: the direct engine runs the output channels by blocks of one 64-byte vector
# (VL channels); the driver describes block b by row b of ``blk``:
#   0  the channel of the pixel where the block's inputs start (its group's first input
#      channel; for a permuting block, where its NS vectors of inputs are loaded)
#   1  0: the block's channels all belong to one group (every convolution with groups = 1):
#      each input value is broadcast against a vector of weights;
#      1: the grouped micro-kernel permutes the input vectors (index vectors ``idx[b, c]``);
#      blocks spanning several groups need it, and then every block uses it (``tile_outer``)
#   2  1 if blocks b .. b + 3 form one 4-vector block of one group (the 6 x 4 micro-kernel)

cdef inline void _single(const real* x, Py_ssize_t o, Py_ssize_t sw, Py_ssize_t pw, Py_ssize_t dw,
                         Py_ssize_t W, Py_ssize_t C, Py_ssize_t Cg, Py_ssize_t KW, Py_ssize_t nrow,
                         const Py_ssize_t* rowoff, const Py_ssize_t* rowtap, Py_ssize_t* xoff1,
                         Py_ssize_t* woff1, const real* w, Py_ssize_t Fp, Py_ssize_t width, real* out,
                         Py_ssize_t VL, Py_ssize_t kind, int NS, const void* idx, const real* bias,
                         int act) noexcept nogil:
    """One output pixel (near a border: its own list of taps inside the input), ``width``
    output channels from ``w``'s first column into ``out`` (``x`` points at the block's
    first input channel; ``bias``, ``act``: see the micro-kernels)."""
    cdef Py_ssize_t r, kw, i_w, v, nt1 = 0
    for r in range(nrow):
        for kw in range(KW):
            i_w = o * sw - pw + kw * dw
            if i_w >= 0 and i_w < W:
                xoff1[nt1] = rowoff[r] + i_w * C
                woff1[nt1] = (rowtap[r] + kw) * Cg * Fp
                nt1 = nt1 + 1
    if kind == 1:
        _grp(1, x, 0, xoff1, woff1, nt1, Cg, NS, idx, w, Fp, out, 0, bias, act)
        return
    for v in range(width // VL):
        _bcast1(x, xoff1, woff1, nt1, Cg, w + v * VL, Fp, out + v * VL, _at(bias, v * VL), act)


cdef inline bint _has_nan(const real* v, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if v[i] != v[i]:
            return True
    return False


cdef void _pack_strip(const real* x, const Py_ssize_t* rowoff, Py_ssize_t nrow, Py_ssize_t p0, Py_ssize_t p1,
                      Py_ssize_t sw, Py_ssize_t pw, Py_ssize_t dw, Py_ssize_t KW, Py_ssize_t W, Py_ssize_t C,
                      real* pbuf, Py_ssize_t* pxoff) noexcept nogil:
    """Copy the input columns that output pixels [p0, p1) read, of each of the ``nrow`` rows at
    ``x + rowoff[r]``, into ``pbuf`` (row after row), zeros where a column is outside the
    input; ``pxoff`` gets the taps' offsets in it, in the order of ``_direct_task``'s ``xoff``."""
    cdef Py_ssize_t plen = (p1 - p0 - 1) * sw + (KW - 1) * dw + 1   # pixels per copied row
    cdef Py_ssize_t c0 = p0 * sw - pw                             # the input column of pixel 0
    cdef Py_ssize_t a = -c0 if c0 < 0 else 0                      # copied pixels [a, bnd) are inside
    cdef Py_ssize_t bnd = W - c0 if W - c0 < plen else plen
    cdef Py_ssize_t r, kw, t = 0
    cdef real* pr
    for r in range(nrow):
        pr = pbuf + r * plen * C
        if bnd <= a:
            memset(pr, 0, plen * C * sizeof(real))
        else:
            if a > 0:
                memset(pr, 0, a * C * sizeof(real))
            memcpy(pr + a * C, x + rowoff[r] + (c0 + a) * C, (bnd - a) * C * sizeof(real))
            if bnd < plen:
                memset(pr + bnd * C, 0, (plen - bnd) * C * sizeof(real))
        for kw in range(KW):
            pxoff[t] = r * plen * C + kw * dw * C
            t = t + 1


cdef void _span(const real* x, const real* xp, Py_ssize_t xo0, const Py_ssize_t* xoff, Py_ssize_t p0,
                Py_ssize_t p1, Py_ssize_t ow, Py_ssize_t sw, Py_ssize_t pw, Py_ssize_t dw, Py_ssize_t W,
                Py_ssize_t C, Py_ssize_t Cg, Py_ssize_t KW, Py_ssize_t nrow, const Py_ssize_t* rowoff,
                const Py_ssize_t* rowtap, const Py_ssize_t* woff, Py_ssize_t nt, Py_ssize_t* xoff1,
                Py_ssize_t* woff1, const real* w, Py_ssize_t Fp, const Py_ssize_t* blk, int NS,
                const unsigned char* idx, bint tile_outer, bint slide, real* ob, Py_ssize_t ldo,
                const real* kb, int act, Py_ssize_t VL, bint single) noexcept nogil:
    """Output pixels [p0, p1) of the run that starts at column ``ow`` (stored from ``ob``,
    ``ldo`` apart), every column block.  Pixel o's window starts at ``xp + (o * sw - xo0) * C``
    and its ``nt`` taps lie ``xoff`` further on, all inside xp's rows (``x`` itself, or a
    zero-padded copy).  Blocks of pixels take the micro-tiles (4 vectors: 6 pixels, the last
    block shorter; 1 vector: 8 pixels, a block that would overrun p1 moved back to end there,
    recomputing a few pixels identically; grouped layers: tiles of GRP_P or MICRO_P pixels
    through every block, moved back alike).  With ``single`` (pixels whose windows cross a
    border of ``x``), and for 1-vector and grouped blocks on spans narrower than their tile,
    the pixels go one at a time over their own taps inside ``x`` (``_single``)."""
    cdef Py_ssize_t o, b, fc, P, q, width, kind
    cdef const real* xb
    cdef const void* ib
    if tile_outer:
        # Grouped layers (every block permuting): each pixel tile runs through every block
        # before the next tile, so that the tile's inputs (its pixels' whole channel rows)
        # come from L1 for every block; block by block, a vector block would sweep the row's
        # pixels at a stride of C channels, through a few L1 sets only, and miss.
        P = GRP_P if slide else MICRO_P
        if p1 - p0 >= P and not single:
            o = p0
            while o < p1:
                if o + P > p1:
                    o = p1 - P   # move the tile back to end at p1
                for b in range(Fp // VL):
                    xb = xp + blk[3 * b] + (o * sw - xo0) * C
                    if slide:
                        _grpw3(sw, xb, C, xoff, woff, nrow, Cg, idx + b * Cg * 64, w + b * VL, Fp,
                               ob + (o - ow) * ldo + b * VL, ldo, _at(kb, b * VL), act)
                    else:
                        _grp(8, xb, sw * C, xoff, woff, nt, Cg, NS, idx + b * Cg * 64, w + b * VL, Fp,
                             ob + (o - ow) * ldo + b * VL, ldo, _at(kb, b * VL), act)
                o = o + P
        else:
            for o in range(p0, p1):
                for b in range(Fp // VL):
                    _single(x + blk[3 * b], o, sw, pw, dw, W, C, Cg, KW, nrow, rowoff, rowtap, xoff1, woff1,
                            w + b * VL, Fp, VL, ob + (o - ow) * ldo + b * VL, VL, 1, NS, idx + b * Cg * 64,
                            _at(kb, b * VL), act)
        return
    fc = 0
    while fc < Fp:
        b = fc // VL
        xb = xp + blk[3 * b]
        kind = blk[3 * b + 1]
        ib = idx + b * Cg * 64
        if blk[3 * b + 2] and not single:
            width = 4 * VL
            o = p0
            while o < p1:
                q = p1 - o if p1 - o < 6 else 6
                _bcastx4(<int>q, xb + (o * sw - xo0) * C, sw * C, xoff, woff, nt, Cg, w + fc, Fp,
                         ob + (o - ow) * ldo + fc, ldo, _at(kb, fc), act)
                o = o + q
        else:
            width = 4 * VL if blk[3 * b + 2] else VL
            if p1 - p0 >= MICRO_P and not single:
                o = p0
                while o < p1:
                    if o + MICRO_P > p1:
                        o = p1 - MICRO_P   # move the block back to end at p1
                    if kind == 1:
                        _grp(8, xb + (o * sw - xo0) * C, sw * C, xoff, woff, nt, Cg, NS, ib, w + fc, Fp,
                             ob + (o - ow) * ldo + fc, ldo, _at(kb, fc), act)
                    else:
                        _bcast8(xb + (o * sw - xo0) * C, sw * C, xoff, woff, nt, Cg, w + fc, Fp,
                                ob + (o - ow) * ldo + fc, ldo, _at(kb, fc), act)
                    o = o + MICRO_P
            else:
                for o in range(p0, p1):
                    _single(x + blk[3 * b], o, sw, pw, dw, W, C, Cg, KW, nrow, rowoff, rowtap, xoff1, woff1,
                            w + fc, Fp, width, ob + (o - ow) * ldo + fc, VL, kind, NS, ib, _at(kb, fc), act)
        fc = fc + width


cdef void _direct_task(const real* x, Py_ssize_t D, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                       Py_ssize_t Cg, const Job* J, const real* w, Py_ssize_t Fp, real* y, Py_ssize_t F,
                       Py_ssize_t YD, Py_ssize_t YH, Py_ssize_t YW, Py_ssize_t m0, Py_ssize_t mt, real* obuf,
                       Py_ssize_t run_max, Py_ssize_t* ibuf, const Py_ssize_t* blk, int NS,
                       const unsigned char* idx, bint tile_outer, const real* bias, int code,
                       Py_ssize_t VL, real* pbuf) noexcept nogil:
    """Output pixels m0 .. m0 + mt of a job, direct, by runs of pixels along an output row.

    The pixels of a run whose windows lie inside the input row are computed by ``_span``
    (micro-tiles over all taps at once).  Pixels whose window crosses the left or right
    border are computed by ``_span`` too, in a strip (those pixels, and at least one tile) at
    that end of the run,
    from a zero-padded copy of the strip's input columns in ``pbuf`` (per thread): before,
    they went one at a time (``_single``), 2.7x slower per pixel than the 6 x 4 tile and 12%
    of a 28-pixel-wide layer's time.  Without ``pbuf`` (grouped and transposed layers), they
    still do.  A padded tap adds 0 * w in a strip, NaN for an inf weight, where Keras (which
    skips padded taps) gives +-inf: a border pixel whose output holds a NaN is computed again
    one at a time, so this engine's results are Keras's either way (the cython depthwise
    kernel and the im2col GEMM path, like the reference backend, add 0 * w for padded taps).  The run's outputs go to ``y``
    (in place) when it has no padded channels, else they gather in ``obuf`` (run_max x Fp,
    in L1/L2); the epilogue runs on them while they are in cache."""
    cdef Py_ssize_t KD = J.k[0], KH = J.k[1], KW = J.k[2], K = KD * KH * KW
    cdef Py_ssize_t* xoff = ibuf
    cdef Py_ssize_t* woff = ibuf + K
    cdef Py_ssize_t* xoff1 = ibuf + 2 * K
    cdef Py_ssize_t* woff1 = ibuf + 3 * K
    cdef Py_ssize_t* rowoff = ibuf + 4 * K
    cdef Py_ssize_t* rowtap = ibuf + 5 * K
    cdef Py_ssize_t m = m0, end = m0 + mt, run, t, n, od, oh, ow, kd, kh, kw, i_d, i_h
    cdef Py_ssize_t* pxoff = ibuf + 6 * K
    cdef Py_ssize_t nrow, nt, r, fc, e, sw = J.s[2], pw = J.p[2], dw = J.d[2], ypix
    cdef Py_ssize_t ow_lo, ow_hi, A, B, i_lo, s1, s2, pe, o, k, ns, xs0
    cdef Py_ssize_t sp0[3]
    cdef Py_ssize_t sp1[3]
    cdef int spk[3]
    cdef const real* xs
    cdef const Py_ssize_t* offs
    # grouped tiles share each permuted input column between the 3 taps of a kernel row
    cdef bint slide = tile_outer and KW == 3 and (sw == 1 or sw == 2) and dw == 1 and NS == 1
    # without padded channels the micro-kernels store straight into y, the run's pixels ldo
    # apart (consecutive rows of y for a forward convolution, every ys[2]-th for a phase of a
    # transposed one): their stores then overlap the arithmetic; else into obuf, ldo = Fp apart
    cdef bint into_y = F == Fp
    cdef Py_ssize_t ldo = F * J.ys[2] if into_y else Fp
    # writing into y, the micro-kernels also add the bias and apply ReLU / ReLU6 (kb, act);
    # other activations still get a pass over the run while it is in cache
    cdef const real* kb = bias if into_y else NULL
    cdef int act = code if into_y and code <= 2 else 0
    cdef real* ob
    # the width of a border strip: one tile of the widest-tiled block
    pe = 6
    if tile_outer:
        pe = GRP_P if slide else MICRO_P
    fc = 0
    while fc < Fp:
        if not blk[3 * (fc // VL) + 2]:
            pe = MICRO_P
            break
        fc = fc + 4 * VL
    # output columns whose whole window row is inside the input: [ow_lo, ow_hi)
    ow_lo = 0 if pw <= 0 else (pw + sw - 1) // sw
    if W - 1 + pw - (KW - 1) * dw < 0:
        ow_hi = 0
    else:
        ow_hi = (W - 1 + pw - (KW - 1) * dw) // sw + 1
    if ow_hi > J.o[2]:
        ow_hi = J.o[2]
    while m < end:
        ow = m % J.o[2]
        t = m // J.o[2]
        oh = t % J.o[1]
        t = t // J.o[1]
        od = t % J.o[0]
        n = t // J.o[0]
        # runs end at the row's multiples of run_max (fixed columns, whatever the task: the
        # driver puts task boundaries there), so a pixel's tiling never depends on the batch
        run = run_max - ow % run_max
        if run > J.o[2] - ow:
            run = J.o[2] - ow
        if run > end - m:
            run = end - m
        nrow = 0
        for kd in range(KD):
            i_d = od * J.s[0] - J.p[0] + kd * J.d[0]
            if i_d < 0 or i_d >= D:
                continue
            for kh in range(KH):
                i_h = oh * J.s[1] - J.p[1] + kh * J.d[1]
                if i_h < 0 or i_h >= H:
                    continue
                rowoff[nrow] = ((n * D + i_d) * H + i_h) * W * C
                rowtap[nrow] = (kd * KH + kh) * KW
                nrow = nrow + 1
        A = ow
        B = ow + run
        i_lo = ow_lo if ow_lo > A else A      # the inside pixels of this run: [i_lo, e)
        e = ow_hi if ow_hi < B else B
        nt = 0
        for r in range(nrow):
            for kw in range(KW):
                xoff[nt] = rowoff[r] + kw * dw * C
                woff[nt] = (rowtap[r] + kw) * Cg * Fp
                nt = nt + 1
        ob = y + _y_pixel(J, m, YD, YH, YW) * F if into_y else obuf
        # The run in up to three spans [sp0, sp1): computed from x in place (SPAN_TILES), from
        # a zero-padded copy of the span's input columns in pbuf (SPAN_STRIP), or one pixel at
        # a time over its real taps (SPAN_SINGLE).
        if i_lo == A and e == B:                  # no pixel's window crosses a border
            ns = 1
            sp0[0], sp1[0], spk[0] = A, B, SPAN_TILES
        elif pbuf == NULL:
            # grouped layers: border pixels one at a time (strips measured slower there: their
            # permuting tiles cost more per pixel, a strip adds about one tile and the copy)
            if i_lo > B:
                i_lo = B
            s1 = e if e > i_lo else i_lo
            ns = 3
            sp0[0], sp1[0], spk[0] = A, i_lo, SPAN_SINGLE
            sp0[1], sp1[1], spk[1] = i_lo, s1, SPAN_TILES
            sp0[2], sp1[2], spk[2] = s1, B, SPAN_SINGLE
        else:
            # pixels whose window crosses the left or right border go in a strip at that end of
            # the run (those pixels, and at least a tile's width pe), so that they take the
            # micro-tiles too; when the strips meet, the whole run is one strip
            s1 = A
            s2 = B
            if i_lo > A:
                s1 = A + pe if A + pe > i_lo else i_lo
            if e < B:
                s2 = B - pe if B - pe < e else e
            if s2 <= s1:
                s1 = s2 = B
            ns = 3
            sp0[0], sp1[0], spk[0] = A, s1, SPAN_STRIP
            sp0[1], sp1[1], spk[1] = s1, s2, SPAN_TILES
            sp0[2], sp1[2], spk[2] = s2, B, SPAN_STRIP
        for k in range(ns):
            if sp1[k] <= sp0[k]:
                continue
            if spk[k] == SPAN_STRIP:
                _pack_strip(x, rowoff, nrow, sp0[k], sp1[k], sw, pw, dw, KW, W, C, pbuf, pxoff)
                xs, xs0, offs = pbuf, sp0[k] * sw, pxoff
            else:
                xs, xs0, offs = x, pw, xoff
            _span(x, xs, xs0, offs, sp0[k], sp1[k], ow, sw, pw, dw, W, C, Cg, KW, nrow, rowoff, rowtap, woff,
                  nt, xoff1, woff1, w, Fp, blk, NS, idx, tile_outer, slide, ob, ldo, kb, act, VL,
                  spk[k] == SPAN_SINGLE)
        if spk[0] == SPAN_STRIP:
            # A strip adds 0 * w for a padded tap, NaN for an inf weight, where Keras (TensorFlow)
            # skips padded taps and gives +-inf: a border pixel whose output holds a NaN is
            # computed again over its real taps (only border pixels are checked).
            for o in range(A, B):
                if (o < i_lo or o >= e) and _has_nan(ob + (o - ow) * ldo, F):
                    _span(x, x, pw, xoff, o, o + 1, ow, sw, pw, dw, W, C, Cg, KW, nrow, rowoff, rowtap, woff, nt,
                          xoff1, woff1, w, Fp, blk, NS, idx, tile_outer, slide, ob, ldo, kb, act, VL, True)
        if into_y:
            if code > 2:
                _finish(ob, ldo, ob, ldo, run, F, NULL, code)
        elif J.inplace:
            _finish(y + m * F, F, obuf, Fp, run, F, bias, code)
        else:
            for r in range(run):
                ypix = _y_pixel(J, m + r, YD, YH, YW)
                _finish_row(y + ypix * F, obuf + r * Fp, F, bias, code)
        m = m + run


def direct_conv(const real[:, :, :, :, ::1] x, const real[:, ::1] wpad, real[:, :, :, :, ::1] y,
                const Py_ssize_t[:, ::1] jobs, const Py_ssize_t[:, ::1] tasks, real[:, ::1] scratch,
                Py_ssize_t run_max, Py_ssize_t[:, ::1] iscratch, const real[::1] bias, bint has_bias, int code,
                int num_threads, Py_ssize_t Cg, const Py_ssize_t[:, ::1] blk, const unsigned char[::1] idx, int NS,
                bint tile_outer, real[:, ::1] pscratch):
    """Run direct tasks: ``wpad`` is the jobs' weight matrices, each (K * Cg, Fp)
    with the output channels zero-padded to ``Fp``, a whole number of 64-byte vectors;
    ``blk`` (Fp / VL, 3) describes the column blocks (see above), ``idx`` (bytes of an
    int32 (float) or int64 (double) array (Fp / VL, Cg, VL)) the permuting blocks' index
    vectors into their ``NS`` input vectors; ``scratch`` rows hold a run of outputs per thread
    (``run_max`` pixels, at least, of Fp channels); runs start at the multiples of ``run_max``
    along an output row, and every task starts and ends at such a run boundary (or a row's
    end); ``iscratch`` rows hold 7 * K tap offsets; ``pscratch`` rows (one per thread, or
    none: shape (threads, 0)) the zero-padded input columns of a border strip (see
    ``_direct_task``)."""
    cdef Py_ssize_t D = x.shape[1], H = x.shape[2], W = x.shape[3], C = x.shape[4]
    cdef Py_ssize_t YD = y.shape[1], YH = y.shape[2], YW = y.shape[3], F = y.shape[4]
    cdef Py_ssize_t Fp = wpad.shape[1], VL = VECTOR_BYTES // sizeof(real), i, tid
    cdef Job J
    cdef const real* bp = &bias[0] if has_bias else NULL
    cdef const real* wp = &wpad[0, 0]
    if x.shape[0] == 0 or tasks.shape[0] == 0:
        return
    with nogil:
        for i in prange(tasks.shape[0], schedule="dynamic", num_threads=num_threads):
            tid = threadid()
            J = _job(jobs, tasks[i, 0])
            if J.mode == 2:
                _direct_zero(&y[0, 0, 0, 0, 0], F, &J, tasks[i, 1], tasks[i, 2], YD, YH, YW, &scratch[tid, 0], bp, code)
                continue
            _direct_task(&x[0, 0, 0, 0, 0], D, H, W, C, Cg, &J, wp + J.woff, Fp, &y[0, 0, 0, 0, 0], F, YD, YH, YW,
                         tasks[i, 1], tasks[i, 2], &scratch[tid, 0], run_max, &iscratch[tid, 0], &blk[0, 0], NS,
                         &idx[0], tile_outer, bp, code, VL, &pscratch[tid, 0] if pscratch.shape[1] else NULL)


cdef void _direct_zero(real* y, Py_ssize_t F, const Job* J, Py_ssize_t m0, Py_ssize_t mt,
                       Py_ssize_t YD, Py_ssize_t YH, Py_ssize_t YW, real* buf, const real* bias,
                       int code) noexcept nogil:
    """Outputs no tap reaches: bias and activation of zero."""
    memset(buf, 0, F * sizeof(real))
    cdef Py_ssize_t r
    for r in range(mt):
        _finish_row(y + _y_pixel(J, m0 + r, YD, YH, YW) * F, buf, F, bias, code)
