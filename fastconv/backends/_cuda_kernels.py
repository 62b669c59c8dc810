"""numba.cuda kernels for the cuda backend, built per dtype (and per tile shape).

Every kernel works on the kernel contract's 3-D channels-last arrays
(:mod:`fastconv.backends.reference`).  Kernels are made by factories closed
over the element type ``T`` (``numba.float32`` or ``numba.float64``), so that
constants such as ``T(0.5)`` keep float32 kernels in float32 arithmetic (a bare
Python float would promote every expression to float64, which runs at a small
fraction of the speed on most GPUs), and over tile sizes, which must be
compile-time constants for shared and local arrays.

* ``conv_gemm``: the dense convolutions (standard, grouped, pointwise and
  transposed) as an implicit GEMM, ``Y[pixels, filters] = A[pixels, taps x
  channels] @ W[taps x channels, filters]``, never materialising ``A``: one
  thread block computes a ``BM x BN`` output tile, stepping through ``K`` in
  slices of ``BK`` that the block gathers into shared memory (zeros where a
  tap falls in the padding); each thread keeps an ``RM x RN`` register tile.
  Transposed convolutions use the same kernel with the gather form of the
  adjoint: output pixel ``o`` takes input pixel ``i = (o + pad - t * d) / s``
  for each tap ``t`` where that division is exact, so no atomics are needed.
  Bias and activation are applied to the register tile before it is stored.
* ``depthwise``, ``max_pool``, ``avg_pool``: direct, one thread per output
  element (grid-stride loops), channels innermost so a warp reads contiguous
  memory.
* ``global_max``, ``global_avg``: one block per (image, 32 channels), the
  block's rows splitting the spatial positions, then a shared-memory reduction.
* ``copy5``, ``bias_act``, ``affine_act``, ``binary``, ``softmax_rows``:
  layout changes, casts and the elementwise layers the model engine needs.

Every elementwise Keras activation is a device function here (:func:`_make_activate`),
so every name in :data:`fastconv.activations.ELEMENTWISE` is fused into the kernel
that produces the values.
"""

import functools
import math

import numba

try:
    # A module global (not imported inside the factories): the CUDA simulator swaps the
    # global named ``cuda`` of each kernel function for its fake module.
    from numba import cuda
except ImportError:  # no CUDA target: the backend is unavailable and nothing here is built
    cuda = None

# Activation codes (the canonical names of fastconv.activations; 0 is linear).
ACT_CODES = {None: 0, "relu": 1, "relu6": 2, "leaky_relu": 3, "elu": 4, "selu": 5, "celu": 6,
             "gelu": 7, "sigmoid": 8, "hard_sigmoid": 9, "silu": 10, "hard_silu": 11, "tanh": 12,
             "hard_tanh": 13, "tanh_shrink": 14, "softplus": 15, "softsign": 16, "exponential": 17,
             "mish": 18, "log_sigmoid": 19, "squareplus": 20, "sparse_plus": 21, "soft_shrink": 22,
             "hard_shrink": 23}
ACT_CODES.update(swish=ACT_CODES["silu"], hard_swish=ACT_CODES["hard_silu"])

# Binary elementwise operations of the merge layers.
BINARY_CODES = {"add": 0, "subtract": 1, "multiply": 2, "maximum": 3, "minimum": 4}

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_SQRT1_2 = 0.70710678118654752440

_NUMBA_TYPES = {"float32": numba.float32, "float64": numba.float64}


