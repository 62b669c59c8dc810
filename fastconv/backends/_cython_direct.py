"""Cython backend, direct kernels: ``depthwise_conv`` and the pools.

The loops are in ``_cython/direct.pyx`` (depthwise convolution) and
``_cython/pool.pyx`` (window and global pooling); this module prepares their
operands (kernel and bias reordered so that channels are contiguous for each
depth multiplier, padded to whole vectors), sizes the work split, applies the
activations the kernels do not fuse, and describes the algorithms
(:func:`describe`).  ``max_pool`` and ``avg_pool`` are driven from
``fastconv.backends.cython``.
"""

import functools
import math

import numpy as np

from .. import activations
from .._threads import get_num_threads
from ._cython import direct as _direct
from ._cython import pool as _pool

OPS = frozenset({"depthwise_conv", "global_max_pool", "global_avg_pool"})


def set_isa(name=None):
    """Run the direct and pooling kernels at instruction-set level ``name`` ("avx512", "avx2",
    "baseline"; at most the detected one), or at the detected level again (``None``).  For
    tests: every level's kernels can then be checked on one machine."""
    _direct.set_isa(name)
    _pool.set_isa(name)


def describe(op, *args):
    """A one-line description of how this backend computes kernel-contract ``op`` with the
    contract arguments ``args`` (for :func:`fastconv.explain`).

    >>> import numpy as np
    >>> x = np.zeros((1, 1, 56, 56, 256), np.float32)
    >>> describe("avg_pool", x, (1, 3, 3), (1, 1, 1), ((0, 0), (1, 1), (1, 1)), (1, 56, 56))  # doctest: +ELLIPSIS
    'Cython avg_pool: separable window (vertical pass shared by overlapping windows, then horizontal)...'
    """
    x = args[0]
    isa = _direct.isa()
    if op == "depthwise_conv":
        w, strides, dilation = args[1], args[3], args[4]
        vl = _direct.block_channels(x.itemsize)
        kw, sw, dw = w.shape[2], strides[2], dilation[2]
        rows = (f"{kw}-wide stride-{sw} kernel rows loading each input vector once for all its taps"
                if dw == 1 and sw in (1, 2) and kw in (3, 5) else "a generic loop over taps")
        return (f"Cython depthwise_conv: register tiles of 2 output rows x {_direct.tile_pixels()} pixels x "
                f"{vl} channels ({isa} vectors) over zero-padded packed input rows (x itself inside the image, "
                f"at aligned addresses: shifted where x is not aligned), {rows}; "
                "bias and piecewise-linear activations fused")
    if op in ("max_pool", "avg_pool"):
        pool, strides, out_shape = args[1], args[2], args[4]
        how = ("vertical pass shared by overlapping windows, then horizontal"
               if _pool.separable(pool[2], strides[2], out_shape[2]) else "each column reduced on the fly")
        what = "max (NaN propagates)" if op == "max_pool" else "sum times 1/count of real elements"
        return (f"Cython {op}: separable window ({how}), {what}; blocks of channel vectors in registers "
                f"({isa}), output rows split between threads")
    if op in ("global_max_pool", "global_avg_pool"):
        what = "max (NaN propagates)" if op == "global_max_pool" else "sum divided by the pixel count"
        if x.size // max(1, x.shape[0]) * x.itemsize < _GLOBAL_SPLIT_BYTES:
            how = "one pass per image"
        else:
            how = f"fixed ~{_GLOBAL_CHUNK_BYTES >> 10} KiB chunks of pixels in parallel, partials combined in order"
        return f"Cython {op}: {what} over {how}; blocks of channel vectors in registers ({isa})"
    raise ValueError(f"{op!r} is not a direct kernel of the Cython backend")

# Below this much work (multiply-adds, or elements read) one thread does the op:
# starting the OpenMP team costs a few microseconds, more than small ops save.
_PARALLEL_MIN_WORK = 1 << 15
# A depthwise job packs the input rows of at most this many output columns (a row buffer of
# ~16 KiB per channel block with 64-byte vectors)...
_MAX_SEGMENT = 256
# ...and of as many channel blocks as keep its ring of packed rows within this many bytes
# (in L2 with the rows of x and y it streams through)
_RING_BYTES = 256 << 10
# Jobs per thread wanted before an image's rows are split into bands (each band packs again
# the KH - 1 input rows it shares with the next, so bands have at least _MIN_BAND_ROWS rows),
# and then its channel blocks into more groups.
_JOBS_PER_THREAD = 4
_MIN_BAND_ROWS = 4


def _threads(work, threads=None):
    """Threads for an op of ``work`` (of ``threads``, default the configured count)."""
    if work < _PARALLEL_MIN_WORK:
        return 1
    return get_num_threads() if threads is None else threads


