"""Cython backend, direct kernels: ``depthwise_conv``, ``global_max_pool`` and ``global_avg_pool``.

The loops are in ``_cython/direct.pyx``; this module prepares their operands
(kernel and bias reordered so that channels are contiguous for each depth
multiplier), sizes the work split, and applies the activations the kernels do
not fuse.
"""

import math

import numpy as np

from .. import activations
from .._threads import get_num_threads
from ._cython import direct as _direct

OPS = frozenset({"depthwise_conv", "global_max_pool", "global_avg_pool"})

# Below this much work (multiply-adds, or elements read) one thread does the op:
# starting the OpenMP team costs a few microseconds, more than small ops save.
_PARALLEL_MIN_WORK = 1 << 15
# With fewer (output rows x channel blocks) than this, depthwise rows are split along W
# into segments of at least _SEGMENT_PIXELS output pixels (4 tiles of 8), so that a few
# long rows still give every thread work.
_MIN_ROW_JOBS = 16
_SEGMENT_PIXELS = 32


def _threads(work):
    return get_num_threads() if work >= _PARALLEL_MIN_WORK else 1


def depthwise_conv(x, w, b, strides, dilation, pads, out_shape, activation):
    n, c = x.shape[0], x.shape[-1]
    m = w.shape[4]
    taps = math.prod(w.shape[:3])
    y = np.empty((n,) + tuple(out_shape) + (c * m,), x.dtype)
    if y.size == 0:
        return y
    # (taps, C, M) -> (taps, M, C): the kernel reads C contiguous weights per multiplier
    wt = np.ascontiguousarray(w.reshape(taps, c, m).transpose(0, 2, 1))
    bias = np.zeros((m, c), x.dtype) if b is None else np.ascontiguousarray(b.reshape(c, m).T)
    fused = activation in _direct.ACTIVATIONS
    threads = _threads(y.size * taps)
    # Rows are split along W when an image has few rows x channel blocks (one image of a
    # 1-D op): into segments of about _SEGMENT_PIXELS (set by the shapes alone, never by the
    # thread count: a segment's ends decide which pixels go through the tile kernel, whose
    # rounding may differ from the per-pixel loop's, and results must not depend on threads).
    ow = out_shape[2]
    row_jobs = n * out_shape[0] * out_shape[1] * -(-c // _direct.BLOCK_CHANNELS[x.itemsize])
    seg = ow if row_jobs >= _MIN_ROW_JOBS else max(_SEGMENT_PIXELS, -(-ow // -(-_MIN_ROW_JOBS // row_jobs)))
    _direct.depthwise(x, wt, bias, y, tuple(strides), tuple(dilation), tuple(p[0] for p in pads),
                      tuple(w.shape[:3]), _direct.ACTIVATIONS[activation if fused else None], seg, threads)
    if not fused:
        # other elementwise activations (exp, tanh, erf, ...): one NumPy pass over the output
        y = activations.apply(activation, y)
    return y


# Global pooling reduces chunks of about this many bytes of one image in parallel (an
# L1d-sized piece that the kernel reads once per 64-channel block), then combines them.
_GLOBAL_CHUNK_BYTES = 32 << 10


def _global(x, is_max):
    n, c = x.shape[0], x.shape[-1]
    p = x.size // max(1, n * c)
    y = np.empty((n, c), x.dtype)
    if y.size == 0:
        return y
    chunk = max(1, _GLOBAL_CHUNK_BYTES // (c * x.itemsize))
    k = -(-p // chunk)
    part = np.empty((n, k, c), x.dtype)
    _direct.global_pool(x.reshape(n, p, c), part, y, is_max, _threads(x.size))
    return y


def global_max_pool(x):
    return _global(x, True)


def global_avg_pool(x):
    return _global(x, False)