def _make_activate(T):
    """The device function ``activate(v, code)`` in element type ``T``."""
    zero, one, two, three, four, six = T(0), T(1), T(2), T(3), T(4), T(6)
    half, slope = T(0.5), T(0.2)
    alpha, scale, sqrt1_2 = T(_SELU_ALPHA), T(_SELU_SCALE), T(_SQRT1_2)

    @cuda.jit(device=True)
    def softplus(v):
        # log(1 + e^v) without overflow: max(v, 0) + log1p(e^-|v|)
        return (v if v > zero else zero) + math.log1p(math.exp(-abs(v)))

    @cuda.jit(device=True)
    def sigmoid(v):
        if v >= zero:
            return one / (one + math.exp(-v))
        e = math.exp(v)
        return e / (one + e)

    @cuda.jit(device=True)
    def hard_sigmoid(v):
        t = v + three
        return (zero if t < zero else (six if t > six else t)) / six

    @cuda.jit(device=True)
    def activate(v, code):
        # Comparisons are written so that NaN passes through, as NumPy's do.
        if code == 0:
            r = v
        elif code == 1:
            r = zero if v < zero else v
        elif code == 2:
            r = zero if v < zero else (six if v > six else v)
        elif code == 3:
            r = v if v >= zero else slope * v
        elif code == 4 or code == 6:  # elu and celu with alpha = 1 are the same function
            r = v if v > zero else math.expm1(v)
        elif code == 5:
            r = scale * (v if v > zero else alpha * math.expm1(v))
        elif code == 7:
            r = half * v * math.erfc(-v * sqrt1_2)  # no cancellation for large negative v
        elif code == 8:
            r = sigmoid(v)
        elif code == 9:
            r = hard_sigmoid(v)
        elif code == 10:
            r = v * sigmoid(v)
        elif code == 11:
            r = v * hard_sigmoid(v)
        elif code == 12:
            r = math.tanh(v)
        elif code == 13:
            r = -one if v < -one else (one if v > one else v)
        elif code == 14:
            r = v - math.tanh(v)
        elif code == 15:
            r = softplus(v)
        elif code == 16:
            r = v / (one + abs(v))
        elif code == 17:
            r = math.exp(v)
        elif code == 18:
            r = v * math.tanh(softplus(v))
        elif code == 19:
            r = -softplus(-v)
        elif code == 20:
            r = (v + math.sqrt(v * v + four)) / two
        elif code == 21:
            r = zero if v <= -one else (v if v >= one else (v + one) * (v + one) / four)
        elif code == 22:
            r = v - half if v > half else (v + half if v < -half else zero)
        elif code == 23:
            r = v if abs(v) > half else zero
        else:
            r = v
        return T(r)

    return activate


