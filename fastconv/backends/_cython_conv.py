"""Cython backend, convolutions: ``conv`` and ``conv_transpose``.

How a convolution is computed (:func:`choose_algorithm` makes the choice, the
kernels are in ``_cython/conv.pyx``):

* ``"direct_tiled"``: while the weights stay in L2 (K * Cg <= 2048 rows of a
  64-channel block, i.e. every 3x3 layer up to 227 input channels, every 1x1 up
  to 2048), a direct kernel written with 64-byte vector types keeps 6 output
  pixels x 64 output channels in 24 registers and runs over taps x input
  channels straight from the channels-last input (no packing).  Measured on the
  2-core Zen 4 machine it runs at ~110 GFLOP/s per core in isolation against
  ~80 for SciPy's OpenBLAS sgemm (which then also needs the patches packed), so
  it is preferred to the GEMM paths wherever it fits;
* ``"direct_grouped"``: grouped convolutions whose weights fit likewise, by the same
  direct engine (:func:`_blocks` describes its column blocks): a block of one vector
  of output channels (16 floats / 8 doubles) lying in one group broadcasts that group's
  inputs as above; a block spanning several groups (few output channels per group,
  e.g. ResNeXt's 4) loads the one or two input vectors that hold all its groups'
  inputs, in place, and permutes them so that each lane gets its own group's input
  ``c`` (one AVX-512 ``vpermps`` per input vector and ``c``, shared by the taps of a
  3-tap kernel row that read the same column at strides 1 and 2), times the Keras
  kernel's row ``(tap, c)``, which already holds every output channel's weight for its
  own group's input ``c``; then every block runs this way, pixel tile by pixel tile.
  Without AVX-512 (permutations emulated) such layers go to ``"im2col_gemm"``;
* ``"direct_few_channels"``: the same direct kernel, 8 pixels x 16 channels per
  micro-tile, for inputs with few channels (RGB stems, 3-D volumes with one
  channel), where a GEMM would be too thin to pay;
* ``"gemm_1x1"``: a 1x1, stride-1, unpadded convolution whose weights do not fit
  is a GEMM (SciPy's ``cython_blas``) straight on the channels-last buffer,
  (N * pixels, C) x (C, F), by row tiles;
* ``"im2col_gemm"``: otherwise (and for the other grouped convolutions) the patches of
  one tile of output pixels at a time are packed into a per-thread buffer
  (implicit im2col, never the whole matrix) and multiplied by the kernel through
  BLAS: in Keras's layout (KD, KH, KW, Cg, F) it already *is* the (K * Cg, F)
  matrix, and grouped convolutions run one GEMM per group on the same packed tile
  with strided operands, nothing copied apart;
* ``"fft"``: large kernels whose FFT costs less than the direct sum
  (see :func:`choose_algorithm`), in SciPy's FFT.

A transposed convolution is split into its ``prod(strides)`` output phases,
each a stride-1 convolution with a subset of the taps (see :func:`_phases`); all
phases run in one parallel loop of the engines above, each writing its strided
slice of the output (no zero insertion, no scatter-add).

Threads: one OpenMP ``prange`` over tasks per call, with
``num_threads = fastconv.get_num_threads()``; BLAS runs single-threaded inside it
(:func:`fastconv.backends._blas.single_threaded`), so nothing is oversubscribed.
Results depend neither on the thread count nor on the batch: tasks are laid out within
images (the GEMM engine splits each image's pixels into the same tiles whatever N; the
direct engine's runs start at fixed columns of an output row and tasks end at run
boundaries), so each output pixel always goes through the same code, in the same order.
Bias and activation are applied to each task's output block while it is in
cache; the direct kernels, where they store straight into the output (no padded
channels), start their accumulators from the bias and clamp ReLU / ReLU6 as they
store; activations outside ``ACT_CODES`` (none at present) would be applied to
the whole output afterwards with :func:`fastconv.activations.apply`.

Everything that depends on the shapes only (algorithm, job and task arrays, column
blocks, buffer sizes, which kernel taps each transposed phase takes) is planned once
per geometry and cached (:func:`_conv_plan`, :func:`_transpose_plan`): a call lays
out its weights (a view of the Keras kernel when nothing needs padding), allocates
its output and runs the engine, which keeps the Python overhead of a call near 10 us.
"""

import functools
import itertools
import math
import threading

import numpy as np
import scipy.fft

from .. import activations
from .._threads import get_num_threads
from . import _blas
from ._geometry import transpose_phases as _phases
from ._cython import conv as _k

OPS = frozenset({"conv", "conv_transpose"})

