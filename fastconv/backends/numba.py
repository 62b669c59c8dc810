"""The numba backend: parallel Numba kernels, with most dense work handed to BLAS.

How each op is computed (chosen by measurement on this 2-core machine, see README):

* dense convolutions are GEMMs: a 1x1 stride-1 convolution is one matrix product
  on the channels-last buffer, by register tiles of 6 pixels x 4 vectors of output
  channels (``matmul_tiles``; BLAS for filters not in whole tile blocks or an operand
  that is a channel slice, as a group's is); other stride-1 convolutions with >= 16 input channels
  run every kernel tap on shifted views of the input, by the same register tiles over
  all taps (``shifted_tiles``; one BLAS GEMM per tap for channel slices and filters not
  in whole tile blocks) (no im2col, no padded copy; the frame of border pixels is
  recomputed exactly); the rest
  pack L2-sized tiles of patches (implicit im2col, never the whole matrix) and
  multiply each tile, packing transposed when there are few input channels;
* grouped convolutions: per group as above when groups have >= 16 channels;
  square groups of 2, 4 or 8 channels in a direct SIMD kernel on rotated input
  vectors; groups of one channel as a depthwise convolution; else neighbouring
  groups are merged into block-diagonal dense convolutions;
* convolutions with < 8 input channels (RGB stems, volumes): a direct SIMD
  kernel vectorised along the output channels (GEMM's K would be too short);
* transposed convolutions: one stride-1 convolution per output phase, written
  into its strided slice of the output (no zero insertion, no scatter-add); small
  ones (per image) as one GEMM and a col2im per image, one image per task;
* separable convolutions (``separable_conv``): depthwise and pointwise fused, each
  task's block of output rows through the depthwise kernel into a buffer of at
  most ``_POINTWISE_BYTES`` with its output rows, and then one matrix product by register
  tiles (``matmul_tiles``), so the intermediate never goes through memory whole;
* depthwise (register-tiled SIMD kernel, with 3x3 stride-1 and stride-2 tiles of 8
  pixels sharing input loads; a depth multiplier M repeats each input channel M times first)
  and pooling: direct SIMD loops, one thread per output row, vectorised along
  channels; pools 3 wide at stride 1 along W reduce each input column once and
  slide three column results along the row (SIMD);
* global pooling: a SIMD reduction over chunks of positions (a number fixed by
  the image size), combined in chunk order, so results don't depend on threads.

:func:`algorithm` names the path each call takes: the dispatch and it share the
decision functions (``_conv_path``, ``_dense_path``, ``_depthwise_path``,
``_pool_path``).

The direct SIMD kernels use explicit machine vectors (``_numba_simd``): LLVM's
loop vectoriser leaves 32-channel loops scalar and keeps no register tiles.

Every op uses one thread pool: Numba's threads split the rows, and each computes
its own tile (register tiles, or BLAS on one thread, see ``_blas``), with bias and activation
applied to the tile while it is in cache.  The thread count follows
:func:`fastconv.set_num_threads`.
"""

import functools
import itertools
import math
import sys
import threading

import numba
# Numba's own reader of the current thread's count (``_get_num_threads``, without the checks
# of numba.get_num_threads) is a private name of this module that exists once the thread pool
# is launched (by the first set_num_threads); until then, and if a Numba lacks it, _threads
# sets the count on every call
import numba.np.ufunc.parallel as _numba_parallel
import numpy as np

from .._threads import get_num_threads
from . import _blas
from ._geometry import transpose_phases as _phases
from ._numba_simd import VEC_BYTES
from . import _numba_kernels as K

NAME = "numba"
OPS = frozenset({"conv", "depthwise_conv", "separable_conv", "conv_transpose", "max_pool", "avg_pool",
                 "global_max_pool", "global_avg_pool"})

# Grouped convolutions with at least this many input channels per group run as one
# GEMM convolution per group; below it neighbouring groups are merged into
# block-diagonal dense convolutions of about this width (measured: 32 groups of 4
# channels, 56x56, 3x3: 2.6 ms merged by 4 vs 8.4 ms in the direct loop), and the
# direct loop is left for group counts that don't merge evenly.
_GROUP_GEMM_MIN = 16
# Groups of this many input and output channels run in the direct rotation kernel.
_ROT_GROUPS = (2, 4, 8)


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


# Below this much work (multiply-adds, or elements touched) one thread does the op: a
# parallel loop costs a few microseconds to start while idle threads spin (fastconv._openmp;
# asleep, it was ~25 us and the threshold 1 << 22), more than it saves on less.  Measured
# with the spin: a 1x1 conv of 2.1 M multiply-adds 69 us on one thread, 49 us on two.
# The SIMD direct kernels do about 16 multiply-adds per nanosecond on one thread, so
# they go parallel from a smaller amount of work (~30 us of it).
_PARALLEL_MIN_WORK = 1 << 20
_DIRECT_PARALLEL_MIN_WORK = 1 << 19
# Pools read each element once (global) or a few times (windows): two threads pay from
# about this many element reads, now that idle threads spin briefly instead of sleeping
# (fastconv._openmp; measured 1x56x56x256 global average 64 -> 43 us, global max 92 -> 53 us,
# max pool 2x2 on 1x112x112x64 112 -> 70 us).  Under OMP_WAIT_POLICY=PASSIVE, waking the
# second thread cost more than it saved up to 3.2 M float32.
_POOL_PARALLEL_MIN = 1 << 18