@functools.lru_cache(maxsize=None)
def elementwise(dtype_name):
    """The direct and elementwise kernels for one dtype ("float32" or "float64").

    Returns a dict of kernels; each is launched with a grid-stride loop, so any
    launch configuration is correct (see ``fastconv.backends.cuda._launch``).
    """
    T = _NUMBA_TYPES[dtype_name]
    activate = _make_activate(T)
    zero = T(0)
    ninf = T(-math.inf)

    @cuda.jit
    def depthwise(x, w, b, has_bias, code, y, sd, sh, sw, dd, dh, dw, pd, ph, pw):
        # y (N, OD, OH, OW, C * M); output channel c * M + m reads input channel c.
        n_, D, H, W, C = x.shape
        KD, KH, KW, _, M = w.shape
        _, OD, OH, OW, CM = y.shape
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, y.size, step):
            oc = e % CM
            r = e // CM
            ow = r % OW
            r //= OW
            oh = r % OH
            r //= OH
            od = r % OD
            n = r // OD
            c = oc // M
            m = oc % M
            acc = zero
            for td in range(KD):
                i_d = od * sd + td * dd - pd
                if 0 <= i_d < D:
                    for th in range(KH):
                        i_h = oh * sh + th * dh - ph
                        if 0 <= i_h < H:
                            for tw in range(KW):
                                i_w = ow * sw + tw * dw - pw
                                if 0 <= i_w < W:
                                    acc += x[n, i_d, i_h, i_w, c] * w[td, th, tw, c, m]
            if has_bias:
                acc += b[oc]
            y[n, od, oh, ow, oc] = activate(acc, code)

    @cuda.jit
    def pool(x, y, kind, kd, kh, kw, sd, sh, sw, pd, ph, pw):
        # kind 0: max (padding never wins; NaN propagates); 1: mean over real elements.
        n_, D, H, W, C = x.shape
        _, OD, OH, OW, _ = y.shape
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, y.size, step):
            c = e % C
            r = e // C
            ow = r % OW
            r //= OW
            oh = r % OH
            r //= OH
            od = r % OD
            n = r // OD
            d0, h0, w0 = od * sd - pd, oh * sh - ph, ow * sw - pw
            # the window clipped to the input (no min/max: Numba's built-in CUDA target
            # cannot compile those builtins)
            d1, h1, w1 = d0 + kd, h0 + kh, w0 + kw
            d1, h1, w1 = d1 if d1 < D else D, h1 if h1 < H else H, w1 if w1 < W else W
            d0, h0, w0 = d0 if d0 > 0 else 0, h0 if h0 > 0 else 0, w0 if w0 > 0 else 0
            acc = ninf if kind == 0 else zero
            for i_d in range(d0, d1):
                for i_h in range(h0, h1):
                    for i_w in range(w0, w1):
                        v = x[n, i_d, i_h, i_w, c]
                        if kind == 0:
                            if v > acc or v != v:
                                acc = v
                        else:
                            acc += v
            if kind == 1:
                acc /= T((d1 - d0) * (h1 - h0) * (w1 - w0))
            y[n, od, oh, ow, c] = acc

    @cuda.jit
    def copy5(src, dst):
        # dst[...] = src[...] for two 5-D arrays of any strides (and dtypes): layout changes.
        A, B, C, D, E = dst.shape
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, dst.size, step):
            i4 = e % E
            r = e // E
            i3 = r % D
            r //= D
            i2 = r % C
            r //= C
            i1 = r % B
            i0 = r // B
            dst[i0, i1, i2, i3, i4] = src[i0, i1, i2, i3, i4]

    @cuda.jit
    def fill(y, value):
        # y[...] = value for a contiguous 1-D view
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, y.size, step):
            y[e] = value

    @cuda.jit
    def bias_act(x, b, has_bias, code, y):
        # y[r, c] = activate(x[r, c] + b[c]) on (rows, channels) views; y may be x.
        C = x.shape[1]
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, x.size, step):
            r, c = e // C, e % C
            v = x[r, c]
            if has_bias:
                v += b[c]
            y[r, c] = activate(v, code)

    @cuda.jit
    def affine_act(x, s, b, code, y):
        # y[r, c] = activate(x[r, c] * s[c] + b[c]): inference BatchNormalization and the like.
        C = x.shape[1]
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, x.size, step):
            r, c = e // C, e % C
            y[r, c] = activate(x[r, c] * s[c] + b[c], code)

    @cuda.jit
    def binary(a, b, op, y):
        # y = a (op) b on flat arrays of one length.
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, y.size, step):
            u, v = a[e], b[e]
            if op == 0:
                r = u + v
            elif op == 1:
                r = u - v
            elif op == 2:
                r = u * v
            elif op == 3:
                r = u if (u > v or u != u) else v
            else:
                r = u if (u < v or u != u) else v
            y[e] = r

    @cuda.jit
    def softmax_rows(x, y, log):
        # Softmax (log == 0) or log-softmax (log == 1) of each row of (rows, L), stably.
        rows, L = x.shape
        start, step = cuda.grid(1), cuda.gridsize(1)
        for r in range(start, rows, step):
            m = ninf
            for j in range(L):
                v = x[r, j]
                if v > m or v != v:
                    m = v
            s = zero
            for j in range(L):
                s += math.exp(x[r, j] - m)
            if log:
                ls = math.log(s)
                for j in range(L):
                    y[r, j] = x[r, j] - m - ls
            else:
                for j in range(L):
                    y[r, j] = math.exp(x[r, j] - m) / s

    return dict(depthwise=depthwise, pool=pool, copy5=copy5, fill=fill, bias_act=bias_act,
                affine_act=affine_act, binary=binary, softmax_rows=softmax_rows)


