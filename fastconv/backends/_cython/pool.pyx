# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Pooling kernels of the Cython backend: max, average and global pooling over channels-last arrays.

All arrays are the kernel contract's (N, D, H, W, C), C-contiguous.  The loops are
C micro-kernels with GCC vector types: blocks of G vectors of channels (G = 8 with
AVX-512, 4 with AVX2 or SSE2) are reduced in registers, compiled three times
(AVX-512, AVX2, SSE2 baseline, each with its own vector width) and picked once at
import (:func:`isa`; :func:`set_isa` forces a lower level, for tests).

Window pooling (``max_pool``, ``avg_pool``) is separable: each output row's
windows first reduce their input rows (the real ones, along D and H) column by
column (the *vertical* pass), then each output pixel reduces the real columns of
its window (the *horizontal* pass).  Overlapping windows (pool wider than the
stride, e.g. 3x3 stride 1) share the vertical pass's column results, so a 3x3
window costs 3 + 3 reads instead of 9; windows that do not overlap reduce their
columns on the fly (no buffer), in the same order, with the same results.  The
average multiplies the sum by ``1 / count`` of the window's real elements.  OpenMP
splits output rows between threads.

Global pooling reduces fixed chunks of each image's pixels (about 32 KiB, set by
the shape alone) in parallel into partial results, then combines each image's
partials in chunk order, so results are the same for any thread count.

