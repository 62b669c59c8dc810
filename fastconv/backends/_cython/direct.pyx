# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Depthwise convolution of the Cython backend: register-tiled C micro-kernels on packed rows.

All arrays are the kernel contract's channels-last ones, C-contiguous.  Work is
split with OpenMP (``prange``) into jobs that write disjoint parts of the output.

Algorithm
---------
A job is (image, output depth, band of output rows, segment of output columns,
channel block); a channel block is one vector of channels (64 bytes with
AVX-512: 16 float32 / 8 float64).  The job *packs* each input row it needs into
a per-thread ring of row buffers: the block's channels of every input pixel of
the segment, one vector per pixel, contiguous, with the zero padding (and the
channels past ``C`` of the last block) written as zeros.  Rows above or below the
input are a shared row of zeros.  Packing costs one load and one store per input
vector and makes every output pixel an interior pixel: one micro-kernel covers
the borders, small images and the last channel block alike, with aligned,
contiguous loads.  Where x's channel blocks are whole vectors (and its pixels not
a multiple of 1 KiB apart), the tiles whose inputs are all inside the image read x
itself instead, and only the border pixels are packed: 10-26% faster on
1x112x112x32, 1x56x56x144 and stride-2 layers.  Vectors split across cache
lines cost more than packing saves, and NumPy's arrays usually start 16 bytes
past a 64-byte line; so where x is not aligned, at unit W stride and without a
depth multiplier, each direct vector starts the misalignment's lanes early, at
an aligned address, and the weights and bias are rotated to match (a depthwise
tap is the same lane-by-lane product in every position of a row's flat run of
pixels x channels); one extra vector per run covers the lanes it leaves at its
end.  1x112x112x32 float32 at 2 threads: 67 us packed, 55 aligned this way, 50
for aligned x.  Other misaligned inputs (strided, with a multiplier, or split
between jobs by channel blocks) are packed throughout.

The micro-kernel computes a tile of 2 output rows x P output pixels (P = 8 with
AVX-512, 4 with AVX2 or SSE2: 16 or 8 accumulator registers) x one channel
vector.  It walks the input rows the two output rows read (``stride + (KH - 1) *
dilation + 1`` rows for a pair), each once; for 3- and 5-wide kernel rows at
stride 1 or 2 (MobileNet's and EfficientNet's) the tile's columns are walked
once and each input vector is loaded once for every tap and both output rows that
use it (10 loads for 48 multiply-adds in a 3x3 stride-1 row); other kernels use a
generic loop over taps.  The kernels are C with GCC vector types, compiled three
times (AVX-512, AVX2+FMA, SSE2 baseline, each with its own vector width and tile)
and picked once at import (:func:`isa`, :func:`set_isa` to force a lower one).
Bias and the piecewise-linear activations (relu, relu6, leaky_relu, hard_tanh,
hard_sigmoid, hard_silu) are applied to each tile before it is stored (the
epilogue); the driver applies the other activations afterwards.