@functools.lru_cache(maxsize=None)
def global_pool(dtype_name, CX, SY):
    """Global max/mean over the spatial positions of (N, S, C) into (N, C).

    Launch with grid ``(N, ceil(C / CX))`` and ``CX * SY`` threads: thread
    ``(cx, sy)`` of a block reduces channel ``cx`` over every ``SY``-th position
    (consecutive threads read consecutive channels), then row 0 combines the
    ``SY`` partial results from shared memory.  Means accumulate in float64.
    """
    T = _NUMBA_TYPES[dtype_name]
    ninf = T(-math.inf)

    @cuda.jit
    def gpool(x, y, kind):
        part = cuda.shared.array((SY, CX), numba.float64)
        tid = cuda.threadIdx.x
        cx, sy = tid % CX, tid // CX
        n = cuda.blockIdx.x
        c = cuda.blockIdx.y * CX + cx
        S, C = x.shape[1], x.shape[2]
        if kind == 0:
            m = ninf
            if c < C:
                for s in range(sy, S, SY):
                    v = x[n, s, c]
                    if v > m or v != v:
                        m = v
            part[sy, cx] = m
        else:
            acc = 0.0
            if c < C:
                for s in range(sy, S, SY):
                    acc += x[n, s, c]
            part[sy, cx] = acc
        cuda.syncthreads()
        if sy == 0 and c < C:
            if kind == 0:
                m = T(part[0, cx])
                for j in range(1, SY):
                    v = T(part[j, cx])
                    if v > m or v != v:
                        m = v
                y[n, c] = m
            else:
                acc = 0.0
                for j in range(SY):
                    acc += part[j, cx]
                y[n, c] = T(acc / S)

    return gpool