The maximum propagates NaN: a NaN anywhere in a window (or an image) gives NaN.
"""

from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc


ctypedef fused real:
    float
    double


include "_isa.pxi"


cdef extern from *:
    """
    #include <stddef.h>

    /* the ISA macros (FC_X86, FC_T512, ...) and fc_vec_bytes are in _isa.pxi */
    #if FC_X86
    #  include <immintrin.h>
    #endif

    /* The reductions.  MAX: the maximum, NaN wherever a NaN is among the values (the running
       maximum keeps the larger value, or the old one when either is NaN; a mask records whether a
       NaN came in and the result is NaN there).  SUM: the sum, added in the order given. */
    enum { FC_MAX = 0, FC_SUM = 1 };

    /* vector maximum with x86 semantics max(v, a) = v > a ? v : a (a when either is NaN) */
    #if FC_X86
    #  define FC_VMAX_f2(v, a) ((fc_v_f2)_mm512_max_ps((__m512)(v), (__m512)(a)))
    #  define FC_VMAX_d2(v, a) ((fc_v_d2)_mm512_max_pd((__m512d)(v), (__m512d)(a)))
    #  define FC_VMAX_f1(v, a) ((fc_v_f1)_mm256_max_ps((__m256)(v), (__m256)(a)))
    #  define FC_VMAX_d1(v, a) ((fc_v_d1)_mm256_max_pd((__m256d)(v), (__m256d)(a)))
    #  define FC_VMAX_f0(v, a) ((fc_v_f0)_mm_max_ps((__m128)(v), (__m128)(a)))
    #  define FC_VMAX_d0(v, a) ((fc_v_d0)_mm_max_pd((__m128d)(v), (__m128d)(a)))
    #else
    #  define FC_VMAX_f0(v, a) FC_BLEND(fc_v_f0, fc_m_f0, a, v, (v) > (a))
    #  define FC_VMAX_d0(v, a) FC_BLEND(fc_v_d0, fc_m_d0, a, v, (v) > (a))
    #endif

    /* One family: element type T (I the integer of its size), vector bytes VB, G vectors of
       channels per register block, target TGT.
       fc_pcol:  col[i * C + c] = reduce over r < nr of x[roff[r] + (iwa + i) * C + c], iwa <= iw < iwb
                 (the vertical pass: one column of the windows of an output row).
       fc_phor:  y[ow * C + c] = reduce over the window's columns k of col[(a + k) * C + c] for
                 ow < OW, a = a0 + ow * sw, the columns 0 <= a + k < ncols, k < kw; a sum is
                 multiplied by 1 / (columns * nr) (the real elements of the window).
       fc_pwin:  the same from x directly (windows that do not overlap along W: each column is
                 reduced once anyway): the column reductions as fc_pcol computes them, then
                 combined as fc_phor does, so results are the same as the two passes'.
       fc_pglob: dst[c] = reduce over i < count of x[i * C + c]. */
    #define FC_POOL_FAMILY(T, I, SUF, VB, G, TGT)                                                       \\
    typedef T fc_v_##SUF __attribute__((vector_size(VB)));                                              \\
    typedef T fc_vu_##SUF __attribute__((vector_size(VB), aligned(sizeof(T))));                        \\
    typedef I fc_m_##SUF __attribute__((vector_size(VB)));                                              \\
    /* a = op(a, v), recording in *nan whether v is NaN (max) */                                        \\
    FC_INL TGT void fc_op_##SUF(fc_v_##SUF* a, fc_v_##SUF v, fc_m_##SUF* nan, const int op) {           \\
        if (op == FC_MAX) { *a = FC_VMAX_##SUF(v, *a); *nan |= (fc_m_##SUF)(v != v); }                 \\
        else *a += v;                                                                                   \\
    }                                                                                                   \\
    /* NaN where the mask is set */                                                                     \\
    FC_INL TGT fc_v_##SUF fc_fix_##SUF(fc_v_##SUF a, fc_m_##SUF nan) {                                  \\
        const fc_v_##SUF qnan = (fc_v_##SUF){0} + (T)__builtin_nan("");                                  \\
        return FC_BLEND(fc_v_##SUF, fc_m_##SUF, a, qnan, nan);                                          \\
    }                                                                                                   \\
    FC_INL T fc_sop_##SUF(T a, T v, const int op) {                                                     \\
        return op == FC_MAX ? ((v > a || v != v) && a == a ? v : a) : a + v;                            \\
    }                                                                                                   \\
    /* the column reduction of nb vectors (nb <= G) at channel c of column iw, into acc */           \\
    FC_INL TGT void fc_colred_##SUF(const T* x, const ptrdiff_t* roff, ptrdiff_t nr, ptrdiff_t o,        \\
            fc_v_##SUF* acc, fc_m_##SUF* nan, const int nb, const int op) {                             \\
        enum { VL = VB / sizeof(T) };                                                                   \\
        _Pragma("GCC unroll 8") for (int g = 0; g < nb; g++) {                                          \\
            acc[g] = *(const fc_vu_##SUF*)(x + roff[0] + o + g * VL);                                   \\
            if (op == FC_MAX) nan[g] = (fc_m_##SUF)(acc[g] != acc[g]);                                  \\
        }                                                                                               \\
        for (ptrdiff_t r = 1; r < nr; r++)                                                              \\
            _Pragma("GCC unroll 8") for (int g = 0; g < nb; g++)                                        \\
                fc_op_##SUF(&acc[g], *(const fc_vu_##SUF*)(x + roff[r] + o + g * VL), &nan[g], op);     \\
    }                                                                                                   \\
    FC_INL T fc_scolred_##SUF(const T* x, const ptrdiff_t* roff, ptrdiff_t nr, ptrdiff_t o, const int op) {\\
        T a = x[roff[0] + o];                                                                           \\
        for (ptrdiff_t r = 1; r < nr; r++) a = fc_sop_##SUF(a, x[roff[r] + o], op);                     \\
        return a;                                                                                       \\
    }                                                                                                   \\
    FC_INL TGT void fc_pcol_##SUF##_op(const T* x, const ptrdiff_t* roff, ptrdiff_t nr, ptrdiff_t C,    \\
            ptrdiff_t iwa, ptrdiff_t iwb, T* col, const int op) {                                       \\
        enum { VL = VB / sizeof(T) };                                                                   \\
        fc_v_##SUF acc[G];                                                                              \\
        fc_m_##SUF nan[G];                                                                              \\
        for (ptrdiff_t iw = iwa; iw < iwb; iw++) {                                                      \\
            T* dst = col + (iw - iwa) * C;                                                              \\
            ptrdiff_t c = 0;                                                                            \\
            for (; c + G * VL <= C; c += G * VL) {                                                      \\
                fc_colred_##SUF(x, roff, nr, iw * C + c, acc, nan, G, op);                              \\
                _Pragma("GCC unroll 8") for (int g = 0; g < G; g++)                                     \\
                    *(fc_vu_##SUF*)(dst + c + g * VL) = op == FC_MAX ? fc_fix_##SUF(acc[g], nan[g]) : acc[g];\\
            }                                                                                           \\
            for (; c + VL <= C; c += VL) {                                                              \\
                fc_colred_##SUF(x, roff, nr, iw * C + c, acc, nan, 1, op);                              \\
                *(fc_vu_##SUF*)(dst + c) = op == FC_MAX ? fc_fix_##SUF(acc[0], nan[0]) : acc[0];        \\
            }                                                                                           \\
            for (; c < C; c++)                                                                          \\
                dst[c] = fc_scolred_##SUF(x, roff, nr, iw * C + c, op);                                 \\
        }                                                                                               \\
    }                                                                                                   \\
    static TGT void fc_pcol_##SUF(const void* x, const ptrdiff_t* roff, ptrdiff_t nr, ptrdiff_t C,      \\
            ptrdiff_t iwa, ptrdiff_t iwb, void* col, int op) {                                          \\
        if (op == FC_MAX) fc_pcol_##SUF##_op((const T*)x, roff, nr, C, iwa, iwb, (T*)col, FC_MAX);      \\
        else fc_pcol_##SUF##_op((const T*)x, roff, nr, C, iwa, iwb, (T*)col, FC_SUM);                   \\
    }                                                                                                   \\
    /* the window of output pixel ow over columns: WIN = 0 reads the vertical pass's col (pixel     \\
       stride C, row offsets unused), WIN = 1 reduces the rows of x on the fly */                      \\
    FC_INL TGT void fc_pwin_##SUF##_op(const T* x, const ptrdiff_t* roff, ptrdiff_t nr, ptrdiff_t C,    \\
            ptrdiff_t OW, ptrdiff_t kw, ptrdiff_t sw, ptrdiff_t a0, ptrdiff_t ncols, T* y, const int op,\\
            const int WIN) {                                                                            \\
        enum { VL = VB / sizeof(T) };                                                                   \\
        const ptrdiff_t zero_off = 0;                                                                   \\
        const ptrdiff_t* ro = WIN ? roff : &zero_off;                                                   \\
        const ptrdiff_t n = WIN ? nr : 1;                                                               \\
        fc_v_##SUF acc[G], v[G];                                                                        \\
        fc_m_##SUF nan[G], vn[G];                                                                       \\
        for (ptrdiff_t ow = 0; ow < OW; ow++) {                                                         \\
            const ptrdiff_t a = a0 + ow * sw;                                                           \\
            const ptrdiff_t ks = a < 0 ? -a : 0, ke = kw < ncols - a ? kw : ncols - a;                  \\
            const T scale = (T)1 / (T)((ke - ks) * nr);                                                 \\
            T* dst = y + ow * C;                                                                        \\
            ptrdiff_t c = 0;                                                                            \\
            for (; c + G * VL <= C; c += G * VL) {                                                      \\
                fc_colred_##SUF(x, ro, n, (a + ks) * C + c, acc, nan, G, op);                           \\
                for (ptrdiff_t k = ks + 1; k < ke; k++) {                                               \\
                    fc_colred_##SUF(x, ro, n, (a + k) * C + c, v, vn, G, op);                           \\
                    _Pragma("GCC unroll 8") for (int g = 0; g < G; g++) {                               \\
                        fc_op_##SUF(&acc[g], v[g], &nan[g], op);                                        \\
                        if (op == FC_MAX) nan[g] |= vn[g];                                              \\
                    }                                                                                   \\
                }                                                                                       \\
                _Pragma("GCC unroll 8") for (int g = 0; g < G; g++)                                     \\
                    *(fc_vu_##SUF*)(dst + c + g * VL) = op == FC_MAX ? fc_fix_##SUF(acc[g], nan[g])     \\
                                                                     : acc[g] * scale;                  \\
            }                                                                                           \\
            for (; c + VL <= C; c += VL) {                                                              \\
                fc_colred_##SUF(x, ro, n, (a + ks) * C + c, acc, nan, 1, op);                           \\
                for (ptrdiff_t k = ks + 1; k < ke; k++) {                                               \\
                    fc_colred_##SUF(x, ro, n, (a + k) * C + c, v, vn, 1, op);                           \\
                    fc_op_##SUF(&acc[0], v[0], &nan[0], op);                                            \\
                    if (op == FC_MAX) nan[0] |= vn[0];                                                  \\
                }                                                                                       \\
                *(fc_vu_##SUF*)(dst + c) = op == FC_MAX ? fc_fix_##SUF(acc[0], nan[0]) : acc[0] * scale;\\
            }                                                                                           \\
            for (; c < C; c++) {                                                                        \\
                T s = fc_scolred_##SUF(x, ro, n, (a + ks) * C + c, op);                                 \\
                for (ptrdiff_t k = ks + 1; k < ke; k++)                                                 \\
                    s = fc_sop_##SUF(s, fc_scolred_##SUF(x, ro, n, (a + k) * C + c, op), op);           \\
                dst[c] = op == FC_MAX ? s : s * scale;                                                  \\
            }                                                                                           \\
        }                                                                                               \\
    }                                                                                                   \\
    static TGT void fc_pwin_##SUF(const void* x, const ptrdiff_t* roff, ptrdiff_t nr, ptrdiff_t C,      \\
            ptrdiff_t OW, ptrdiff_t kw, ptrdiff_t sw, ptrdiff_t a0, ptrdiff_t ncols, void* y, int op,   \\
            int win) {                                                                                  \\
        const T* xp = (const T*)x;                                                                      \\
        T* yp = (T*)y;                                                                                  \\
        if (win) {                                                                                      \\
            if (op == FC_MAX) fc_pwin_##SUF##_op(xp, roff, nr, C, OW, kw, sw, a0, ncols, yp, FC_MAX, 1);\\
            else fc_pwin_##SUF##_op(xp, roff, nr, C, OW, kw, sw, a0, ncols, yp, FC_SUM, 1);             \\
        } else {                                                                                        \\
            if (op == FC_MAX) fc_pwin_##SUF##_op(xp, roff, nr, C, OW, kw, sw, a0, ncols, yp, FC_MAX, 0);\\
            else fc_pwin_##SUF##_op(xp, roff, nr, C, OW, kw, sw, a0, ncols, yp, FC_SUM, 0);             \\
        }                                                                                               \\
    }                                                                                                   \\
    /* dst[:NG * VL] = op over the count pixels (C apart) of x[:NG * VL]: NG independent vectors,       \\
       each lane reduced over the pixels in order */                                                    \\
    FC_INL TGT void fc_pglob_##SUF##_blk(const T* x, ptrdiff_t count, ptrdiff_t C, T* dst, const int op,\\
                                         const int NG) {                                                \\
        enum { VL = VB / sizeof(T) };                                                                   \\
        fc_v_##SUF acc[G];                                                                              \\
        fc_m_##SUF nan[G];                                                                              \\
        _Pragma("GCC unroll 8") for (int g = 0; g < NG; g++) {                                          \\
            acc[g] = *(const fc_vu_##SUF*)(x + g * VL);                                                 \\
            nan[g] = (fc_m_##SUF)(acc[g] != acc[g]);                                                    \\
        }                                                                                               \\
        for (ptrdiff_t i = 1; i < count; i++)                                                           \\
            _Pragma("GCC unroll 8") for (int g = 0; g < NG; g++)                                        \\
                fc_op_##SUF(&acc[g], *(const fc_vu_##SUF*)(x + i * C + g * VL), &nan[g], op);           \\
        _Pragma("GCC unroll 8") for (int g = 0; g < NG; g++)                                            \\
            *(fc_vu_##SUF*)(dst + g * VL) = op == FC_MAX ? fc_fix_##SUF(acc[g], nan[g]) : acc[g];       \\
    }                                                                                                   \\
    /* The channels in blocks of G vectors, then of 4, 2 and 1 (each block's vectors are independent    \\
       chains: one vector at a time waited on the adds' latency, 64 channels 4x slower), then one       \\
       by one; every lane is reduced over the pixels in order whatever its block. */                    \\
    FC_INL TGT void fc_pglob_##SUF##_op(const T* x, ptrdiff_t count, ptrdiff_t C, T* dst, const int op) {\\
        enum { VL = VB / sizeof(T) };                                                                   \\
        ptrdiff_t c = 0;                                                                                \\
        for (; c + G * VL <= C; c += G * VL) fc_pglob_##SUF##_blk(x + c, count, C, dst + c, op, G);     \\
        if (G > 4 && c + 4 * VL <= C) { fc_pglob_##SUF##_blk(x + c, count, C, dst + c, op, 4); c += 4 * VL; }\\
        if (G > 2 && c + 2 * VL <= C) { fc_pglob_##SUF##_blk(x + c, count, C, dst + c, op, 2); c += 2 * VL; }\\
        if (c + VL <= C) { fc_pglob_##SUF##_blk(x + c, count, C, dst + c, op, 1); c += VL; }            \\
        for (; c < C; c++) {                                                                            \\
            T a = x[c];                                                                                 \\
            for (ptrdiff_t i = 1; i < count; i++) a = fc_sop_##SUF(a, x[i * C + c], op);                \\
            dst[c] = a;                                                                                 \\
        }                                                                                               \\
    }                                                                                                   \\
    static TGT void fc_pglob_##SUF(const void* x, ptrdiff_t count, ptrdiff_t C, void* dst, int op) {    \\
        if (op == FC_MAX) fc_pglob_##SUF##_op((const T*)x, count, C, (T*)dst, FC_MAX);                  \\
        else fc_pglob_##SUF##_op((const T*)x, count, C, (T*)dst, FC_SUM);                               \\
    }

    #if FC_X86
    FC_POOL_FAMILY(float, int, f2, 64, 8, FC_T512)
    FC_POOL_FAMILY(double, long long, d2, 64, 8, FC_T512)
    FC_POOL_FAMILY(float, int, f1, 32, 4, FC_T256)
    FC_POOL_FAMILY(double, long long, d1, 32, 4, FC_T256)
    #endif
    FC_POOL_FAMILY(float, int, f0, 16, 4, FC_TBASE)
    FC_POOL_FAMILY(double, long long, d0, 16, 4, FC_TBASE)

    typedef void (*fc_pcolfn)(const void* x, const ptrdiff_t* roff, ptrdiff_t nr, ptrdiff_t C,
                              ptrdiff_t iwa, ptrdiff_t iwb, void* col, int op);
    typedef void (*fc_pwinfn)(const void* x, const ptrdiff_t* roff, ptrdiff_t nr, ptrdiff_t C, ptrdiff_t OW,
                              ptrdiff_t kw, ptrdiff_t sw, ptrdiff_t a0, ptrdiff_t ncols, void* y, int op,
                              int win);
    typedef void (*fc_pglobfn)(const void* x, ptrdiff_t count, ptrdiff_t C, void* dst, int op);

    #if FC_X86
    #  define FC_PICK(name, isa, dsize) ((isa) == 2 ? ((dsize) == 4 ? name##_f2 : name##_d2)          \\
                                       : (isa) == 1 ? ((dsize) == 4 ? name##_f1 : name##_d1)          \\
                                       : ((dsize) == 4 ? name##_f0 : name##_d0))
    #else
    #  define FC_PICK(name, isa, dsize) ((dsize) == 4 ? name##_f0 : name##_d0)
    #endif
    static fc_pcolfn fc_pcol_pick(int isa, int dsize) { return FC_PICK(fc_pcol, isa, dsize); }
    static fc_pwinfn fc_pwin_pick(int isa, int dsize) { return FC_PICK(fc_pwin, isa, dsize); }
    static fc_pglobfn fc_pglob_pick(int isa, int dsize) { return FC_PICK(fc_pglob, isa, dsize); }
    """
    ctypedef void (*fc_pcolfn)(const void* x, const Py_ssize_t* roff, Py_ssize_t nr, Py_ssize_t C,
                               Py_ssize_t iwa, Py_ssize_t iwb, void* col, int op) noexcept nogil
    ctypedef void (*fc_pwinfn)(const void* x, const Py_ssize_t* roff, Py_ssize_t nr, Py_ssize_t C,
                               Py_ssize_t OW, Py_ssize_t kw, Py_ssize_t sw, Py_ssize_t a0, Py_ssize_t ncols,
                               void* y, int op, int win) noexcept nogil
    ctypedef void (*fc_pglobfn)(const void* x, Py_ssize_t count, Py_ssize_t C, void* dst, int op) noexcept nogil
    fc_pcolfn fc_pcol_pick(int isa, int dsize) noexcept nogil
    fc_pwinfn fc_pwin_pick(int isa, int dsize) noexcept nogil
    fc_pglobfn fc_pglob_pick(int isa, int dsize) noexcept nogil
    enum:
        FC_MAX
        FC_SUM


# ---------------------------------------------------------------- window pooling
cdef void _pool(const real* x, real* y, Py_ssize_t N, Py_ssize_t D, Py_ssize_t H, Py_ssize_t W,
                Py_ssize_t C, Py_ssize_t OD, Py_ssize_t OH, Py_ssize_t OW, const Py_ssize_t* k,
                const Py_ssize_t* s, const Py_ssize_t* lo, int op, bint separable, int num_threads) noexcept nogil:
    cdef fc_pcolfn pcol = fc_pcol_pick(_isa, sizeof(real))
    cdef fc_pwinfn pwin = fc_pwin_pick(_isa, sizeof(real))
    # the input columns the windows of a row cover
    cdef Py_ssize_t iwa = max(0, -lo[2]), iwb = min(W, (OW - 1) * s[2] - lo[2] + k[2])
    cdef Py_ssize_t row, n, od, oh, kd, kh, i_d, i_h, nr
    cdef Py_ssize_t* roff = NULL
    cdef real* col = NULL
    with nogil, parallel(num_threads=num_threads):
        # per thread: the row offsets of a window and the vertical pass's columns
        roff = <Py_ssize_t*>malloc(k[0] * k[1] * sizeof(Py_ssize_t))
        col = <real*>malloc((max(iwb - iwa, 1) * C if separable else 1) * sizeof(real))
        if roff != NULL and col != NULL:
            for row in prange(N * OD * OH, schedule="static"):
                n = row // (OD * OH)
                od = (row // OH) % OD
                oh = row % OH
                # the window's real input rows, in order
                nr = 0
                for kd in range(k[0]):
                    i_d = od * s[0] - lo[0] + kd
                    if i_d < 0 or i_d >= D:
                        continue
                    for kh in range(k[1]):
                        i_h = oh * s[1] - lo[1] + kh
                        if 0 <= i_h < H:
                            roff[nr] = ((n * D + i_d) * H + i_h) * W * C
                            nr = nr + 1
                if separable:
                    pcol(x, roff, nr, C, iwa, iwb, col, op)
                    pwin(col, roff, nr, C, OW, k[2], s[2], -lo[2] - iwa, iwb - iwa, y + row * OW * C, op, 0)
                else:
                    pwin(x, roff, nr, C, OW, k[2], s[2], -lo[2], W, y + row * OW * C, op, 1)
        free(roff)
        free(col)


cdef _run_pool(const real[:, :, :, :, ::1] x, real[:, :, :, :, ::1] y, tuple pool, tuple strides,
               tuple before, int num_threads, int op):
    cdef Py_ssize_t k[3]
    cdef Py_ssize_t s[3]
    cdef Py_ssize_t lo[3]
    cdef Py_ssize_t i
    for i in range(3):
        k[i], s[i], lo[i] = pool[i], strides[i], before[i]
    if y.shape[0] == 0 or y.shape[1] == 0 or y.shape[2] == 0 or y.shape[3] == 0 or y.shape[4] == 0:
        return
    with nogil:
        _pool(&x[0, 0, 0, 0, 0], &y[0, 0, 0, 0, 0], x.shape[0], x.shape[1], x.shape[2], x.shape[3],
              x.shape[4], y.shape[1], y.shape[2], y.shape[3], k, s, lo, op, separable(k[2], s[2], y.shape[3]),
              num_threads)


cpdef bint separable(Py_ssize_t kw, Py_ssize_t sw, Py_ssize_t ow) noexcept nogil:
    """Whether windows of width ``kw`` at stride ``sw`` share their column reductions (they
    overlap along W)."""
    return kw > sw and ow > 1


def max_pool(const real[:, :, :, :, ::1] x, real[:, :, :, :, ::1] y, tuple pool, tuple strides,
             tuple before, int num_threads):
    """``y[n, o] = max over the window at o`` of ``x``; padded positions are skipped, NaN propagates."""
    _run_pool(x, y, pool, strides, before, num_threads, FC_MAX)


def avg_pool(const real[:, :, :, :, ::1] x, real[:, :, :, :, ::1] y, tuple pool, tuple strides,
             tuple before, int num_threads):
    """``y[n, o] = mean over the unpadded part of the window at o`` of ``x``."""
    _run_pool(x, y, pool, strides, before, num_threads, FC_SUM)


# ---------------------------------------------------------------- global pooling
cdef void _global(const real* x, real* part, real* y, Py_ssize_t N, Py_ssize_t P, Py_ssize_t C,
                  Py_ssize_t K, int op, int num_threads) noexcept nogil:
    cdef fc_pglobfn pglob = fc_pglob_pick(_isa, sizeof(real))
    cdef Py_ssize_t chunk = (P + K - 1) // K, job, n, k, c
    if K == 1:
        for n in prange(N, schedule="static", num_threads=num_threads):
            pglob(x + n * P * C, P, C, y + n * C, op)
    else:
        for job in prange(N * K, schedule="static", num_threads=num_threads):
            n = job // K
            k = job % K
            pglob(x + (n * P + k * chunk) * C, min(chunk, P - k * chunk), C, part + job * C, op)
        for n in prange(N, schedule="static", num_threads=num_threads):
            pglob(part + n * K * C, K, C, y + n * C, op)
    if op == FC_SUM:
        for c in range(N * C):
            y[c] = y[c] / P


def global_pool(const real[:, :, ::1] x, real[:, :, ::1] part, real[:, ::1] y, bint is_max,
                int num_threads):
    """Max or mean over axis 1 of ``x`` (N, P, C) into ``y`` (N, C).

    ``part`` (N, K, C) receives the partial results of K chunks of ``ceil(P / K)`` pixels
    (not used when K is 1).
    """
    cdef Py_ssize_t N = x.shape[0], P = x.shape[1], C = x.shape[2], K = part.shape[1]
    if N == 0 or C == 0:
        return
    with nogil:
        _global(&x[0, 0, 0], &part[0, 0, 0], &y[0, 0], N, P, C, K, FC_MAX if is_max else FC_SUM, num_threads)