def _threads(work, min_work=None):
    """Set Numba's thread count for an op doing ``work`` multiply-adds (or element reads)."""
    min_work = _PARALLEL_MIN_WORK if min_work is None else min_work
    n = max(1, min(get_num_threads() if work >= min_work else 1, numba.config.NUMBA_NUM_THREADS))
    # numba.set_num_threads costs ~1 us of argument checks; the count (per Python thread,
    # as Numba keeps it) is read first in ~0.1 us and set only when it differs
    reader = getattr(_numba_parallel, "_get_num_threads", None)
    if reader is None or reader() != n:
        numba.set_num_threads(n)



def _fused(b, activation, dtype, channels):
    has_bias = b is not None
    bias = b if has_bias else np.zeros(channels, dtype)
    return bias, has_bias, K.ACT_CODES[activation]


# Row budgets, in bytes, for the pieces of work one thread does at a time: a tile of
# packed patches (im2col) stays in the 512 KiB L2 next to the weights, and a chunk of
# output rows stays there while every kernel tap's GEMM accumulates into it.
_TILE_BYTES = 256 << 10
_CHUNK_BYTES = 256 << 10
# A 1x1 convolution's tasks (and the fused separable's) take rows of up to this many bytes
# (input and output rows).  Measured with BLAS per task, which packs the whole weight matrix
# again per call, so fewer, taller calls paid (2 threads, 1444x256 @ 256x256: 1.16 ms in
# tasks of 121 rows, 1.03 ms in tasks of 722); with the register tiles, the separable
# 38x38x256 took 1.02 ms at this budget, 1.05 at 1 MiB and 1.08-1.12 at 256-512 KiB.
_POINTWISE_BYTES = 2 << 20
# Shifted GEMM pays when the frame of pixels whose windows cross the border is
# small; above this share of border pixels the tiled im2col path is used.
_MAX_BORDER_SHARE = 0.25
# Below this many input channels a tap's GEMM is too thin (K = C): im2col then.
_SHIFT_MIN_CHANNELS = 16
# Below this many input channels, patches are packed transposed (im2col_t_conv).
_FEW_CHANNELS = 8