Results
-------
Every output element is ``act(bias + sum of its taps)``, the taps added one by
one in kernel order (depth, row, column) starting from zero, the same way on
every path, so results do not depend on the tiling, the job split or the thread
count.  Padded taps add ``0 * w`` like the zero-padded reference.
"""

from cpython.buffer cimport PyBUF_ANY_CONTIGUOUS, PyBuffer_Release, PyObject_GetBuffer
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset


cdef extern from "stdlib.h":
    int posix_memalign(void** ptr, size_t alignment, size_t size) nogil

ctypedef fused real:
    float
    double


include "_isa.pxi"


# ---------------------------------------------------------------- micro-kernels (C)
cdef extern from *:
    """
    #include <stddef.h>
    #include <stdlib.h>
    #include <string.h>
    #include <stdint.h>

    /* the ISA macros (FC_X86, FC_T512, ...) and fc_vec_bytes are in _isa.pxi */
    #if FC_X86
    /* keeps a loaded vector in a register: GCC would otherwise fold the load into every FMA that
       uses it (one load per use instead of one per vector) */
    #  define FC_KEEP(v) __asm__("" : "+v"(v))
    #else
    #  define FC_KEEP(v) ((void)0)
    #endif
    /* the widest kernel row with a specialised tile kernel */
    #define FC_DW_KMAX 5

    /* output pixels per depthwise tile at ISA level `isa` (2 rows x P accumulators: 16 of the 32
       AVX-512 registers, 8 of the 16 AVX2/SSE ones) */
    static ptrdiff_t fc_dw_pixels(int isa) { return isa == 2 ? 8 : 4; }

    /* One kernel row's input for a tile: x a packed input row (pixels VL apart, zero padded), xd
       the same row of the input itself (pixels C apart; NULL where the row is padding), w0 / w1
       the weights of that kernel row for output row 0 / 1 of the tile (NULL: not used). */
    typedef struct { const void* x; const void* xd; const void* w0; const void* w1; } fc_dwrow;

    typedef void (*fc_dwfn)(const fc_dwrow* rows, ptrdiff_t nr, int direct, ptrdiff_t col, ptrdiff_t ps,
                            ptrdiff_t ws, ptrdiff_t wo, const void* bias, int act, void* out0, void* out1,
                            ptrdiff_t ldo, ptrdiff_t npx, ptrdiff_t s, ptrdiff_t kw, ptrdiff_t dw);
    typedef void (*fc_edgefn)(const fc_dwrow* rows, ptrdiff_t nr, ptrdiff_t col, ptrdiff_t ps, ptrdiff_t ws,
                              ptrdiff_t wo, const void* bias, int act, void* out0, void* out1, ptrdiff_t nl,
                              int R, ptrdiff_t kw, ptrdiff_t dw);
    typedef void (*fc_packfn)(const void* src, ptrdiff_t C, ptrdiff_t nb, ptrdiff_t cn, ptrdiff_t lo,
                              ptrdiff_t hi, ptrdiff_t np, void* dst, ptrdiff_t bs);

    #define FC_FAMILY(T, I, SUF, VB, P, TGT)                                                            \\
    typedef T fc_v_##SUF __attribute__((vector_size(VB)));                                              \\
    typedef T fc_vu_##SUF __attribute__((vector_size(VB), aligned(sizeof(T))));                         \\
    typedef I fc_m_##SUF __attribute__((vector_size(VB)));                                              \\
    /* act(a + bias) for the fused activation codes (ACT_* in the .pyx); comparisons with NaN are       \\
       false, so NaN passes through every activation */                                                 \\
    FC_INL TGT fc_v_##SUF fc_finish_##SUF(fc_v_##SUF a, fc_v_##SUF bias, int act) {                     \\
        const fc_v_##SUF zero = {0};                                                                    \\
        const fc_v_##SUF one = zero + 1, three = zero + 3, six = zero + 6;                              \\
        fc_v_##SUF t;                                                                                   \\
        a += bias;                                                                                      \\
        switch (act) {                                                                                  \\
        case 1: a = FC_BLEND(fc_v_##SUF, fc_m_##SUF, a, zero, a < zero); break;                         \\
        case 2: a = FC_BLEND(fc_v_##SUF, fc_m_##SUF, a, zero, a < zero);                                \\
                a = FC_BLEND(fc_v_##SUF, fc_m_##SUF, a, six, a > six); break;                           \\
        case 3: a = FC_BLEND(fc_v_##SUF, fc_m_##SUF, a * (T)0.2, a, a >= zero); break;                  \\
        case 4: a = FC_BLEND(fc_v_##SUF, fc_m_##SUF, a, -one, a < -one);                                \\
                a = FC_BLEND(fc_v_##SUF, fc_m_##SUF, a, one, a > one); break;                           \\
        case 5: case 6:                                                                                 \\
            t = a + three;                                                                              \\
            t = FC_BLEND(fc_v_##SUF, fc_m_##SUF, t, zero, t < zero);                                    \\
            t = FC_BLEND(fc_v_##SUF, fc_m_##SUF, t, six, t > six) / six;                                \\
            a = act == 5 ? t : a * t;                                                                   \\
            break;                                                                                      \\
        }                                                                                               \\
        return a;                                                                                       \\
    }                                                                                                   \\
    /* The tile: R (1 or 2) output rows x P output pixels x one vector of channels.  Row entry r        \\
       adds its input row (the packed one, or with direct the input's own) times its kernel row's       \\
       weights (taps ws apart) to the output rows it serves; tile pixel p reads the row's vectors at    \\
       col + (p * s + k * dw) * ps (k < kw; ps is VL for packed rows, C for the input's), and pixels    \\
       p < npx are stored at out + p * ldo.  The weights are read wo bytes past the entries' (the      \\
       rotated copy of the shifted direct tiles, see _dw_job).  With KW > 0 (then s = S, kw = KW and dw = 1 at compile     \\
       time) the tile's columns are walked once, each input vector loaded once for all the taps and     \\
       both rows that use it; KW = 0 is the generic loop over taps.  Every accumulator adds its taps    \\
       in order (entries, then k) on every path. */                                                     \\
    FC_INL TGT void fc_dw_tile_##SUF(const fc_dwrow* rows, ptrdiff_t nr, int direct, ptrdiff_t col,     \\
            ptrdiff_t ps, ptrdiff_t ws, ptrdiff_t wo, const void* bias_, int act, void* out0_,          \\
            void* out1_, ptrdiff_t ldo, ptrdiff_t npx, const int R, const int S, const int KW,          \\
            ptrdiff_t s, ptrdiff_t kw, ptrdiff_t dw) {                                                  \\
        enum { VL = VB / sizeof(T) };                                                                   \\
        /* packed rows have a compile-time pixel stride */                                              \\
        if (!direct) ps = VL;                                                                           \\
        const fc_v_##SUF zero = {0};                                                                    \\
        fc_v_##SUF a0[P], a1[P];                                                                        \\
        _Pragma("GCC unroll 16") for (int p = 0; p < P; p++) { a0[p] = zero; a1[p] = zero; }            \\
        for (ptrdiff_t r = 0; r < nr; r++) {                                                            \\
            const T* x = (const T*)(direct ? rows[r].xd : rows[r].x) + col;                             \\
            const T* w0 = rows[r].w0 ? (const T*)((uintptr_t)rows[r].w0 + wo) : 0;                      \\
            const T* w1 = R == 2 && rows[r].w1 ? (const T*)((uintptr_t)rows[r].w1 + wo) : 0;            \\
            if (KW) {                                                                                   \\
                fc_v_##SUF u0[FC_DW_KMAX], u1[FC_DW_KMAX];                                              \\
                _Pragma("GCC unroll 8") for (int k = 0; k < KW; k++) {                                  \\
                    u0[k] = w0 ? *(const fc_vu_##SUF*)(w0 + k * ws) : zero;                             \\
                    u1[k] = w1 ? *(const fc_vu_##SUF*)(w1 + k * ws) : zero;                             \\
                }                                                                                       \\
                if (w0 && w1) {                                                                         \\
                    _Pragma("GCC unroll 64") for (int j = 0; j < (P - 1) * S + KW; j++) {               \\
                        fc_v_##SUF v = *(const fc_vu_##SUF*)(x + j * ps);                               \\
                        FC_KEEP(v);                                                                     \\
                        _Pragma("GCC unroll 16") for (int p = 0; p < P; p++) {                          \\
                            const int k = j - p * S;                                                    \\
                            if (k >= 0 && k < KW) { a0[p] += v * u0[k]; a1[p] += v * u1[k]; }           \\
                        }                                                                               \\
                    }                                                                                   \\
                } else if (w0) {                                                                        \\
                    _Pragma("GCC unroll 64") for (int j = 0; j < (P - 1) * S + KW; j++) {               \\
                        fc_v_##SUF v = *(const fc_vu_##SUF*)(x + j * ps);                               \\
                        FC_KEEP(v);                                                                     \\
                        _Pragma("GCC unroll 16") for (int p = 0; p < P; p++) {                          \\
                            const int k = j - p * S;                                                    \\
                            if (k >= 0 && k < KW) a0[p] += v * u0[k];                                   \\
                        }                                                                               \\
                    }                                                                                   \\
                } else {                                                                                \\
                    _Pragma("GCC unroll 64") for (int j = 0; j < (P - 1) * S + KW; j++) {               \\
                        fc_v_##SUF v = *(const fc_vu_##SUF*)(x + j * ps);                               \\
                        FC_KEEP(v);                                                                     \\
                        _Pragma("GCC unroll 16") for (int p = 0; p < P; p++) {                          \\
                            const int k = j - p * S;                                                    \\
                            if (k >= 0 && k < KW) a1[p] += v * u1[k];                                   \\
                        }                                                                               \\
                    }                                                                                   \\
                }                                                                                       \\
            } else {                                                                                    \\
                for (ptrdiff_t k = 0; k < kw; k++) {                                                    \\
                    const fc_v_##SUF u0k = w0 ? *(const fc_vu_##SUF*)(w0 + k * ws) : zero;              \\
                    const fc_v_##SUF u1k = w1 ? *(const fc_vu_##SUF*)(w1 + k * ws) : zero;              \\
                    const T* xk = x + k * dw * ps;                                                      \\
                    if (w0 && w1) {                                                                     \\
                        _Pragma("GCC unroll 16") for (int p = 0; p < P; p++) {                          \\
                            fc_v_##SUF v = *(const fc_vu_##SUF*)(xk + p * s * ps);                      \\
                            a0[p] += v * u0k; a1[p] += v * u1k;                                         \\
                        }                                                                               \\
                    } else if (w0) {                                                                    \\
                        _Pragma("GCC unroll 16") for (int p = 0; p < P; p++)                            \\
                            a0[p] += *(const fc_vu_##SUF*)(xk + p * s * ps) * u0k;                      \\
                    } else {                                                                            \\
                        _Pragma("GCC unroll 16") for (int p = 0; p < P; p++)                            \\
                            a1[p] += *(const fc_vu_##SUF*)(xk + p * s * ps) * u1k;                      \\
                    }                                                                                   \\
                }                                                                                       \\
            }                                                                                           \\
        }                                                                                               \\
        const fc_v_##SUF b = *(const fc_vu_##SUF*)bias_;                                                \\
        T* out0 = (T*)out0_;                                                                            \\
        T* out1 = (T*)out1_;                                                                            \\
        _Pragma("GCC unroll 16") for (int p = 0; p < P; p++) {                                          \\
            if (p >= npx) break;                                                                        \\
            *(fc_vu_##SUF*)(out0 + p * ldo) = fc_finish_##SUF(a0[p], b, act);                           \\
            if (R == 2) *(fc_vu_##SUF*)(out1 + p * ldo) = fc_finish_##SUF(a1[p], b, act);               \\
        }                                                                                               \\
    }                                                                                                   \\
    FC_DW_SPECIAL(T, SUF, TGT, 1, 1, 3) FC_DW_SPECIAL(T, SUF, TGT, 2, 1, 3)                             \\
    FC_DW_SPECIAL(T, SUF, TGT, 1, 2, 3) FC_DW_SPECIAL(T, SUF, TGT, 2, 2, 3)                             \\
    FC_DW_SPECIAL(T, SUF, TGT, 1, 1, 5) FC_DW_SPECIAL(T, SUF, TGT, 2, 1, 5)                             \\
    FC_DW_SPECIAL(T, SUF, TGT, 1, 2, 5) FC_DW_SPECIAL(T, SUF, TGT, 2, 2, 5)                             \\
    FC_DW_SPECIAL(T, SUF, TGT, 1, 0, 0) FC_DW_SPECIAL(T, SUF, TGT, 2, 0, 0)                             \\
    static fc_dwfn fc_dw_select_##SUF(int R, ptrdiff_t s, ptrdiff_t kw, ptrdiff_t dw) {                 \\
        if (dw == 1 && (s == 1 || s == 2) && (kw == 3 || kw == 5)) {                                    \\
            if (R == 2)                                                                                 \\
                return s == 1 ? (kw == 3 ? fc_dw_2_1_3_##SUF : fc_dw_2_1_5_##SUF)                       \\
                              : (kw == 3 ? fc_dw_2_2_3_##SUF : fc_dw_2_2_5_##SUF);                      \\
            return s == 1 ? (kw == 3 ? fc_dw_1_1_3_##SUF : fc_dw_1_1_5_##SUF)                           \\
                          : (kw == 3 ? fc_dw_1_2_3_##SUF : fc_dw_1_2_5_##SUF);                          \\
        }                                                                                               \\
        return R == 2 ? fc_dw_2_0_0_##SUF : fc_dw_1_0_0_##SUF;                                          \\
    }                                                                                                   \\
    /* The lanes that a run of shifted direct tiles (see _dw_job) leaves out at its end: the vector     \\
       at col of each of the R output rows, with the taps added in the tiles' order, and its first     \\
       nl lanes (the last channels of the run's last pixel) stored at out0 / out1.  Only those lanes    \\
       are loaded (the others lie past the input row, maybe past x). */                                 \\
    static TGT void fc_dw_edge_##SUF(const fc_dwrow* rows, ptrdiff_t nr, ptrdiff_t col, ptrdiff_t ps,   \\
            ptrdiff_t ws, ptrdiff_t wo, const void* bias_, int act, void* out0_, void* out1_,           \\
            ptrdiff_t nl, int R, ptrdiff_t kw, ptrdiff_t dw) {                                          \\
        const fc_v_##SUF zero = {0};                                                                    \\
        fc_v_##SUF a0 = zero, a1 = zero;                                                                \\
        for (ptrdiff_t r = 0; r < nr; r++) {                                                            \\
            const T* x = (const T*)rows[r].xd + col;                                                    \\
            const T* w0 = rows[r].w0 ? (const T*)((uintptr_t)rows[r].w0 + wo) : 0;                      \\
            const T* w1 = R == 2 && rows[r].w1 ? (const T*)((uintptr_t)rows[r].w1 + wo) : 0;            \\
            for (ptrdiff_t k = 0; k < kw; k++) {                                                        \\
                fc_v_##SUF v = zero;                                                                    \\
                for (ptrdiff_t l = 0; l < nl; l++) v[l] = x[k * dw * ps + l];                           \\
                if (w0) a0 += v * *(const fc_vu_##SUF*)(w0 + k * ws);                                   \\
                if (w1) a1 += v * *(const fc_vu_##SUF*)(w1 + k * ws);                                   \\
            }                                                                                           \\
        }                                                                                               \\
        const fc_v_##SUF b = *(const fc_vu_##SUF*)bias_;                                                \\
        a0 = fc_finish_##SUF(a0, b, act);                                                               \\
        a1 = fc_finish_##SUF(a1, b, act);                                                               \\
        for (ptrdiff_t l = 0; l < nl; l++) {                                                            \\
            ((T*)out0_)[l] = a0[l];                                                                     \\
            if (R == 2) ((T*)out1_)[l] = a1[l];                                                         \\
        }                                                                                               \\
    }                                                                                                   \\
    /* Packs one input row for nb channel blocks: block b's pixel i (VL apart, np pixels, the block     \\
       at dst + b * bs) = src pixel i - lo's channels b * VL .. (pixels C apart; in the last block      \\
       only cn channels are real, zeros after them) for lo <= i < hi, zeros elsewhere.  The row is      \\
       read in order, pixel by pixel, all blocks of a pixel together. */                                \\
    static TGT void fc_dw_pack_##SUF(const void* src_, ptrdiff_t C, ptrdiff_t nb, ptrdiff_t cn,         \\
            ptrdiff_t lo, ptrdiff_t hi, ptrdiff_t np, void* dst_, ptrdiff_t bs) {                       \\
        enum { VL = VB / sizeof(T) };                                                                   \\
        const T* src = (const T*)src_;                                                                  \\
        T* dst = (T*)dst_;                                                                              \\
        const fc_v_##SUF zero = {0};                                                                    \\
        const ptrdiff_t full = cn == VL ? nb : nb - 1;                                                  \\
        ptrdiff_t i, b;                                                                                 \\
        for (b = 0; b < nb; b++) {                                                                      \\
            for (i = 0; i < lo; i++)                                                                    \\
                *(fc_v_##SUF*)(dst + b * bs + i * VL) = zero;                                           \\
            for (i = hi; i < np; i++)                                                                   \\
                *(fc_v_##SUF*)(dst + b * bs + i * VL) = zero;                                           \\
        }                                                                                               \\
        for (i = lo; i < hi; i++) {                                                                     \\
            const T* sp = src + (i - lo) * C;                                                           \\
            T* dp = dst + i * VL;                                                                       \\
            for (b = 0; b < full; b++)                                                                  \\
                *(fc_v_##SUF*)(dp + b * bs) = *(const fc_vu_##SUF*)(sp + b * VL);                       \\
            if (full < nb) {                                                                            \\
                fc_v_##SUF v = zero;                                                                    \\
                for (ptrdiff_t c = 0; c < cn; c++)                                                      \\
                    v[c] = sp[full * VL + c];                                                           \\
                *(fc_v_##SUF*)(dp + full * bs) = v;                                                     \\
            }                                                                                           \\
        }                                                                                               \\
    }

    #define FC_DW_SPECIAL(T, SUF, TGT, R, S, KW)                                                        \\
    static TGT void fc_dw_##R##_##S##_##KW##_##SUF(const fc_dwrow* rows, ptrdiff_t nr, int direct,      \\
            ptrdiff_t col, ptrdiff_t ps, ptrdiff_t ws, ptrdiff_t wo, const void* bias, int act,         \\
            void* out0, void* out1, ptrdiff_t ldo, ptrdiff_t npx, ptrdiff_t s, ptrdiff_t kw,            \\
            ptrdiff_t dw) {                                                                             \\
        /* one copy of the tile per source (direct is a constant in each) */                            \\
        if (direct)                                                                                     \\
            fc_dw_tile_##SUF(rows, nr, 1, col, ps, ws, wo, bias, act, out0, out1, ldo, npx, R, S, KW,   \\
                             s, kw, dw);                                                                \\
        else                                                                                            \\
            fc_dw_tile_##SUF(rows, nr, 0, col, ps, ws, wo, bias, act, out0, out1, ldo, npx, R, S, KW,   \\
                             s, kw, dw);                                                                \\
    }

    #if FC_X86
    FC_FAMILY(float, int, f2, 64, 8, FC_T512)
    FC_FAMILY(double, long long, d2, 64, 8, FC_T512)
    FC_FAMILY(float, int, f1, 32, 4, FC_T256)
    FC_FAMILY(double, long long, d1, 32, 4, FC_T256)
    #endif
    FC_FAMILY(float, int, f0, 16, 4, FC_TBASE)
    FC_FAMILY(double, long long, d0, 16, 4, FC_TBASE)

    /* The tile kernel for ISA level isa, element size dsize (4 or 8), R output rows, stride s,
       kernel width kw and dilation dw along W. */
    static fc_dwfn fc_dw_select(int isa, int dsize, int R, ptrdiff_t s, ptrdiff_t kw, ptrdiff_t dw) {
    #if FC_X86
        if (isa == 2) return dsize == 4 ? fc_dw_select_f2(R, s, kw, dw) : fc_dw_select_d2(R, s, kw, dw);
        if (isa == 1) return dsize == 4 ? fc_dw_select_f1(R, s, kw, dw) : fc_dw_select_d1(R, s, kw, dw);
    #endif
        return dsize == 4 ? fc_dw_select_f0(R, s, kw, dw) : fc_dw_select_d0(R, s, kw, dw);
    }

    static fc_edgefn fc_dw_edger(int isa, int dsize) {
    #if FC_X86
        if (isa == 2) return dsize == 4 ? fc_dw_edge_f2 : fc_dw_edge_d2;
        if (isa == 1) return dsize == 4 ? fc_dw_edge_f1 : fc_dw_edge_d1;
    #endif
        return dsize == 4 ? fc_dw_edge_f0 : fc_dw_edge_d0;
    }

    static fc_packfn fc_dw_packer(int isa, int dsize) {
    #if FC_X86
        if (isa == 2) return dsize == 4 ? fc_dw_pack_f2 : fc_dw_pack_d2;
        if (isa == 1) return dsize == 4 ? fc_dw_pack_f1 : fc_dw_pack_d1;
    #endif
        return dsize == 4 ? fc_dw_pack_f0 : fc_dw_pack_d0;
    }
    """
    ctypedef struct fc_dwrow:
        const void* x
        const void* xd
        const void* w0
        const void* w1
    ctypedef void (*fc_dwfn)(const fc_dwrow* rows, Py_ssize_t nr, int direct, Py_ssize_t col, Py_ssize_t ps,
                             Py_ssize_t ws, Py_ssize_t wo, const void* bias, int act, void* out0, void* out1,
                             Py_ssize_t ldo, Py_ssize_t npx, Py_ssize_t s, Py_ssize_t kw,
                             Py_ssize_t dw) noexcept nogil
    ctypedef void (*fc_edgefn)(const fc_dwrow* rows, Py_ssize_t nr, Py_ssize_t col, Py_ssize_t ps,
                               Py_ssize_t ws, Py_ssize_t wo, const void* bias, int act, void* out0, void* out1,
                               Py_ssize_t nl, int R, Py_ssize_t kw, Py_ssize_t dw) noexcept nogil
    ctypedef void (*fc_packfn)(const void* src, Py_ssize_t C, Py_ssize_t nb, Py_ssize_t cn, Py_ssize_t lo,
                               Py_ssize_t hi, Py_ssize_t np, void* dst, Py_ssize_t bs) noexcept nogil
    Py_ssize_t fc_dw_pixels(int isa) noexcept nogil
    fc_dwfn fc_dw_select(int isa, int dsize, int R, Py_ssize_t s, Py_ssize_t kw, Py_ssize_t dw) noexcept nogil
    fc_packfn fc_dw_packer(int isa, int dsize) noexcept nogil
    fc_edgefn fc_dw_edger(int isa, int dsize) noexcept nogil


def vector_offset(a):
    """How many bytes past a 64-byte boundary the data of contiguous array ``a`` starts (a
    cheaper read of its address than ``a.ctypes.data``)."""
    cdef Py_buffer view
    PyObject_GetBuffer(a, &view, PyBUF_ANY_CONTIGUOUS)
    cdef size_t r = <size_t>view.buf % 64
    PyBuffer_Release(&view)
    return r


# Pixel strides with this power of two (or a larger one) as a factor are never read directly.
cdef Py_ssize_t _DIRECT_CONFLICT_BYTES = 1024
# Whether tiles may read x directly at all, and shifted (for tests and measurements)
cdef bint _DIRECT_READS = True
cdef bint _SHIFTED_READS = True


cdef bint _direct_ok(Py_ssize_t C, Py_ssize_t itemsize) noexcept:
    # whole channel vectors, pixels not a multiple of 1 KiB apart (see depthwise)
    cdef Py_ssize_t pix = C * itemsize
    return C % (fc_vec_bytes(_isa) // itemsize) == 0 and (pix & -pix) < _DIRECT_CONFLICT_BYTES


cdef bint _shift_ok(Py_ssize_t C, Py_ssize_t itemsize, Py_ssize_t M, Py_ssize_t sw, Py_ssize_t OW,
                    Py_ssize_t group) noexcept:
    # unit W stride and no multiplier (a shifted vector's lanes are one flat run of pixels x
    # channels, in x and in y alike), a shifted run somewhere (it starts at a row's second tile
    # at the earliest), and jobs that have every channel block (its first vector writes the
    # last channels of the pixel before it)
    cdef Py_ssize_t vl = fc_vec_bytes(_isa) // itemsize
    return (_SHIFTED_READS and M == 1 and sw == 1 and OW > fc_dw_pixels(_isa)
            and group >= (C + vl - 1) // vl)


def shifted_reads(Py_ssize_t C, Py_ssize_t itemsize, Py_ssize_t M, Py_ssize_t sw, Py_ssize_t OW,
                  Py_ssize_t group):
    """Whether a depthwise call with these channels, element size, multiplier, W stride, output
    width and channel blocks per job (:func:`depthwise`'s ``group``) reads a misaligned x
    directly, its vectors shifted to aligned addresses: then y is best allocated as far into a
    vector as x (its stores are aligned too)."""
    return _DIRECT_READS and _direct_ok(C, itemsize) and _shift_ok(C, itemsize, M, sw, OW, group)


def set_direct_reads(direct=True, shifted=True):
    """Let the depthwise tiles inside the image read x itself (``direct``; aligned x only unless
    ``shifted``), or pack every input row.  Results are the same bits either way: for tests and
    measurements."""
    global _DIRECT_READS, _SHIFTED_READS
    _DIRECT_READS = direct
    _SHIFTED_READS = shifted


# ---------------------------------------------------------------- ISA level (isa, set_isa and
# block_channels are in _isa.pxi)

def tile_pixels():
    """Output pixels per row of a tile at the current level."""
    return fc_dw_pixels(_isa)


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


ctypedef struct Geometry:
    # input (N, D, H, W, C), output (N, OD, OH, OW, C * M), kernel (KD, KH, KW)
    Py_ssize_t N, D, H, W, C, M, OD, OH, OW, KD, KH, KW
    Py_ssize_t sd, sh, sw, dd, dh, dw, pd, ph, pw
    # channels padded to whole vectors (the weights' and bias's last axis), vector lanes,
    # tile pixels
    Py_ssize_t Cp, VL, P
    # a job's output rows (band), output columns (segment) and channel blocks (group), and
    # how many of each
    Py_ssize_t band, nband, seg, nseg, group, ngroup, nblk
    # input rows per kernel depth that a pair of output rows reads (ring slots per depth),
    # packed pixels per row buffer
    Py_ssize_t span, npk
    int act
    # whether tiles inside the input may read x itself (see depthwise), and how many lanes
    # their vectors start before a channel block (x's misalignment, see _dw_job)
    bint direct
    Py_ssize_t lsh
    # with lsh > 0: the weights and bias rotated by lsh lanes (wr, br), and the byte distance
    # from the weights to wr that the tiles add to their weight pointers
    const void* br
    Py_ssize_t wo
    fc_dwfn tile1, tile2
    fc_edgefn edge
    fc_packfn pack


cdef inline void _pack_range(const real* x, const Geometry* g, Py_ssize_t src, Py_ssize_t nb,
                             Py_ssize_t cl, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t a, Py_ssize_t b,
                             real* dst, Py_ssize_t rowlen) noexcept nogil:
    """Packs the pixels a <= i < b of a row buffer (``dst``, its blocks ``rowlen`` apart):
    pixel i is input pixel ``src / C + i`` (``src``: the element index of packed pixel 0's
    channel block in ``x``) for lo <= i < hi, zeros elsewhere."""
    cdef Py_ssize_t np_ = b - a
    cdef Py_ssize_t lo2 = min(max(lo - a, 0), np_)
    cdef Py_ssize_t hi2 = max(min(hi - a, np_), lo2)
    if np_ > 0:
        g.pack(x + src + (a + lo2) * g.C, g.C, nb, cl, lo2, hi2, np_, dst + a * g.VL, rowlen)


cdef void _dw_job(const real* x, const real* wt, const real* bias, real* y, const Geometry* g,
                  Py_ssize_t job, real* ring, const real* zero, real* tmp, fc_dwrow* rows,
                  Py_ssize_t* slot_ih, Py_ssize_t* ent) noexcept nogil:
    """One job.  ``ring`` has ``KD * span`` slots of ``group`` packed rows (one per channel
    block), ``zero`` is a row of zeros, ``tmp`` two tile rows, ``rows`` has ``KD * span``
    entries and ``ent`` two numbers for each (its slot, or -1 for a row of padding, and its
    input row) and
    ``slot_ih`` one tag per slot (what it holds: ``2 * ih`` the border pixels of input row
    ``ih``, ``2 * ih + 1`` the whole row)."""
    cdef Py_ssize_t VL = g.VL, P = g.P, C = g.C, M = g.M, Cp = g.Cp, Cout = g.C * g.M
    cdef Py_ssize_t t = job
    cdef Py_ssize_t gr = t % g.ngroup
    t = t // g.ngroup
    cdef Py_ssize_t sg = t % g.nseg
    t = t // g.nseg
    cdef Py_ssize_t bd = t % g.nband
    t = t // g.nband
    cdef Py_ssize_t od = t % g.OD, n = t // g.OD
    cdef Py_ssize_t b0 = gr * g.group, nb = min(g.group, g.nblk - b0)
    # channels of the job's last block (the others have VL)
    cdef Py_ssize_t cl = min(VL, C - (b0 + nb - 1) * VL)
    cdef Py_ssize_t owa = sg * g.seg, owb = min(owa + g.seg, g.OW)
    cdef Py_ssize_t ntile = (owb - owa + P - 1) // P
    cdef Py_ssize_t npk = (ntile * P - 1) * g.sw + (g.KW - 1) * g.dw + 1
    # packed pixel i is input column off + i; the input columns lie at lo <= i < hi
    cdef Py_ssize_t off = owa * g.sw - g.pw
    cdef Py_ssize_t lo = min(max(-off, 0), npk), hi = max(min(g.W - off, npk), lo)
    # tiles tl <= tile < tr read only real input columns (tile t reads packed pixels
    # t * P * sw .. t * P * sw + (P - 1) * sw + (KW - 1) * dw); where their input rows are
    # real too, and the job's channel blocks all full, they read x itself (``direct``)
    cdef Py_ssize_t reach = (P - 1) * g.sw + (g.KW - 1) * g.dw
    cdef Py_ssize_t tl = min((max(-off, 0) + P * g.sw - 1) // (P * g.sw), ntile)
    cdef Py_ssize_t q = g.W - 1 - off - reach
    cdef Py_ssize_t tr = max(min(q // (P * g.sw) + 1, ntile), tl) if q >= 0 else tl
    cdef Py_ssize_t nown = owb - owa, dend
    if g.lsh > 0:
        # Misaligned x (its vectors start lsh lanes into a 64-byte line; unit W stride, no
        # multiplier): a direct tile's vectors start lsh lanes early, at aligned addresses.  Each
        # covers the last lsh channels of the pixel before its first and the first VL - lsh of
        # its own, with the weights and bias rotated to match (the same value in the same lane
        # position of every tap, so every output gets the bits of the packed tiles).  That first
        # pixel before must be this job's and read only real input...
        tl = max(tl, 1)
        while tl < ntile and off + tl * P < 1:
            tl += 1
    cdef bint dok = g.direct and tr > tl
    # ...and the last lsh channels of the last direct pixel are left to one more vector (g.edge)
    dend = min(tr * P, nown)
    # the packed pixels the border tiles read: [0, pl) and [pr, npk)
    cdef Py_ssize_t pl = min(npk, (tl - 1) * P * g.sw + reach + 1) if tl > 0 else 0
    cdef Py_ssize_t pr = min(tr * P * g.sw, npk)
    cdef Py_ssize_t oha = bd * g.band, ohb = min(oha + g.band, g.OH)
    cdef Py_ssize_t rowlen = g.npk * VL, slotlen = g.group * g.npk * VL
    cdef Py_ssize_t oh, R, nr, kd, i_d, ih, ih0, span, s, k0, k1, t1, slot, m, ow, npx, src
    cdef Py_ssize_t b, c0, cn, p, c, r, col, ps, run, nrun, pos, end, lsh
    cdef Py_ssize_t runs[9]
    cdef bint vin, direct
    cdef real* yp
    cdef fc_dwfn kern
    for slot in range(g.KD * g.span):
        slot_ih[slot] = -1
    oh = oha
    while oh < ohb:
        R = 2 if oh + 1 < ohb else 1
        span = (R - 1) * g.sh + (g.KH - 1) * g.dh + 1
        ih0 = oh * g.sh - g.ph
        kern = g.tile2 if R == 2 else g.tile1
        # the input rows that the R output rows read, in order, as entries for the job's first
        # block and multiplier 0
        nr = 0
        vin = dok
        for kd in range(g.KD):
            i_d = od * g.sd - g.pd + kd * g.dd
            for s in range(span):
                k0 = s // g.dh if s % g.dh == 0 and s // g.dh < g.KH else -1
                t1 = s - g.sh
                k1 = t1 // g.dh if R == 2 and t1 >= 0 and t1 % g.dh == 0 and t1 // g.dh < g.KH else -1
                if k0 < 0 and k1 < 0:
                    continue
                ih = ih0 + s
                rows[nr].x = zero
                rows[nr].xd = NULL
                ent[2 * nr] = -1
                ent[2 * nr + 1] = ih
                if 0 <= i_d < g.D and 0 <= ih < g.H:
                    ent[2 * nr] = kd * g.span + ih % g.span
                    rows[nr].xd = x + (((n * g.D + i_d) * g.H + ih) * g.W) * C + b0 * VL
                    rows[nr].x = ring + ent[2 * nr] * slotlen
                else:
                    vin = False
                rows[nr].w0 = NULL
                rows[nr].w1 = NULL
                if k0 >= 0:
                    rows[nr].w0 = wt + ((kd * g.KH + k0) * g.KW * M) * Cp + b0 * VL
                if k1 >= 0:
                    rows[nr].w1 = wt + ((kd * g.KH + k1) * g.KW * M) * Cp + b0 * VL
                nr += 1
        # pack what the packed tiles read (on first use; all the job's channel blocks at once):
        # whole rows, or only the border pixels where the other tiles read x directly
        for r in range(nr):
            slot, ih = ent[2 * r], ent[2 * r + 1]
            if slot < 0:
                continue
            src = <const real*>rows[r].xd - x + off * C
            if not vin:
                if slot_ih[slot] != 2 * ih + 1:
                    _pack_range(x, g, src, nb, cl, lo, hi, 0, npk, ring + slot * slotlen, rowlen)
                    slot_ih[slot] = 2 * ih + 1
            elif (pl > 0 or pr < npk) and slot_ih[slot] != 2 * ih and slot_ih[slot] != 2 * ih + 1:
                _pack_range(x, g, src, nb, cl, lo, hi, 0, pl, ring + slot * slotlen, rowlen)
                _pack_range(x, g, src, nb, cl, lo, hi, pr, npk, ring + slot * slotlen, rowlen)
                slot_ih[slot] = 2 * ih
        # runs of tiles (first output column, end, direct): packed ones on the left, direct ones
        # inside and packed ones on the right where these rows are all real, else one packed run
        if vin:
            runs[0], runs[1], runs[2] = 0, tl * P, 0
            runs[3], runs[4], runs[5] = tl * P, dend, 1
            runs[6], runs[7], runs[8] = dend, nown, 0
            nrun = 3
        else:
            runs[0], runs[1], runs[2] = 0, nown, 0
            nrun = 1
        for b in range(nb):
            c0 = (b0 + b) * VL
            cn = cl if b == nb - 1 else VL
            if b > 0:
                # the next block: its rows and weights
                for r in range(nr):
                    if rows[r].x != zero:
                        rows[r].x = <const real*>rows[r].x + rowlen
                    if rows[r].xd != NULL:
                        rows[r].xd = <const real*>rows[r].xd + VL
                    if rows[r].w0 != NULL:
                        rows[r].w0 = <const real*>rows[r].w0 + VL
                    if rows[r].w1 != NULL:
                        rows[r].w1 = <const real*>rows[r].w1 + VL
            for m in range(M):
                if m > 0:
                    # the next multiplier's weights
                    for r in range(nr):
                        if rows[r].w0 != NULL:
                            rows[r].w0 = <const real*>rows[r].w0 + Cp
                        if rows[r].w1 != NULL:
                            rows[r].w1 = <const real*>rows[r].w1 + Cp
                for run in range(nrun):
                    direct = runs[3 * run + 2]
                    lsh = g.lsh if direct else 0
                    end = runs[3 * run + 1]
                    pos = runs[3 * run]
                    while pos < end:
                        ow = owa + pos
                        npx = min(P, end - pos)
                        yp = y + (((n * g.OD + od) * g.OH + oh) * g.OW + ow) * Cout + c0 * M + m
                        col = (off + pos * g.sw) * C - lsh if direct else pos * g.sw * VL
                        ps = C if direct else VL
                        if M == 1 and cn == VL:
                            # stored straight into y
                            kern(rows, nr, direct, col, ps, M * Cp, g.wo if lsh else 0,
                                 (<const real*>g.br if lsh else bias + m * Cp) + c0, g.act,
                                 yp - lsh, yp + g.OW * Cout - lsh, Cout, npx, g.sw, g.KW, g.dw)
                        else:
                            # into tmp, then the real channels to every M-th channel of y (never
                            # shifted: lsh > 0 only with M == 1 and whole blocks)
                            kern(rows, nr, direct, col, ps, M * Cp, 0, bias + m * Cp + c0, g.act,
                                 tmp, tmp + P * VL, VL, npx, g.sw, g.KW, g.dw)
                            for r in range(R):
                                for p in range(npx):
                                    for c in range(cn):
                                        yp[r * g.OW * Cout + p * Cout + c * M] = tmp[(r * P + p) * VL + c]
                        pos += npx
                    if lsh and b0 + b == 0:
                        yp = y + (((n * g.OD + od) * g.OH + oh) * g.OW + owa + end) * Cout - lsh
                        g.edge(rows, nr, (off + end) * C - lsh, C, Cp, g.wo, g.br, g.act, yp,
                               yp + g.OW * Cout, lsh, R, g.KW, g.dw)
            if M > 1:
                # back to multiplier 0 for the next block
                for r in range(nr):
                    if rows[r].w0 != NULL:
                        rows[r].w0 = <const real*>rows[r].w0 - (M - 1) * Cp
                    if rows[r].w1 != NULL:
                        rows[r].w1 = <const real*>rows[r].w1 - (M - 1) * Cp
        oh += R


cdef void _depthwise(const real* x, const real* wt, const real* bias, real* y, const Geometry* g,
                     int num_threads) noexcept nogil:
    cdef Py_ssize_t jobs = g.N * g.OD * g.nband * g.nseg * g.ngroup, job
    cdef Py_ssize_t nslot = g.KD * g.span, rowlen = g.npk * g.VL
    cdef void* buf = NULL
    cdef real* ring = NULL
    cdef real* zero = NULL
    cdef real* tmp = NULL
    cdef fc_dwrow* rows = NULL
    cdef Py_ssize_t* slot_ih = NULL
    cdef Py_ssize_t* ent = NULL
    with nogil, parallel(num_threads=num_threads):
        # per thread: the ring of packed rows, a row of zeros and two tile rows (64-byte
        # aligned, whole vectors), the row entries, slot tags and entry slots
        buf = NULL
        if posix_memalign(&buf, 64, ((nslot * g.group + 1) * rowlen + 2 * g.P * g.VL) * sizeof(real)
                          + nslot * (sizeof(fc_dwrow) + 3 * sizeof(Py_ssize_t))) == 0:
            ring = <real*>buf
            zero = ring + nslot * g.group * rowlen
            tmp = zero + rowlen
            rows = <fc_dwrow*>(tmp + 2 * g.P * g.VL)
            slot_ih = <Py_ssize_t*>(rows + nslot)
            ent = slot_ih + nslot
            memset(zero, 0, rowlen * sizeof(real))
            for job in prange(jobs, schedule="static"):
                _dw_job(x, wt, bias, y, g, job, ring, zero, tmp, rows, slot_ih, ent)
            free(buf)


def depthwise(const real[:, :, :, :, ::1] x, const real[:, :, ::1] wt, const real[:, ::1] bias,
              real[:, :, :, :, ::1] y, tuple strides, tuple dilation, tuple before, tuple ksize,
              int act, Py_ssize_t band, Py_ssize_t seg, Py_ssize_t group, int num_threads):
    """Depthwise convolution ``y[..., c * M + m] = act(sum_tap x[..., c] * w[tap, c, m] + b[c * M + m])``.

    Parameters
    ----------
    x : (N, D, H, W, C) array
    wt : (KD * KH * KW, M, Cp) array
        The kernel with its multiplier axis before the channels, the channels padded with
        zeros to ``Cp``, a whole number of channel blocks (:func:`block_channels`).
    bias : (M, Cp) array
        The bias in the same order (zeros for none).
    y : (N, OD, OH, OW, C * M) array
        The output, written in full.
    strides, dilation, before, ksize : 3-tuples
        Geometry; ``before`` is the zero padding before each axis.
    act : int
        A code from ``ACTIVATIONS``.
    band, seg, group : int
        Output rows, output columns and channel blocks per job (any split gives the same
        results).
    num_threads : int
    """
    cdef Geometry g
    cdef Py_ssize_t ntile
    g.N, g.D, g.H, g.W, g.C = x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    g.M = wt.shape[1]
    g.Cp = wt.shape[2]
    g.OD, g.OH, g.OW = y.shape[1], y.shape[2], y.shape[3]
    g.KD, g.KH, g.KW = ksize
    g.sd, g.sh, g.sw = strides
    g.dd, g.dh, g.dw = dilation
    g.pd, g.ph, g.pw = before
    g.act = act
    g.VL = fc_vec_bytes(_isa) // x.itemsize
    g.P = fc_dw_pixels(_isa)
    if g.Cp % g.VL or g.Cp < g.C or bias.shape[1] != g.Cp:
        raise ValueError("weights and bias must be padded to whole channel blocks")
    if y.shape[0] == 0 or y.shape[1] == 0 or y.shape[2] == 0 or y.shape[3] == 0 or y.shape[4] == 0:
        return
    g.band = max(1, band)
    g.nband = (g.OH + g.band - 1) // g.band
    g.seg = max(1, seg)
    g.nseg = (g.OW + g.seg - 1) // g.seg
    g.nblk = (g.C + g.VL - 1) // g.VL
    g.group = min(max(1, group), g.nblk)
    g.ngroup = (g.nblk + g.group - 1) // g.group
    g.span = g.sh + (g.KH - 1) * g.dh + 1
    ntile = (min(g.seg, g.OW) + g.P - 1) // g.P
    g.npk = (ntile * g.P - 1) * g.sw + (g.KW - 1) * g.dw + 1
    # Tiles whose inputs are all real read x itself, without packing, where x's channel blocks
    # are whole vectors and its pixels are not a multiple of 1 KiB apart (such pixels fall in
    # few of L1's 64 sets: a tile's 4 x 10 input vectors would evict each other; 1x38x38x256
    # float32 took 25% longer direct), and where their vectors are aligned: x itself is, or
    # (unit W stride, no depth multiplier) the tiles shift their vectors to aligned addresses
    # (_dw_job; the module docstring has the measurements).
    cdef size_t mis = <size_t>&x[0, 0, 0, 0, 0] % (g.VL * x.itemsize)
    g.direct = _DIRECT_READS and _direct_ok(g.C, x.itemsize)
    g.lsh = 0
    g.wo = 0
    g.br = NULL
    if g.direct and mis:
        g.direct = (mis % x.itemsize == 0 and g.Cp == g.C
                    and _shift_ok(g.C, x.itemsize, g.M, g.sw, g.OW, g.group))
        g.lsh = mis // x.itemsize if g.direct else 0
    g.tile1 = fc_dw_select(_isa, x.itemsize, 1, g.sw, g.KW, g.dw)
    g.tile2 = fc_dw_select(_isa, x.itemsize, 2, g.sw, g.KW, g.dw)
    g.pack = fc_dw_packer(_isa, x.itemsize)
    g.edge = fc_dw_edger(_isa, x.itemsize)
    cdef real* wr = NULL
    cdef const real* src
    cdef Py_ssize_t t, taps = wt.shape[0]
    if g.lsh > 0:
        # the taps' weights, then the bias, rotated: lane j of a shifted block holds channel
        # j - lsh (mod C) (Cp == C here)
        wr = <real*>malloc((taps + 1) * g.C * sizeof(real))
        if wr == NULL:
            raise MemoryError()
        for t in range(taps + 1):
            src = &wt[t, 0, 0] if t < taps else &bias[0, 0]
            memcpy(wr + t * g.C, src + g.C - g.lsh, g.lsh * sizeof(real))
            memcpy(wr + t * g.C + g.lsh, src, (g.C - g.lsh) * sizeof(real))
        g.br = wr + taps * g.C
        g.wo = <Py_ssize_t>(<size_t>wr - <size_t>&wt[0, 0, 0])
    try:
        _depthwise(&x[0, 0, 0, 0, 0], &wt[0, 0, 0], &bias[0, 0], &y[0, 0, 0, 0, 0], &g, num_threads)
    finally:
        free(wr)