@functools.lru_cache(maxsize=None)
def conv_gemm(dtype_name, BM, BN, BK, RM, RN):
    """The tiled implicit-GEMM convolution kernel for one dtype and tile shape.

    Tile: a block of ``(BM // RM) * (BN // RN)`` threads computes ``BM`` output
    pixels x ``BN`` filters of one group; thread ``(tx, ty)`` owns pixels
    ``ty + i * TY`` and filters ``tx + j * TX`` of the tile (strided, so that
    neighbouring threads store neighbouring filters: coalesced writes, and
    conflict-free shared-memory reads).  Launch with grid
    ``(ceil(M / BM), ceil(Fg / BN), groups)``.

    Arguments: ``x`` (N, D, H, W, C); ``w2`` (KD * KH * KW * Cg, F): the Keras
    kernel with its taps and input channels flattened into rows (for
    transposed convolutions the (F, C) axes swapped first); ``y2`` (M, F), the
    output (N, OD, OH, OW, F) with its pixels flattened; ``b`` (F,) (ignored
    unless ``has_bias``); kernel size, strides, dilation, padding before;
    ``cg``/``fg`` channels and filters per group; ``transposed`` 1 for the
    adjoint (gather) form.

    Returns ``(kernel, threads_per_block)``.
    """
    T = _NUMBA_TYPES[dtype_name]
    TX, TY = BN // RN, BM // RM
    NT = TX * TY
    # A-tile loads: thread ``tid`` always loads column ``tid % BK`` (one k, i.e. one tap
    # and channel, per K step) of rows ``tid // BK + r * MSTEP``, r < LA.  So the
    # division-heavy decoding of output pixels is done once per thread before the K loop
    # and that of k once per K step (64-bit division is slow on GPUs).
    assert NT % BK == 0 and BM % (NT // BK) == 0, "tile shape"
    MSTEP = NT // BK
    LA = BM // MSTEP
    # A-tile rows padded by 2: a warp stores 16 k-rows x 2 pixels of it, and with rows a
    # multiple of 32 words long all 16 k-rows would fall in one shared-memory bank.
    BM_PAD = BM + 2
    activate = _make_activate(T)
    zero = T(0)

    @cuda.jit
    def kernel(x, w2, b, has_bias, code, y2, OD, OH, OW, KD, KH, KW,
               sd, sh, sw, dd, dh, dw, pd, ph, pw, cg, fg, transposed):
        As = cuda.shared.array((BK, BM_PAD), T)
        Bs = cuda.shared.array((BK, BN), T)
        acc = cuda.local.array((RM, RN), T)
        # per A row this thread loads: image (-1: past the end) and window origin per axis
        pn = cuda.local.array(LA, numba.int64)
        p_d = cuda.local.array(LA, numba.int64)
        p_h = cuda.local.array(LA, numba.int64)
        p_w = cuda.local.array(LA, numba.int64)
        tid = cuda.threadIdx.x
        tx, ty = tid % TX, tid // TX
        m0 = cuda.blockIdx.x * BM
        f0 = cuda.blockIdx.y * BN  # within the group
        g = cuda.blockIdx.z
        D, H, W = x.shape[1], x.shape[2], x.shape[3]
        M = y2.shape[0]
        K = KD * KH * KW * cg
        kk = tid % BK
        for r in range(LA):
            m = m0 + tid // BK + r * MSTEP
            pn[r] = -1
            if m < M:
                ow = m % OW
                q = m // OW
                oh = q % OH
                q //= OH
                od = q % OD
                pn[r] = q // OD
                if transposed:  # input pixel i = (o + pad - t * d) / s where that is exact
                    p_d[r], p_h[r], p_w[r] = od + pd, oh + ph, ow + pw
                else:           # input pixel i = o * s - pad + t * d
                    p_d[r], p_h[r], p_w[r] = od * sd - pd, oh * sh - ph, ow * sw - pw
        for i in range(RM):
            for j in range(RN):
                acc[i, j] = zero
        for k0 in range(0, K, BK):
            # A tile; consecutive threads read consecutive k: consecutive input channels of
            # one tap, contiguous in x.
            k = k0 + kk
            c = k % cg
            t = k // cg
            tw = t % KW
            t //= KW
            th = t % KH
            td = t // KH
            ch = g * cg + c
            for r in range(LA):
                v = zero
                n = pn[r]
                if n >= 0 and k < K:
                    if transposed:
                        qd, qh, qw = p_d[r] - td * dd, p_h[r] - th * dh, p_w[r] - tw * dw
                        if qd >= 0 and qh >= 0 and qw >= 0 and qd % sd == 0 and qh % sh == 0 \
                                and qw % sw == 0:
                            i_d, i_h, i_w = qd // sd, qh // sh, qw // sw
                            if i_d < D and i_h < H and i_w < W:
                                v = x[n, i_d, i_h, i_w, ch]
                    else:
                        i_d, i_h, i_w = p_d[r] + td * dd, p_h[r] + th * dh, p_w[r] + tw * dw
                        if 0 <= i_d < D and 0 <= i_h < H and 0 <= i_w < W:
                            v = x[n, i_d, i_h, i_w, ch]
                As[kk, tid // BK + r * MSTEP] = v
            # B tile: consecutive threads take consecutive filters (contiguous in w2).
            for e in range(tid, BK * BN, NT):
                nn = e % BN
                kb = k0 + e // BN
                f = f0 + nn
                Bs[e // BN, nn] = w2[kb, g * fg + f] if (kb < K and f < fg) else zero
            cuda.syncthreads()
            for q in range(BK):
                for i in range(RM):
                    a = As[q, ty + i * TY]
                    for j in range(RN):
                        acc[i, j] += a * Bs[q, tx + j * TX]
            cuda.syncthreads()
        for i in range(RM):
            m = m0 + ty + i * TY
            if m < M:
                for j in range(RN):
                    f = f0 + tx + j * TX
                    if f < fg:
                        v = acc[i, j]
                        if has_bias:
                            v += b[g * fg + f]
                        y2[m, g * fg + f] = activate(v, code)

    return kernel, NT