def _chunk(total, max_rows):
    """Rows per chunk: at most ``max_rows``, and enough chunks to keep every thread busy."""
    threads = numba.get_num_threads()
    n = max(threads, -(-total // max(1, max_rows)))
    n = -(-n // threads) * threads
    return max(1, -(-total // n))


def _blocks(rows, cols, max_rows):
    """(rows per task, columns per task): row blocks of at most ``max_rows``; when there are
    too few rows to give every thread ``_MIN_TASK_ROWS`` of them, the columns are split."""
    threads = numba.get_num_threads()
    if threads > 1 and rows < threads * _MIN_TASK_ROWS and cols >= 2 * _MIN_TASK_COLS:
        fchunk = max(_MIN_TASK_COLS, -(-cols // threads))
        fchunk = -(-fchunk // 16) * 16
        return min(rows, max(1, max_rows)), fchunk
    return _chunk(rows, max_rows), cols


# Fewer rows than this per thread, and the columns are split instead (weights are then
# read once); column blocks are at least this wide, in multiples of 16 (one AVX-512 register).
_MIN_TASK_ROWS = 128
_MIN_TASK_COLS = 32


def _scratch_tiles(shape, dtype):
    """One scratch tile per Numba thread (indexed by numba.get_thread_id())."""
    return _scratch((numba.config.NUMBA_NUM_THREADS,) + tuple(shape), dtype)


@functools.lru_cache(maxsize=256)
def _border_pixels(out_shape, in_shape, ksize, dilation, before, n):
    """Flat indices of output pixels (stride 1) whose window leaves the input (cached: a
    model calls the same geometry every time; the array is only ever read)."""
    masks = []
    for o, i, k, d, lo in zip(out_shape, in_shape, ksize, dilation, before):
        pos = np.arange(o)
        masks.append((pos < lo) | (pos - lo + (k - 1) * d >= i))
    bad = masks[0][:, None, None] | masks[1][None, :, None] | masks[2][None, None, :]
    idx = np.flatnonzero(bad)
    per_image = math.prod(out_shape)
    pixels = (idx[None, :] + per_image * np.arange(n)[:, None]).ravel()
    pixels.flags.writeable = False
    return pixels


def _border_count(n, in_shape, ksize, dilation, before, out_shape):
    """How many output pixels (stride 1) have a window that leaves the input: the
    size of :func:`_border_pixels`, counted without building it."""
    inner = 1
    for o, i, k, d, lo in zip(out_shape, in_shape, ksize, dilation, before):
        inner *= max(0, min(o, i + lo - (k - 1) * d) - min(o, lo))
    return n * (math.prod(out_shape) - inner)


def _tiles_fit(f, itemsize, *operands):
    """Whether the register tiles (``_numba_kernels.conv_tiles``) take a product with ``f``
    output channels and these matrix ``operands``: the channels must be whole blocks of 4
    vectors (the columns past the last block would go one vector and one pixel at a time,
    which made a 32-channel layer about 1.5x slower than BLAS: 3x1 then 1x3 on 112x112x32),
    and the operands C-contiguous (not a group's channel slice).  The shapes alone decide,
    never the thread count, so results do not depend on it."""
    return f % (4 * VEC_BYTES // itemsize) == 0 and all(a.flags.c_contiguous for a in operands)


def _dense_path(n, in_shape, c, ksize, strides, dilation, before, out_shape):
    """Which GEMM formulation a groups=1 convolution takes (see :data:`_PATHS`); shared
    by :func:`_conv_dense` and :func:`algorithm`."""
    ksize, strides, before, out_shape = tuple(ksize), tuple(strides), tuple(before), tuple(out_shape)
    if ksize == (1, 1, 1) and strides == (1, 1, 1) and not any(before) and out_shape == tuple(in_shape):
        return "pointwise_gemm"
    if strides == (1, 1, 1) and c >= _SHIFT_MIN_CHANNELS:
        border = _border_count(n, in_shape, ksize, dilation, before, out_shape)
        if border <= _MAX_BORDER_SHARE * n * math.prod(out_shape):
            return "shifted_gemm"
    if c < _FEW_CHANNELS:
        return "im2col_t"
    return "im2col"


def _conv_dense(x, w, y2, out_shape, strides, dilation, before, bias, has_bias, code):
    """A groups=1 convolution of ``x`` (N, D, H, W, C; may be a channel slice) into the
    (pixels, F) matrix ``y2`` (may be a column slice); picks the GEMM formulation."""
    n, D, H, W, c = x.shape
    kd, kh, kw, _, f = w.shape
    ksize = (kd, kh, kw)
    w2 = np.ascontiguousarray(w.reshape(-1, f))
    item = x.itemsize
    path = _dense_path(n, (D, H, W), c, ksize, strides, dilation, before, out_shape)
    if path == "pointwise_gemm":
        X = x.reshape(n * D * H * W, c)
        max_rows = _POINTWISE_BYTES // ((c + f) * item)
        if _tiles_fit(f, item, X, y2):
            # row blocks only: the tiles give every row the same result whatever the blocks
            K.tiles_rows(X, w2, y2, _chunk(X.shape[0], max_rows), bias, has_bias, code)
        else:
            rows, cols = _blocks(X.shape[0], f, max_rows)
            K.gemm_rows(X, w2, y2, rows, cols, bias, has_bias, code)
    elif path == "shifted_gemm":
        border = _border_pixels(tuple(out_shape), (D, H, W), tuple(ksize), tuple(dilation), tuple(before), n)
        _shifted_conv(x, w, y2, out_shape, dilation, before, border, bias, has_bias, code)
    elif path == "im2col_t":
        ow = out_shape[2]
        rows = max(1, min(y2.shape[0] // ow, _TILE_BYTES // (w2.shape[0] * ow * item)))
        rows = min(rows, _chunk(y2.shape[0] // ow, rows))
        scratch = _scratch_tiles((w2.shape[0], rows * ow), x.dtype)
        K.im2col_t_conv(x, w2, y2, tuple(out_shape), strides, dilation, before, ksize, rows, scratch,
                        bias, has_bias, code)
    else:
        tile, cols = _blocks(y2.shape[0], f, max(_MIN_TASK_ROWS, _TILE_BYTES // (w2.shape[0] * item)))
        scratch = _scratch_tiles((tile, w2.shape[0]), x.dtype)
        K.im2col_conv(x, w2, y2, tuple(out_shape), strides, dilation, before, ksize, tile, cols, scratch,
                      bias, has_bias, code)


def _shifted_conv(x, w, y2, out_shape, dilation, before, border, bias, has_bias, code):
    """Stride-1 convolution as every kernel tap on shifted views of the input.

    Output pixel ``q`` (indexed on the input's own grid) reads input pixel
    ``q + offset(tap)``, so ``Y[lo:hi] = sum_tap X[lo+off:hi+off] @ W[tap]`` over rows of
    the channels-last buffer (register tiles over all taps, or one BLAS GEMM per tap
    accumulating into ``Y``): no im2col and no padded copy.  Rows
    whose window wraps across an edge are the ``border`` pixels, recomputed
    exactly afterwards.
    """
    n, D, H, W, c = x.shape
    kd, kh, kw, _, f = w.shape
    X = x.reshape(n * D * H * W, c)  # a channel slice of a group stays a strided view
    same_grid = tuple(out_shape) == (D, H, W)
    Yv = y2 if same_grid else np.empty((X.shape[0], f), x.dtype)
    offsets = np.array([((a * dilation[0] - before[0]) * H + (b * dilation[1] - before[1])) * W
                        + (e * dilation[2] - before[2])
                        for a in range(kd) for b in range(kh) for e in range(kw)], np.int64)
    lo, hi = max(0, -int(offsets.min())), min(X.shape[0], X.shape[0] - int(offsets.max()))
    wt = np.ascontiguousarray(w.reshape(len(offsets), c, f))
    if hi > lo:
        max_rows = _CHUNK_BYTES // (f * x.itemsize)
        if _tiles_fit(f, x.itemsize, X, Yv):
            # register tiles over all taps (no BLAS call per tap and block, no accumulating
            # passes over the output), by row blocks only; otherwise one BLAS GEMM per tap
            K.shifted_tiles(X, wt, Yv, offsets, lo, hi, _chunk(hi - lo, max_rows), bias, has_bias, code)
        else:
            rows, cols = _blocks(hi - lo, f, max_rows)
            K.shifted_taps(X, wt, Yv, offsets, lo, hi, rows, cols, bias, has_bias, code)
    if not same_grid:
        y2[...] = Yv.reshape(n, D, H, W, f)[:, :out_shape[0], :out_shape[1], :out_shape[2]].reshape(-1, f)
    if border.size:
        K.pixels_conv(x, np.ascontiguousarray(w.reshape(-1, f)), y2, border, tuple(out_shape), (1, 1, 1),
                      dilation, before, (kd, kh, kw), _chunk(border.size, 256), bias, has_bias, code)


def _conv_path(w_shape, groups):
    """Which kernel a convolution with this kernel shape and group count takes (see
    :data:`_PATHS`); shared by :func:`conv` and :func:`algorithm`.  ``"dense"`` is a
    GEMM convolution whose formulation :func:`_dense_path` picks."""
    cg, f = w_shape[3], w_shape[4]
    fg = f // groups
    if groups == 1:
        # few input channels (an RGB stem, a volume): direct SIMD kernel along F
        return "few_channel_direct" if cg < _FEW_CHANNELS else "dense"
    if cg == fg == 1:
        return "grouped_depthwise"
    if cg == fg and cg in _ROT_GROUPS:
        return "grouped_rot"
    if cg >= _GROUP_GEMM_MIN:
        return "grouped_gemm"
    # Few channels per group: merge ``merge`` neighbouring groups into one dense
    # convolution with a block-diagonal kernel (``merge`` times the work, but GEMM-fast:
    # measured 6x faster than the direct loop for 32 groups of 4), else direct loops.
    merge = _group_merge(cg)
    if groups % merge or merge * cg > 4 * _GROUP_GEMM_MIN:
        return "grouped_direct"
    return "grouped_merged"


def _group_merge(cg):
    """How many neighbouring groups of ``cg`` channels are merged into one block-diagonal
    dense convolution."""
    return -(-_GROUP_GEMM_MIN // cg)


def conv(x, w, b, strides, dilation, pads, groups, out_shape, activation):
    n = x.shape[0]
    cg, f = w.shape[3], w.shape[4]
    before = tuple(p[0] for p in pads)
    y = np.empty((n,) + tuple(out_shape) + (f,), x.dtype)
    y2 = y.reshape(-1, f)
    bias, has_bias, code = _fused(b, activation, x.dtype, f)
    path = _conv_path(w.shape, groups)
    fg = f // groups
    if path == "few_channel_direct":
        _threads(n * math.prod(out_shape) * w.size, _DIRECT_PARALLEL_MIN_WORK)
        K.few_channel_conv(np.ascontiguousarray(x), np.ascontiguousarray(w.reshape(-1, f)), y, strides,
                           dilation, before, w.shape[:3], np.ascontiguousarray(bias), has_bias, code)
        return y
    if path == "grouped_depthwise":  # one channel per group: a depthwise convolution
        return depthwise_conv(x, w.reshape(w.shape[:3] + (f, 1)), b, strides, dilation, pads, out_shape,
                              activation)
    if path == "grouped_rot":
        # small square groups: direct SIMD kernel on rotated input vectors (see
        # K.grouped_rot), with the rotated weights prepared here
        _threads(n * math.prod(out_shape) * w.size, _DIRECT_PARALLEL_MIN_WORK)
        taps = math.prod(w.shape[:3])
        wg = w.reshape(taps, cg, f)
        j = (np.arange(f)[None, :] % cg + np.arange(cg)[:, None]) % cg  # (s, f) -> input channel in group
        wr = np.ascontiguousarray(wg[:, j, np.arange(f)[None, :]])
        K.grouped_rot(np.ascontiguousarray(x), wr, y, cg, strides, dilation, before, w.shape[:3],
                      np.ascontiguousarray(bias), has_bias, code)
        return y
    _threads(n * math.prod(out_shape) * w.size)
    if path == "grouped_direct":
        K.grouped_direct(x, w.reshape(-1, cg, f), y, strides, dilation, before, w.shape[:3], groups,
                         bias, has_bias, code)
        return y
    blocks = None
    if path == "grouped_merged":
        merge = _group_merge(cg)
        taps = w.shape[:3]
        blocks = np.zeros((groups // merge,) + taps + (merge * cg, merge * fg), x.dtype)
        wg = w.reshape(taps + (cg, groups // merge, merge, fg))
        for j in range(merge):
            blocks[..., j * cg:(j + 1) * cg, j * fg:(j + 1) * fg] = np.moveaxis(wg[..., j, :], -2, 0)
        w, cg, fg, groups = blocks, merge * cg, merge * fg, groups // merge
    with _blas.single_threaded():
        if path == "dense":
            _conv_dense(x, w, y2, out_shape, strides, dilation, before, bias, has_bias, code)
        else:
            for g in range(groups):
                wgrp = blocks[g] if blocks is not None else w[..., g * fg:(g + 1) * fg]
                _conv_dense(x[..., g * cg:(g + 1) * cg], wgrp, y2[:, g * fg:(g + 1) * fg], out_shape,
                            strides, dilation, before, bias[g * fg:(g + 1) * fg], has_bias, code)
    return y


def _transpose_phases(x_shape, w_shape, strides, dilation, pads_before, out_shape):
    """The output phases of a transposed convolution: ``(d, h, w)`` triples of
    :func:`_phases` entries, every combination of the three axes' phases."""
    axes = [_phases(x_shape[1 + a], w_shape[a], strides[a], dilation[a], pads_before[a], out_shape[a])
            for a in range(3)]
    return list(itertools.product(*axes))


def _phase_geometry(parts):
    """A phase's stride-1 convolution: (input elements cropped at the start of each axis,
    padding before, dilation, output counts)."""
    lo = [p[2] for p in parts]
    return (tuple(max(0, -v) for v in lo), tuple(max(0, v) for v in lo), tuple(p[1] for p in parts),
            tuple(p[4] for p in parts))


# A transposed convolution whose tap products per image (input pixels x taps x F) fit in
# this many bytes, and whose work per image is below _COL2IM_MAX_WORK multiply-adds, runs
# as one GEMM and a col2im per image, one image per task: by phases it would be several
# small parallel calls (measured 1x16x16x32->64, 3x3/2: 0.45 ms by phases, on one thread
# or two, 0.2 ms this way; PyTorch 0.2 ms).  Decided per image, so a batch and its
# sub-batches take the same path.
_COL2IM_BYTES = 2 << 20
_COL2IM_MAX_WORK = 1 << 23


def _transpose_path(x_shape, w_shape, itemsize):
    """``"transpose_col2im"`` or ``"transpose_phases"`` (see :data:`_PATHS`); shared by
    :func:`conv_transpose` and :func:`algorithm`."""
    cols = math.prod(x_shape[1:4]) * math.prod(w_shape[:3]) * w_shape[3]
    if cols * itemsize <= _COL2IM_BYTES and cols * w_shape[4] < _COL2IM_MAX_WORK:
        return "transpose_col2im"
    return "transpose_phases"


def conv_transpose(x, w, b, strides, dilation, pads_before, out_shape, activation):
    """Transposed convolution as prod(strides) stride-1 convolutions, one per output phase
    (see :func:`_phases`), each a dense GEMM convolution written into its strided slice of
    the output: no zero insertion, no scatter-add, and the same fast paths as ``conv``.
    Small ones: one GEMM and a col2im (:func:`_transpose_path`)."""
    n, c = x.shape[0], x.shape[-1]
    f = w.shape[3]
    y = np.empty((n,) + tuple(out_shape) + (f,), x.dtype)
    bias, has_bias, code = _fused(b, activation, x.dtype, f)
    if _transpose_path(x.shape, w.shape, x.itemsize) == "transpose_col2im":
        k = math.prod(w.shape[:3])
        _threads(x.size * w.size // c)
        w2 = np.ascontiguousarray(np.moveaxis(w.reshape(k, f, c), 2, 0)).reshape(c, k * f)
        scratch = _scratch_tiles((math.prod(x.shape[1:4]), k * f), x.dtype)
        with _blas.single_threaded():
            K.transpose_col2im(np.ascontiguousarray(x).reshape(-1, c), w2, y, x.shape[1:4], tuple(w.shape[:3]),
                               tuple(strides), tuple(dilation), tuple(pads_before), scratch,
                               np.ascontiguousarray(bias), has_bias, code)
        return y
    _threads(x.size * w.size // (x.shape[-1] * math.prod(strides)))  # the work of one phase
    wc = np.swapaxes(w, 3, 4)  # (k..., C, F): the forward convolution's layout
    covered = 0
    with _blas.single_threaded():
        for parts in _transpose_phases(x.shape, w.shape, strides, dilation, pads_before, out_shape):
            pd, ph, pw = parts
            sel = (slice(None),) + tuple(slice(o0, o0 + s * (cnt - 1) + 1, s)
                                         for (_, _, _, o0, cnt), s in zip(parts, strides))
            counts = tuple(p[4] for p in parts)
            covered += math.prod(counts)
            if not all(p[0] for p in parts):  # a phase no tap reaches: bias and activation alone
                y[sel] = 0
                if has_bias or code:
                    view = y[sel]
                    flat = view.reshape(-1, f)
                    K.epilogue(flat, bias, has_bias, code)
                    y[sel] = flat.reshape(view.shape)
                continue
            crop, before, dil, _ = _phase_geometry(parts)
            xs = x[(slice(None),) + tuple(slice(c0, None) for c0 in crop)]
            wp = np.ascontiguousarray(wc[np.ix_(pd[0], ph[0], pw[0])])
            yp = np.empty((n,) + counts + (f,), x.dtype)
            _conv_dense(np.ascontiguousarray(xs), wp, yp.reshape(-1, f), counts, (1, 1, 1), dil, before,
                        bias, has_bias, code)
            y[sel] = yp
    assert covered == math.prod(out_shape), "phases must tile the output"
    return y


def _depthwise_path(w_shape, strides, dilation):
    """Which kernel a depthwise convolution takes (see :data:`_PATHS`); shared by
    :func:`depthwise_conv` and :func:`algorithm`."""
    if w_shape[4] != 1:
        return "depthwise_multiplier"
    if tuple(w_shape[:3]) == (1, 3, 3) and strides[2] in (1, 2) and dilation[2] == 1:
        return "depthwise_3x3" if strides[2] == 1 else "depthwise_3x3_s2"
    return "depthwise_tiles"


def depthwise_conv(x, w, b, strides, dilation, pads, out_shape, activation):
    cm = w.shape[3] * w.shape[4]
    y = np.empty((x.shape[0],) + tuple(out_shape) + (cm,), x.dtype)
    bias, has_bias, code = _fused(b, activation, x.dtype, cm)
    before = tuple(p[0] for p in pads)
    if _depthwise_path(w.shape, strides, dilation) == "depthwise_multiplier":
        # output channel c * M + m reads input channel c: with each input channel repeated
        # M times it is a multiplier-1 depthwise convolution of C * M channels (the copy
        # costs far less than a kernel vectorised along so short a multiplier loop:
        # measured 1x56x56x32, M=2: 1.5 ms in the direct loop)
        x = np.repeat(x, w.shape[4], axis=-1)
    # register-tiled SIMD kernel (bias folded into the accumulators; the kernel itself
    # picks its 3x3 unit-stride tiles)
    _threads(x.shape[0] * math.prod(out_shape) * w.size, _DIRECT_PARALLEL_MIN_WORK)
    K.depthwise(np.ascontiguousarray(x), np.ascontiguousarray(w.reshape(-1, cm)), y, strides, dilation,
                before, w.shape[:3], np.ascontiguousarray(bias), has_bias, code)
    return y


def _separable_path(dk_shape, strides, dilation):
    """Whether a separable convolution runs fused (see :data:`_PATHS`); shared by
    :func:`separable_conv` and :func:`algorithm`."""
    if _depthwise_path(dk_shape, strides, dilation) == "depthwise_multiplier":
        return "separable_two_passes"
    return "separable_fused"


def separable_conv(x, dk, pk, b, strides, dilation, pads, out_shape, activation):
    """Depthwise (``dk``: KD, KH, KW, C, M) then pointwise (``pk``: 1, 1, 1, C * M, F)
    convolution, bias and activation after the pointwise one (Keras ``SeparableConv``)."""
    out_shape = tuple(out_shape)
    if _separable_path(dk.shape, strides, dilation) == "separable_two_passes":
        from . import separable_in_two
        return separable_in_two(sys.modules[__name__], x, dk, pk, b, strides, dilation, pads, out_shape,
                                activation)
    n, c, f = x.shape[0], x.shape[-1], pk.shape[-1]
    y = np.empty((n,) + out_shape + (f,), x.dtype)
    if y.size == 0:
        return y
    bias, has_bias, code = _fused(b, activation, x.dtype, f)
    od, oh, ow = out_shape
    _threads(n * math.prod(out_shape) * (dk.size + c * f))
    # tasks of whole output rows whose depthwise block and output stay within the
    # pointwise row budget (the 1x1 product is register-tiled, or BLAS on one thread when the
    # filters are not whole tile blocks)
    rows = n * od * oh
    task_rows = _chunk(rows, max(1, _POINTWISE_BYTES // (ow * (c + f) * x.itemsize)))
    scratch = _scratch_tiles((task_rows * ow * c,), x.dtype)
    with _blas.single_threaded():
        K.separable(np.ascontiguousarray(x), np.ascontiguousarray(dk.reshape(-1, c)),
                    np.ascontiguousarray(pk.reshape(c, f)), y.reshape(-1, f), od, oh, ow, task_rows, scratch,
                    tuple(strides), tuple(dilation), tuple(p[0] for p in pads), tuple(dk.shape[:3]),
                    np.ascontiguousarray(bias), has_bias, code, _tiles_fit(f, x.itemsize))
    return y


def _pool_path(pool, strides):
    """Which kernel a max or average pooling takes (see :data:`_PATHS`); shared by the
    pools and :func:`algorithm`."""
    return "pool_rows3" if pool[2] == 3 and strides[2] == 1 else "pool_simd"


def _pool(kind, x, pool, strides, pads, out_shape):
    _threads(x.shape[0] * math.prod(out_shape) * x.shape[-1] * math.prod(pool), _POOL_PARALLEL_MIN)
    y = np.empty((x.shape[0],) + tuple(out_shape) + (x.shape[-1],), x.dtype)
    before = tuple(p[0] for p in pads)
    if _pool_path(pool, strides) == "pool_rows3":
        kernel = K.max_pool_rows3 if kind == "max" else K.avg_pool_rows3
        kernel(np.ascontiguousarray(x), y, tuple(pool), tuple(strides), before)
    else:
        (K.max_pool if kind == "max" else K.avg_pool)(np.ascontiguousarray(x), y, tuple(pool), tuple(strides),
                                                      before)
    return y


def max_pool(x, pool, strides, pads, out_shape):
    return _pool("max", x, pool, strides, pads, out_shape)


def avg_pool(x, pool, strides, pads, out_shape):
    return _pool("avg", x, pool, strides, pads, out_shape)


def _global(x, is_max):
    n, c = x.shape[0], x.shape[-1]
    x3 = np.ascontiguousarray(x).reshape(n, -1, c)
    _threads(x.size, _POOL_PARALLEL_MIN)
    y = np.empty((n, c), x.dtype)
    part = _scratch((n, K.gp_chunks(x3.shape[1]), c), x.dtype)
    (K.global_max_pool if is_max else K.global_sum_pool)(x3, y, part)
    if not is_max:
        y /= y.dtype.type(x3.shape[1])  # the mean: sum / count, as NumPy's mean
    return y


def global_max_pool(x):
    return _global(x, True)


def global_avg_pool(x):
    return _global(x, False)


# How each path computes its op, for :func:`algorithm` (and fastconv.explain).
_PATHS = {
    "pointwise_gemm": "one matrix product on the channels-last buffer (1x1 stride-1), rows split "
                      "between threads: register tiles of 6 pixels x 4 channel vectors, or SciPy BLAS "
                      "(single-threaded per Numba thread; columns split when rows are few) where the "
                      "filters are not whole tile blocks or an operand is a channel slice (a group's)",
    "shifted_gemm": "every kernel tap on shifted views of the channels-last input, border pixels "
                    "recomputed directly: register tiles of 6 pixels x 4 channel vectors over all taps, "
                    "or one SciPy BLAS GEMM per tap (single-threaded per Numba thread) for a group's "
                    "channel slice, split columns or filters that are not whole tile blocks",
    "im2col": "L2-sized tiles of packed patches (implicit im2col), one GEMM per tile "
              "(SciPy BLAS, single-threaded per Numba thread)",
    "im2col_t": "L2-sized tiles of patches packed transposed (few input channels), one GEMM per tile "
                "(SciPy BLAS, single-threaded per Numba thread)",
    "few_channel_direct": "direct SIMD kernel vectorised along output channels (few input channels): "
                          "register tiles of 8 pixels x 1 or 4 pixels x 2 channel vectors",
    "grouped_rot": "direct SIMD kernel for square groups of {g} channels on in-group rotated input "
                   "vectors, 4 output pixels x one channel vector per tile",
    "grouped_direct": "direct per-pixel loops applying each group's small matrix (groups of {g} "
                      "channels that don't merge evenly)",
    "grouped_merged": "{m} neighbouring groups merged into block-diagonal dense convolutions, each: {dense}",
    "grouped_gemm": "one dense convolution per group of {g} channels, each: {dense}",
    "grouped_depthwise": "groups of one channel as a depthwise convolution: {dw}",
    "depthwise_3x3": "direct SIMD kernel, 2 output rows x 8 pixels x one channel vector per tile inside "
                     "the image (8 or 4 pixels of one row at its edges), loading each input vector once "
                     "for both rows and all its taps",
    "depthwise_3x3_s2": "direct SIMD kernel, 8 (or 4) output pixels x one channel vector per tile, the "
                        "3x3 stride-2 tile loading each input column once for its kernel row",
    "depthwise_tiles": "direct SIMD kernel, 4 output pixels x one channel vector per tile (generic "
                       "kernel, stride and dilation)",
    "depthwise_multiplier": "input channels repeated by the depth multiplier, then a multiplier-1 "
                            "direct SIMD kernel, 4 or 8 output pixels x one channel vector per tile",
    "transpose_col2im": "per image (one per task), one GEMM of every input pixel by every tap (SciPy "
                        "BLAS), then the tap rows added into the output pixels they reach (col2im)",
    "transpose_phases": "one stride-1 convolution per output phase ({phases} phases) written into its "
                        "strided slice of the output: {dense}",
    "separable_fused": "depthwise and pointwise fused: each task's block of output rows goes through "
                       "the depthwise SIMD kernel into a buffer (at most 2 MiB with its output rows), then one "
                       "matrix product by the pointwise kernel in register tiles of 6 pixels x 4 channel "
                       "vectors (one SciPy BLAS GEMM when the filters are not whole tile blocks), bias and "
                       "activation while the block is in cache",
    "separable_two_passes": "a depthwise convolution (input channels repeated by the depth multiplier), "
                            "then a 1x1 convolution: {pointwise}",
    "pool_simd": "direct SIMD kernel, one thread per output row, each pixel's channels as whole "
                 "vectors over the window's taps",
    "pool_rows3": "direct SIMD kernel for windows 3 wide at stride 1: each input column reduced down "
                  "the window once, three column results combined per output along the row",
    "global_chunks": "direct SIMD reduction over position chunks ({chunks} per image, 4 channel "
                     "vectors per pass), chunks combined in a fixed order",
}


def _dense_text(paths):
    """Text for the GEMM formulations of several dense convolutions (phases, groups)."""
    names = list(dict.fromkeys(paths))
    return " / ".join(_PATHS[p] for p in names)


def algorithm(op, *args):
    """How this backend computes kernel-contract ``op`` for exactly these arguments
    (for :func:`fastconv.explain`): the path the dispatch takes, in words.

    Parameters
    ----------
    op : str
        A kernel-contract operation (``"conv"``, ``"depthwise_conv"``, ...).
    *args
        Its contract arguments, as the backend's function of that name takes them.

    Returns
    -------
    str
        One line.
    """
    x = args[0]
    if op == "conv":
        _, w, _, strides, dilation, pads, groups, out_shape, _ = args
        path = _conv_path(w.shape, groups)
        cg, f = w.shape[3], w.shape[4]
        before = tuple(p[0] for p in pads)
        if path == "grouped_depthwise":
            return _PATHS[path].format(dw=_PATHS[_depthwise_path(w.shape[:3] + (f, 1), strides, dilation)])
        if path in ("dense", "grouped_gemm", "grouped_merged"):
            width = cg * (_group_merge(cg) if path == "grouped_merged" else 1)
            dense = _dense_path(x.shape[0], x.shape[1:4], width, w.shape[:3], strides, dilation, before,
                                out_shape)
            if path == "dense":
                return _PATHS[dense]
            return _PATHS[path].format(g=cg, m=_group_merge(cg), dense=_PATHS[dense])
        return _PATHS[path].format(g=cg)
    if op == "depthwise_conv":
        _, w, _, strides, dilation = args[:5]
        return _PATHS[_depthwise_path(w.shape, strides, dilation)]
    if op == "separable_conv":
        _, dk, pk, b, strides, dilation, _, out_shape, act = args
        path = _separable_path(dk.shape, strides, dilation)
        if path == "separable_fused":
            return _PATHS[path]
        # the 1x1 pass, described from the shape of the depthwise result (no data needed)
        mid = np.broadcast_to(np.zeros((), x.dtype), (x.shape[0],) + tuple(out_shape) + (pk.shape[3],))
        return _PATHS[path].format(pointwise=algorithm("conv", mid, pk, b, (1, 1, 1), (1, 1, 1), ((0, 0),) * 3, 1,
                                                       tuple(out_shape), act))
    if op == "conv_transpose":
        _, w, _, strides, dilation, pads_before, out_shape, _ = args
        if _transpose_path(x.shape, w.shape, x.itemsize) == "transpose_col2im":
            return _PATHS["transpose_col2im"]
        c = x.shape[-1]
        phases = _transpose_phases(x.shape, w.shape, strides, dilation, pads_before, out_shape)
        dense = []
        for parts in phases:
            if not all(p[0] for p in parts):
                continue
            crop, before, dil, counts = _phase_geometry(parts)
            in_shape = tuple(max(0, x.shape[1 + a] - crop[a]) for a in range(3))
            dense.append(_dense_path(x.shape[0], in_shape, c, tuple(len(p[0]) for p in parts), (1, 1, 1),
                                     dil, before, counts))
        return _PATHS["transpose_phases"].format(phases=len(phases), dense=_dense_text(dense) or "bias only")
    if op in ("max_pool", "avg_pool"):
        return _PATHS[_pool_path(args[1], args[2])]
    if op in ("global_max_pool", "global_avg_pool"):
        return _PATHS["global_chunks"].format(chunks=K.gp_chunks(math.prod(x.shape[1:4])))
    raise ValueError(f"unknown kernel-contract op {op!r}")