#: Activations the kernels apply in their epilogue, by code (see ``_act`` in conv.pyx).
ACT_CODES = {None: 0, "linear": 0, "relu": 1, "relu6": 2, "leaky_relu": 3, "elu": 4, "selu": 5,
             "celu": 6, "gelu": 7, "sigmoid": 8, "hard_sigmoid": 9, "silu": 10, "swish": 10,
             "hard_silu": 11, "hard_swish": 11, "tanh": 12, "hard_tanh": 13, "tanh_shrink": 14,
             "softplus": 15, "softsign": 16, "exponential": 17, "mish": 18, "log_sigmoid": 19,
             "squareplus": 20, "sparse_plus": 21, "soft_shrink": 22, "hard_shrink": 23}

# ---------------------------------------------------------------- tuning constants
# Packed patches per GEMM tile: half of a 512 KiB L2 per core, leaving the other half
# for the block of weights BLAS packs and for the tile's output rows, so that the
# tile is still in L2 when BLAS reads it back and the epilogue runs on it.
_TILE_BYTES = 256 << 10
# Rows per GEMM tile are kept within [_MIN_ROWS, _MAX_ROWS]: below ~64 rows BLAS's
# repacking of the weights per call starts to cost (it is 1/rows of the multiply-adds),
# and very wide layers would otherwise get single-row tiles.
_MIN_ROWS = 64
_MAX_ROWS = 2048
# At least this many tasks per call when there are enough rows (>= 32 each), so that
# every thread of a small machine gets work; the split depends on the problem only,
# never on the thread count, so results do not depend on the number of threads.
_MIN_TASKS = 8
# Direct-kernel tasks hold about this many multiply-adds (enough to amortise scheduling,
# small enough to balance threads).
_DIRECT_TASK_MACS = 1 << 20
# The direct kernel gathers a run of output pixels (of one output row) in a per-thread buffer
# of about this size, which stays in L1/L2 until the epilogue moves it to the output.
_RUN_BYTES = 64 << 10
# Below this many multiply-adds an op runs on one thread: waking OpenMP's pool and
# switching BLAS costs more than it saves.
_PARALLEL_MIN_MACS = 1 << 21
# Fewer input channels per group than this (and groups == 1): the direct kernel.
_FEW_CHANNELS = 8
# The direct kernel's micro-tile sweeps one 4-vector column block of the weights,
# (K * Cg) rows of 256 bytes, once per 6 output pixels: it is used while that block stays
# in a 512 KiB L2 (GEMM through BLAS, which blocks K itself, takes over above).
_DIRECT_WEIGHT_BYTES = 512 << 10

_local = threading.local()


def _scratch(rows, cols, dtype, slot=0):
    """A reusable (rows, cols) scratch array for the calling Python thread: large fresh
    allocations cost page faults on first touch, so packing buffers are kept."""
    size = rows * cols
    key = (np.dtype(dtype).str, slot)
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(max(size, 1), dtype)
    return buf[:size].reshape(rows, cols)


def _threads(macs):
    return get_num_threads() if macs >= _PARALLEL_MIN_MACS else 1


def _epilogue(b, activation, dtype, f):
    """(bias array, has_bias, activation code, activation left for afterwards)."""
    code = ACT_CODES.get(activation, -1)
    rest = activation if code < 0 else None
    bias = b if b is not None else np.zeros(1, dtype)
    return bias, b is not None, max(code, 0), rest


# ---------------------------------------------------------------- algorithm choice

# Speeds for the FFT cost model, measured on the 2-core Zen 4 dev machine (one thread):
# the GEMM and direct engines run at ~35 GMAC/s on useful lanes (the direct kernel pads the
# output channels to whole 64-byte vectors), scipy.fft at ~2.5 GFLOP/s on large real
# transforms (5 N log2 N flops per complex point), and the frequency-domain channel
# contraction (NumPy broadcasting over large complex arrays, memory-bound) at ~0.4 G
# complex MAC/s.  Only their ratios matter.
_RATE_GEMM = 35e9
_RATE_FFT = 2.5e9
_RATE_CMAC = 0.4e9


def _fft_cost(x_shape, w_shape, strides, dilation, pads, out_shape, groups):
    """Estimated seconds (one thread) of the FFT algorithm; see :func:`choose_algorithm`."""
    n, c = x_shape[0], x_shape[-1]
    cg, f = w_shape[3], w_shape[4]
    keff = [(k - 1) * d + 1 for k, d in zip(w_shape[:3], dilation)]
    size = [max(i + lo + hi, (o - 1) * s + k) for i, (lo, hi), o, s, k in zip(x_shape[1:4], pads, out_shape, strides, keff)]
    p = math.prod(size)
    half = p // size[-1] * (size[-1] // 2 + 1)
    transforms = n * c + n * f + cg * f          # input, output and kernel transforms
    fft_flops = 2.5 * transforms * p * math.log2(max(p, 2))
    return fft_flops / _RATE_FFT + n * half * cg * f / _RATE_CMAC