@functools.lru_cache(maxsize=256)
def _split(x_shape, out_shape, ksize, strides, dilation, nblk, vec_bytes, pixels, threads):
    """Output rows per band, output columns per segment and channel blocks per group of the
    depthwise jobs.  Any split gives the same results: every output element is computed the
    same way in every job."""
    n = x_shape[0]
    od, oh, ow = out_shape
    nseg = -(-ow // _MAX_SEGMENT)
    seg = -(-(-(-ow // nseg)) // pixels) * pixels
    # the ring: KD x (sh + (KH - 1) * dh + 1) rows of packed pixels per channel block
    npk = (seg - 1) * strides[2] + (ksize[2] - 1) * dilation[2] + 1
    slot = ksize[0] * (strides[1] + (ksize[1] - 1) * dilation[1] + 1) * npk * vec_bytes
    group = max(1, min(nblk, _RING_BYTES // slot))
    ngroup = -(-nblk // group)
    nband = 1
    want = _JOBS_PER_THREAD * threads if threads > 1 else 1
    base = n * od * nseg * ngroup
    if base < want:
        nband = max(1, min(-(-want // base), oh // _MIN_BAND_ROWS))
    if base * nband < want:
        ngroup = min(nblk, -(-want // (n * od * nseg * nband)))
        group = -(-nblk // ngroup)
    return -(-oh // nband), seg, group


@functools.lru_cache(maxsize=256)
def _depthwise_plan(x_shape, itemsize, w_shape, strides, dilation, pads, out_shape, activation, threads, isa):
    """Everything a depthwise call works out from its shapes and arguments, once per call
    signature and instruction-set level (``isa``: it sets the vector and tile sizes): the
    output shape, the padded channel count, the job split, the kernel's geometry arguments
    and activation code, and whether the activation is fused."""
    n, c = x_shape[0], x_shape[-1]
    m = w_shape[4]
    y_shape = (n,) + tuple(out_shape) + (c * m,)
    vl = _direct.block_channels(itemsize)
    cp = -(-c // vl) * vl
    taps = math.prod(w_shape[:3])
    threads = _threads(math.prod(y_shape) * taps, threads)
    band, seg, group = _split(x_shape, tuple(out_shape), w_shape[:3], tuple(strides), tuple(dilation), cp // vl,
                              vl * itemsize, _direct.tile_pixels(), threads)
    fused = activation in _direct.ACTIVATIONS
    geometry = (tuple(strides), tuple(dilation), tuple(p[0] for p in pads), tuple(w_shape[:3]),
                _direct.ACTIVATIONS[activation if fused else None], band, seg, group, threads)
    shifted = _direct.shifted_reads(c, itemsize, m, strides[2], out_shape[2], group)
    return y_shape, taps, cp, geometry, fused, shifted


# the widest vector of the kernels (AVX-512)
_VECTOR_BYTES = 64


def _like(x, shape):
    """An empty array of ``shape`` and x's dtype whose data starts as far past a 64-byte
    boundary as x's."""
    n = math.prod(shape)
    buf = np.empty(n * x.itemsize + _VECTOR_BYTES, np.uint8)
    start = (_direct.vector_offset(x) - _direct.vector_offset(buf)) % _VECTOR_BYTES
    return buf[start:start + n * x.itemsize].view(x.dtype).reshape(shape)


def depthwise_conv(x, w, b, strides, dilation, pads, out_shape, activation):
    c, m = x.shape[-1], w.shape[4]
    y_shape, taps, cp, geometry, fused, shifted = _depthwise_plan(
        x.shape, x.itemsize, w.shape, strides, dilation, pads, out_shape,
        activation, get_num_threads(), _direct.isa())
    # where the tiles inside the image may read x directly, y starts as far into a vector as x,
    # so that their stores are aligned where their loads are (see _cython/direct.pyx); chosen by
    # the shapes alone, so a model's memory use does not depend on where NumPy put x
    y = _like(x, y_shape) if shifted and math.prod(y_shape) else np.empty(y_shape, x.dtype)
    if y.size == 0:
        return y
    if m == 1 and cp == c:
        # already the layout the kernel reads (w and b are contiguous): no copies
        wt = w.reshape(taps, 1, c)
        bias = b.reshape(1, c) if b is not None else np.zeros((1, c), x.dtype)
    else:
        # (taps, C, M) -> (taps, M, Cp): the kernel reads whole vectors of C weights per
        # multiplier, the channels past C zero
        wt = np.zeros((taps, m, cp), x.dtype)
        wt[:, :, :c] = w.reshape(taps, c, m).transpose(0, 2, 1)
        bias = np.zeros((m, cp), x.dtype)
        if b is not None:
            bias[:, :c] = b.reshape(c, m).T
    _direct.depthwise(x, wt, bias, y, *geometry)
    if not fused:
        # other elementwise activations (exp, tanh, erf, ...): one NumPy pass over the output
        y = activations.apply(activation, y)
    return y


# Global pooling reduces chunks of about this many bytes of one image in parallel (an
# L1d-sized piece that the kernel reads once per block of channels), then combines them;
# images smaller than _GLOBAL_SPLIT_BYTES are reduced in one pass (the split is set by the
# shape alone, never by the thread count, so results do not depend on threads).
_GLOBAL_CHUNK_BYTES = 32 << 10
_GLOBAL_SPLIT_BYTES = 512 << 10


def _global(x, is_max):
    n, c = x.shape[0], x.shape[-1]
    p = x.size // max(1, n * c)
    y = np.empty((n, c), x.dtype)
    if y.size == 0:
        return y
    k = 1
    if p * c * x.itemsize >= _GLOBAL_SPLIT_BYTES:
        k = -(-p // max(1, _GLOBAL_CHUNK_BYTES // (c * x.itemsize)))
    part = np.empty((n, k, c), x.dtype)
    _pool.global_pool(x.reshape(n, p, c), part, y, is_max, min(_threads(x.size), n * k))
    return y


def global_max_pool(x):
    return _global(x, True)


def global_avg_pool(x):
    return _global(x, False)