def _direct_cost(x_shape, w_shape, out_shape, groups):
    """Estimated seconds (one thread) of the non-FFT algorithms; see :func:`choose_algorithm`."""
    cg, f = w_shape[3], w_shape[4]
    lanes = f
    if groups == 1 and cg < _FEW_CHANNELS:  # the direct kernel computes whole vectors of channels
        vl = 64 // 4
        lanes = -(-f // vl) * vl
    return x_shape[0] * math.prod(out_shape) * math.prod(w_shape[:3]) * cg * lanes / _RATE_GEMM


def choose_algorithm(x_shape, w_shape, strides=(1, 1, 1), dilation=(1, 1, 1), groups=1, pads=None,
                     out_shape=None, dtype=None):
    """The algorithm the Cython backend uses for a convolution (kernel-contract shapes).

    Parameters
    ----------
    x_shape : tuple of int
        (N, D, H, W, C), the contract's 3-D channels-last input shape.
    w_shape : tuple of int
        (KD, KH, KW, C // groups, F), the Keras kernel layout.
    strides, dilation : tuple of 3 int
    groups : int
    pads : tuple of 3 (before, after), optional
        Zero padding; default none ("valid").
    out_shape : tuple of 3 int, optional
        Output sizes; default the "valid" output of ``pads``.
    dtype : numpy dtype, optional
        float32 (default) or float64: the direct kernels' vectors hold 16 or 8 channels,
        which decides whether a grouped convolution's blocks fit ``"direct_grouped"``.

    Returns
    -------
    str
        ``"direct_tiled"``, ``"direct_grouped"``, ``"direct_few_channels"``, ``"gemm_1x1"``,
        ``"im2col_gemm"`` or ``"fft"`` (see the module's docstring and :func:`describe`).

    Notes
    -----
    The FFT cost model (seconds on one thread)::

        direct = N * prod(out) * prod(k) * Cg * F' / R_gemm
        fft    = 2.5 * (N*C + N*F + Cg*F) * P * log2(P) / R_fft + N * P/2 * Cg * F / R_cmac

    where ``F'`` is ``F`` rounded up to whole 16-lane vectors for the direct kernel (``F``
    for GEMM), ``P`` the number of points of the (stride-1) FFT grid, the padded input;
    the first FFT term counts the input, output and kernel transforms, the second the
    per-frequency channel contraction; the rates are the constants ``_RATE_*`` above.
    A stride makes the FFT compute every stride-1 output and subsample: that is in the
    model, since ``direct`` counts only the strided outputs.  FFT is chosen only for
    kernels spanning at least 7 points on some axis and when ``fft < 0.75 * direct``
    (a margin for the model's roughness).  With the kernel transforms costing
    ``Cg * F`` full-grid FFTs, FFT wins on long kernels with few channels (signals),
    not on CNN layers with many.

    Examples
    --------
    >>> choose_algorithm((1, 1, 56, 56, 64), (1, 3, 3, 64, 64), pads=((0, 0), (1, 1), (1, 1)))
    'direct_tiled'
    >>> choose_algorithm((1, 1, 7, 7, 4096), (1, 1, 1, 4096, 1024))
    'gemm_1x1'
    >>> choose_algorithm((1, 1, 14, 14, 512), (1, 3, 3, 512, 512), pads=((0, 0), (1, 1), (1, 1)))
    'im2col_gemm'
    >>> choose_algorithm((1, 1, 56, 56, 128), (1, 3, 3, 4, 128), groups=32,
    ...                  pads=((0, 0), (1, 1), (1, 1))) in ("direct_grouped", "im2col_gemm")
    True
    >>> choose_algorithm((1, 1, 224, 224, 3), (1, 3, 3, 3, 32), strides=(1, 2, 2))
    'direct_few_channels'
    >>> choose_algorithm((1, 1, 1, 16000, 1), (1, 1, 255, 1, 1), pads=((0, 0), (0, 0), (127, 127)))
    'fft'
    """
    strides, dilation = tuple(strides), tuple(dilation)
    pads = tuple(tuple(p) for p in pads) if pads is not None else ((0, 0),) * 3
    ksize = tuple(w_shape[:3])
    keff = [(k - 1) * d + 1 for k, d in zip(ksize, dilation)]
    if out_shape is None:
        out_shape = tuple(max(0, (i + lo + hi - k) // s + 1)
                          for i, (lo, hi), k, s in zip(x_shape[1:4], pads, keff, strides))
    cg, f = w_shape[3], w_shape[4]
    fits = _direct_fits(math.prod(ksize) * cg) and (groups == 1 or _grouped_ok(cg * groups, f, groups, dtype))
    if ksize == (1, 1, 1) and strides == (1, 1, 1) and not any(lo or hi for lo, hi in pads) \
            and tuple(out_shape) == tuple(x_shape[1:4]) and not fits:
        return "gemm_1x1"
    if max(keff) >= 7:
        direct = _direct_cost(x_shape, w_shape, out_shape, groups)
        if _fft_cost(x_shape, w_shape, strides, dilation, pads, out_shape, groups) < 0.75 * direct:
            return "fft"
    if groups == 1 and cg < _FEW_CHANNELS:
        return "direct_few_channels"
    if fits:
        return "direct_tiled" if groups == 1 else "direct_grouped"
    return "im2col_gemm"


@functools.lru_cache(maxsize=256)
def _blocks_cached(c, f, groups, dtype):
    return _blocks(c, f, groups, dtype)


def _blocks(c, f, groups, dtype):
    """How the direct engine runs the output channels of a convolution, by vector blocks.

    Returns
    -------
    (blk, idx, ns) or None
        ``blk`` (Fp / VL, 3) intp rows (input channel where the block's inputs start;
        kind 0 broadcast (one group) / 1 permute; starts a one-group 4-vector block), see
        "Column blocks" in conv.pyx; ``idx`` (Fp / VL, Cg, VL) int32 (float32) or int64
        (float64) index vectors of the permuting blocks into their ``ns`` consecutive
        input vectors (see ``FC_GRP`` in conv.pyx).  As soon as one block spans several
        groups, every block permutes (the engine then runs all blocks per pixel tile).
        None if some block needs more than two input vectors, or the input has fewer
        channels than the vectors read (a load must not run past a pixel's channels).
    """
    item = np.dtype(dtype or np.float32).itemsize
    vl = _k.VECTOR_SIZE // item
    cg, fg = c // groups, f // groups
    nb = -(-f // vl)
    blk = np.zeros((nb, 3), np.intp)
    spans = []
    for b in range(nb):
        lanes = np.arange(b * vl, min((b + 1) * vl, f))
        g = lanes // fg
        if g[0] == g[-1]:
            blk[b, :2] = g[0] * cg, 0
        else:
            blk[b, :2] = g[0] * cg, 1
            spans.append((g[-1] + 1 - g[0]) * cg)
    idx = np.zeros((nb, max(cg, 1), vl), np.int32 if item == 4 else np.int64)
    ns = 1
    if spans:
        # the engine then runs every block with the permuting kernels (pixel tile by pixel
        # tile, see conv.pyx): a one-group block's permutation broadcasts each input
        blk[:, 1] = 1
        spans.append(cg)
        ns = 1 if max(spans) <= vl else 2
        if max(spans) > 2 * vl or c < ns * vl:
            return None
        for b in range(nb):
            lanes = np.arange(b * vl, (b + 1) * vl)
            g = np.minimum(lanes, f - 1) // fg   # padded lanes read any valid channel
            base = min(blk[b, 0], c - ns * vl)  # the ns vectors end inside the pixel
            blk[b, 0] = base
            idx[b] = g[None, :] * cg + np.arange(cg)[:, None] - base
    for b in range(nb - 3):
        blk[b, 2] = not blk[b:b + 4, 1].any() and (blk[b:b + 4, 0] == blk[b, 0]).all()
    return blk, idx, ns


def _grouped_ok(c, f, groups, dtype):
    """Whether the direct engine runs this grouped convolution: every column block within
    one group, or spanning groups whose inputs lie in at most two vectors (the
    permutations need AVX-512 to pay)."""
    blocks = _blocks_cached(c, f, groups, np.dtype(dtype or np.float32).str)
    return blocks is not None and (_k.HAS_AVX512 or not blocks[0][:, 1].any())


_DESCRIPTIONS = {
    "direct_tiled": "direct register-tiled kernel (6 pixels x 64 channels, or 8 x 16, of accumulators), "
                    "read straight from the channels-last input (border pixels from small zero-padded "
                    "strips), no im2col packing",
    "direct_grouped": "direct grouped kernel: vectors of output channels spanning several groups, each "
                      "lane's group inputs permuted into place from the input read in place",
    "direct_few_channels": "direct kernel for few input channels (8 pixels x 16 channels per tile), "
                           "where a GEMM would be too thin",
    "gemm_1x1": "1x1 convolution as one GEMM (SciPy BLAS) on the channels-last input rows",
    "im2col_gemm": "implicit im2col: patches of a tile of output pixels packed per thread, times the "
                   "kernel through SciPy BLAS (one GEMM per group)",
    "fft": "FFT convolution (SciPy real FFT over the spatial axes, in float64)",
}


def describe(name):
    """A one-line description of an algorithm name :func:`choose_algorithm` returns.

    Parameters
    ----------
    name : str
        One of ``"direct_tiled"``, ``"direct_grouped"``, ``"direct_few_channels"``,
        ``"gemm_1x1"``, ``"im2col_gemm"``, ``"fft"``.

    Returns
    -------
    str

    Raises
    ------
    KeyError
        For any other name.

    Examples
    --------
    >>> describe("gemm_1x1")
    '1x1 convolution as one GEMM (SciPy BLAS) on the channels-last input rows'
    """
    try:
        return _DESCRIPTIONS[name]
    except KeyError:
        raise KeyError(f"unknown Cython convolution algorithm {name!r}; known: "
                       f"{', '.join(sorted(_DESCRIPTIONS))}") from None


def _direct_fits(rows):
    """Whether the weight block a direct micro-kernel sweeps (``rows`` = K * Cg rows of one
    4-vector, 256-byte column block) stays in L2."""
    return rows * 4 * _k.VECTOR_SIZE <= _DIRECT_WEIGHT_BYTES


# ---------------------------------------------------------------- jobs and tasks

def _job(o, pads, strides, dilation, ksize, y0, ystep, woff, mode, inplace):
    return list(o) + list(pads) + list(strides) + list(dilation) + list(ksize) + list(y0) + list(ystep) \
        + [woff, mode, int(inplace)]


def _split(total, per_task, min_rows=32):
    """Split ``total`` rows into near-equal tasks of about ``per_task`` rows, at least
    ``_MIN_TASKS`` of them when each still gets ``min_rows``: [(start, count), ...]."""
    n = max(1, -(-total // max(1, per_task)))
    n = max(n, min(_MIN_TASKS, total // min_rows))
    size = -(-total // n)
    return [(s, min(size, total - s)) for s in range(0, total, size)]


def _gemm_tasks(jobs, n, c, f, groups, item):
    """Tasks (job, m0, mt, f0, f1) for the GEMM engine, and the scratch length per thread.

    Each image's output pixels are split into the same tiles whatever the batch size ``n``
    (a tile never holds pixels of two images): an image's rows then always go through the
    same BLAS calls, whose results (blocking, kernels for the edges of the matrix) depend on
    the call's shape, so that an image's result does not depend on the rest of the batch."""
    tasks, need = [], 1
    cg = c // groups
    for j, job in enumerate(jobs):
        pixels = math.prod(job[0:3])
        if n * pixels == 0:
            continue
        k = math.prod(job[12:15])
        mode, inplace = job[22], job[23]
        per_row = (c + f) if mode == _k.MODE_ROWS else (k * c + (0 if inplace else f))
        per = min(_MAX_ROWS, max(_MIN_ROWS, _TILE_BYTES // (per_row * item)))
        tiles = _split(pixels, per)
        for i in range(n):
            tasks += [(j, i * pixels + m0, mt, 0, f) for m0, mt in tiles]
        mt = max(mt for _, mt in tiles)
        need = max(need, (0 if mode == _k.MODE_ROWS else mt * k * cg * groups) + (0 if inplace else mt * f))
    return np.array(tasks, np.intp).reshape(-1, 5), need


def _packed_size(job, run_max, width, c, vl):
    """Elements of the direct engine's per-thread copy of a border strip's zero-padded input
    columns (``_direct_task`` in conv.pyx) for ``job`` on an input ``width`` wide with ``c``
    channels: 0 if no output column has a window crossing the left or right border.  A strip
    is at most a whole run wide; one vector more is a safety margin (strips serve only
    broadcasting blocks, which read no channel past the pixel's)."""
    ow, pw, sw, dw, kd, kh, kw = job[2], job[5], job[8], job[11], job[12], job[13], job[14]
    last = width - 1 + pw - (kw - 1) * dw           # the last inside column is last // sw
    if pw <= 0 and last >= 0 and last // sw + 1 >= ow:
        return 0
    strip = min(run_max, ow)
    return kd * kh * ((strip - 1) * sw + (kw - 1) * dw + 1) * c + vl


def _direct_tasks(jobs, n, cg, f, run_max):
    """Tasks (job, m0, mt, f0, f1) for the direct engine.

    The engine computes an output row by *runs* of at most ``run_max`` pixels that start at
    fixed columns (multiples of ``run_max``), and how a run's pixels are tiled (interior
    micro-tiles; border pixels in zero-padded strips through the same tiles, or one at a
    time for grouped and transposed layers) depends on the run alone; task boundaries are
    put at run boundaries, so that every pixel is computed by the same code, in the same
    order, whatever the batch size and the split of the work."""
    tasks = []
    for j, job in enumerate(jobs):
        ow = job[2]
        rows = n * math.prod(job[0:3])
        if rows == 0:
            continue
        per = max(16, _DIRECT_TASK_MACS // max(1, math.prod(job[12:15]) * cg * f))
        bounds = {0, rows}
        for m0, _ in _split(rows, per, 16):
            r, col = divmod(m0, ow)     # snapped to the nearest run boundary (or row end)
            bounds.add(r * ow + min(ow, (col + run_max // 2) // run_max * run_max))
        bounds = sorted(bounds)
        tasks += [(j, a, b - a, 0, f) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return np.array(tasks, np.intp).reshape(-1, 5)


class _Plan:
    """Everything about a call that depends on the shapes only (cached per geometry by
    :func:`_conv_plan` and :func:`_transpose_plan`): the engine, its job and task arrays,
    buffer sizes, and how to lay out the weights.  A call then only lays out its weights,
    allocates its output and runs the engine."""

    __slots__ = ("algo", "engine", "jobs", "tasks", "macs", "y_shape", "f", "fp", "rows", "taps",
                 "cg", "groups", "blk", "idx", "ns", "tile_outer", "run_max", "kmax", "need", "packed", "flat")

    def __init__(self):
        self.taps = self.blk = self.idx = self.flat = None

    def weights(self, w):
        """The jobs' weight matrices, stacked (``rows`` x F, F padded to ``fp`` for the direct
        engine), from the Keras kernel ``w``: a view of it where nothing moves."""
        if self.taps is None:                       # forward: the kernel reshaped is the matrix
            wm = np.ascontiguousarray(w).reshape(-1, self.f)
        else:                                       # transposed: each phase's taps, (K, C, F)
            kd, kh, kw, f, c = w.shape
            wm = np.ascontiguousarray(np.swapaxes(w.reshape(kd * kh * kw, f, c)[self.taps], 1, 2)).reshape(-1, f)
        if self.engine == "gemm":
            return wm.reshape(-1) if wm.size else np.zeros(1, w.dtype)
        if self.fp == self.f and wm.shape[0]:
            return wm
        wpad = np.zeros((max(1, self.rows), self.fp), w.dtype)
        wpad[:self.rows, :self.f] = wm
        return wpad


def _finish_plan(plan, jobs, wrows, n, c, f, groups, dtype, width, strips=True):
    """Fill in the engine-dependent parts of ``plan`` for ``jobs`` whose weight matrices have
    ``wrows`` rows each (stacked in that order); ``width`` is the input's width (W).  Without
    ``strips`` (transposed convolutions) the direct engine computes pixels whose window crosses
    a border one at a time over their real taps: the reference scatters each input pixel's
    products and never multiplies padding, so with an inf weight no padded tap may add 0 * w."""
    item = np.dtype(dtype).itemsize
    plan.f, plan.groups, plan.cg = f, groups, c // groups
    offs = np.cumsum([0] + list(wrows))
    plan.rows = int(offs[-1])
    if plan.engine == "direct":
        vl = _k.VECTOR_SIZE // item
        plan.fp = fp = -(-f // vl) * vl
        for job, o in zip(jobs, offs):
            job[21] = int(o) * fp
        plan.blk, idx, plan.ns = _blocks(c, f, groups, dtype)
        cap = _RUN_BYTES // (fp * item)
        if plan.blk[::4, 2].all() and fp % (4 * vl) == 0:
            cap = cap // 6 * 6      # 4-vector blocks only: whole 6-pixel tiles in a long row's runs
        plan.run_max = max(8, min(max(job[2] for job in jobs), cap))
        plan.tasks = _direct_tasks(jobs, n, c // groups, f, plan.run_max)
        plan.kmax = max([math.prod(job[12:15]) for job in jobs] + [1])
        plan.idx = idx.reshape(-1).view(np.uint8)
        plan.tile_outer = bool(plan.blk[:, 1].any())
        # grouped (permuting) layers compute border pixels one at a time (measured faster there),
        # and so do transposed ones (see above): no strips
        plan.packed = 0 if plan.tile_outer or not strips else \
            max(_packed_size(job, plan.run_max, width, c, vl) for job in jobs)
    else:
        plan.fp = f
        for job, o in zip(jobs, offs):
            job[21] = int(o) * f
        plan.tasks, plan.need = _gemm_tasks(jobs, n, c, f, groups, item)
    plan.jobs = np.array(jobs, np.intp).reshape(-1, _k.JOB_FIELDS)
    for a in (plan.jobs, plan.tasks, plan.blk, plan.idx, plan.taps):
        if a is not None:
            a.setflags(write=False)   # shared by every call of this geometry
    return plan


def _run(plan, x, wm, y, b, activation):
    """Run a planned call: ``wm`` from :meth:`_Plan.weights`."""
    bias, has_bias, code, rest = _epilogue(b, activation, x.dtype, plan.f)
    threads = _threads(plan.macs)
    if plan.engine == "direct":
        scratch = _scratch(threads, plan.run_max * plan.fp, x.dtype)
        iscratch = _scratch(threads, 7 * plan.kmax, np.intp, slot=1)
        pscratch = _scratch(threads, plan.packed, x.dtype, slot=2)
        _k.direct_conv(x, wm, y, plan.jobs, plan.tasks, scratch, plan.run_max, iscratch, bias, has_bias, code,
                       threads, plan.cg, plan.blk, plan.idx, plan.ns, plan.tile_outer, pscratch)
    else:
        scratch = _scratch(threads, plan.need, x.dtype)
        with _blas.single_threaded():
            _k.gemm_conv(x, wm, y, plan.jobs, plan.tasks, scratch, bias, has_bias, code, plan.groups, threads)
    if rest is not None:
        y = activations.apply(rest, y)
    return y


# ---------------------------------------------------------------- conv

@functools.lru_cache(maxsize=256)
def _conv_plan(x_shape, w_shape, strides, dilation, pads, groups, out_shape, dtype):
    plan = _Plan()
    plan.algo = choose_algorithm(x_shape, w_shape, strides, dilation, groups, pads, out_shape, dtype)
    if plan.algo == "fft":
        return plan
    n, c, f = x_shape[0], x_shape[-1], w_shape[-1]
    plan.y_shape = (n,) + out_shape + (f,)
    plan.macs = n * math.prod(out_shape) * math.prod(w_shape)
    plan.engine = "direct" if plan.algo.startswith("direct") else "gemm"
    mode = _k.MODE_ROWS if plan.algo == "gemm_1x1" else _k.MODE_PACK
    plan.flat = None
    if plan.engine == "direct" and w_shape[:3] == (1, 1, 1) and strides == (1, 1, 1) and out_shape == x_shape[1:4]:
        # a 1x1 convolution maps each pixel to its own: the direct engine sees each image as one
        # row of pixels, so that its 6-pixel tiles run on across the rows (a 38-wide row left a
        # 2-pixel tile, 7% of a 38x38x256 layer's time, at twice the cost per pixel)
        out_shape = (1, 1, math.prod(out_shape))
        plan.flat = (n,) + out_shape + (c,)
    job = _job(out_shape, [p[0] for p in pads], strides, dilation, w_shape[:3], (0, 0, 0), (1, 1, 1), 0, mode,
               True)
    return _finish_plan(plan, [job], [math.prod(w_shape[:4])], n, c, f, groups, dtype,
                        x_shape[3] if plan.flat is None else out_shape[2])


def conv(x, w, b, strides, dilation, pads, groups, out_shape, activation):
    plan = _conv_plan(x.shape, w.shape, tuple(strides), tuple(dilation), tuple(tuple(p) for p in pads), groups,
                      tuple(out_shape), x.dtype.str)
    if plan.algo == "fft":
        return _fft_conv(x, w, b, tuple(strides), tuple(dilation), pads, groups, tuple(out_shape), activation)
    if plan.flat is not None:
        y = np.empty(plan.flat[:4] + (plan.f,), x.dtype)
        return _run(plan, x.reshape(plan.flat), plan.weights(w), y, b, activation).reshape(plan.y_shape)
    return _run(plan, x, plan.weights(w), np.empty(plan.y_shape, x.dtype), b, activation)


# ---------------------------------------------------------------- conv_transpose

@functools.lru_cache(maxsize=256)
def _transpose_plan(x_shape, w_shape, strides, dilation, pads_before, out_shape, dtype):
    n, c = x_shape[0], x_shape[-1]
    f = w_shape[3]
    plan = _Plan()
    plan.algo = "transposed"
    plan.y_shape = (n,) + out_shape + (f,)
    axes = [_phases(x_shape[1 + a], w_shape[a], strides[a], dilation[a], pads_before[a], out_shape[a])
            for a in range(3)]
    jobs, wrows, taps = [], [], []
    inplace = strides == (1, 1, 1)
    macs = 0
    step = tuple(strides)
    for parts in itertools.product(*axes):
        counts = tuple(p[4] for p in parts)
        y0 = tuple(p[3] for p in parts)
        if not all(p[0] for p in parts):
            jobs.append(_job(counts, (0, 0, 0), (1, 1, 1), (1, 1, 1), (0, 0, 0), y0, step, 0, _k.MODE_ZERO,
                             inplace))
            wrows.append(0)
            continue
        ptaps = [p[0] for p in parts]
        ksize = tuple(len(t) for t in ptaps)
        pad = tuple(p[2] for p in parts)
        dil = tuple(p[1] for p in parts)
        rows = ksize == (1, 1, 1) and pad == (0, 0, 0) and counts == tuple(x_shape[1:4])
        jobs.append(_job(counts, pad, (1, 1, 1), dil, ksize, y0, step, 0,
                         _k.MODE_ROWS if rows else _k.MODE_PACK, inplace))
        # the phase's taps in correlation order, as flat kernel indices (rows of C each)
        taps += [(kd * w_shape[1] + kh) * w_shape[2] + kw for kd, kh, kw in itertools.product(*ptaps)]
        wrows.append(math.prod(ksize) * c)
        macs += n * math.prod(counts) * wrows[-1] * f
    plan.macs = macs
    plan.taps = np.array(taps, np.intp)
    fits = all(_direct_fits(r) for r in wrows)
    plan.engine = "direct" if c < _FEW_CHANNELS or fits else "gemm"
    return _finish_plan(plan, jobs, wrows, n, c, f, 1, dtype, x_shape[3], strips=False)


def conv_transpose(x, w, b, strides, dilation, pads_before, out_shape, activation):
    """Transposed convolution as ``prod(strides)`` stride-1 convolutions, one per output
    phase (see :func:`_phases`), all run in one parallel loop of the GEMM (or, with few
    input channels, the direct) engine, each writing its strided slice of ``y``."""
    plan = _transpose_plan(x.shape, w.shape, tuple(strides), tuple(dilation), tuple(pads_before),
                           tuple(out_shape), x.dtype.str)
    return _run(plan, x, plan.weights(w), np.empty(plan.y_shape, x.dtype), b, activation)


# ---------------------------------------------------------------- FFT

def _fft_conv(x, w, b, strides, dilation, pads, groups, out_shape, activation):
    """Convolution through SciPy's real FFT over the spatial axes, in float64.

    The padded input and the (dilated) kernel are transformed on a grid ``L`` as
    large as the padded input; ``y[o] = sum_k x[o + k] w[k]`` is the inverse transform
    of ``X * conj(W)`` (correlation theorem), exact (no wrap-around) for every valid
    ``o``; the channels are contracted per frequency, then the stride subsamples.
    float32 inputs are transformed in float64: float32 transforms of large grids lose
    about ``log2(L)`` bits more than the direct sum, too much for the Keras tolerance.
    """
    n, c = x.shape[0], x.shape[-1]
    kd, kh, kw, cg, f = w.shape
    fg = f // groups
    xp = np.pad(x.astype(np.float64), ((0, 0),) + tuple(tuple(p) for p in pads) + ((0, 0),))
    keff = [(k - 1) * d + 1 for k, d in zip(w.shape[:3], dilation)]
    grid = [max(i, (o - 1) * s + k) for i, o, s, k in zip(xp.shape[1:4], out_shape, strides, keff)]
    grid = [scipy.fft.next_fast_len(g, real=True) for g in grid]
    wd = np.zeros(tuple(keff) + (cg, f), np.float64)
    wd[::dilation[0], ::dilation[1], ::dilation[2]] = w
    workers = get_num_threads()
    axes = (1, 2, 3)
    xf = scipy.fft.rfftn(xp, s=grid, axes=axes, workers=workers)          # (N, Ld, Lh, Lw', C)
    wf = np.conj(scipy.fft.rfftn(wd, s=grid, axes=(0, 1, 2), workers=workers))  # (Ld, Lh, Lw', Cg, F)
    yf = np.zeros(xf.shape[:4] + (f,), xf.dtype)
    for g in range(groups):
        ysl = yf[..., g * fg:(g + 1) * fg]
        if cg <= fg:
            for j in range(cg):
                ysl += xf[..., g * cg + j, None] * wf[..., j, g * fg:(g + 1) * fg]
        else:
            xg = xf[..., g * cg:(g + 1) * cg]
            for j in range(fg):
                ysl[..., j] = np.einsum("...c,...c->...", xg, wf[..., :, g * fg + j])
    yfull = scipy.fft.irfftn(yf, s=grid, axes=axes, workers=workers)
    sel = (slice(None),) + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_shape, strides))
    y = np.ascontiguousarray(yfull[sel], dtype=x.dtype)
    if b is not None:
        y += b
    return activations.apply(activation, y)
