"""The Cython backend: compiled OpenMP kernels (``fastconv/backends/_cython/*.pyx``).

It implements part of the kernel contract so far (see ``OPS``); ``backend="auto"``
takes the rest from the next backend that has it.  Threads follow
:func:`fastconv.set_num_threads`.
"""

import numpy as np

from .._threads import get_num_threads
from . import _cython_conv, _cython_direct
from ._cython import pool as _pool

NAME = "cython"
_PARTS = (_cython_conv, _cython_direct)
OPS = frozenset({"max_pool", "avg_pool"}).union(*(m.OPS for m in _PARTS))


def __getattr__(name):
    # the convolution and direct kernels live in their own driver modules
    for m in _PARTS:
        if name in m.OPS:
            return getattr(m, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _out(x, out_shape):
    return np.empty((x.shape[0],) + tuple(out_shape) + (x.shape[-1],), dtype=x.dtype)


# Below this many window elements one thread pools (the OpenMP team costs more than it saves).
_POOL_PARALLEL_MIN = 1 << 15


def _pool_threads(y, pool):
    return get_num_threads() if y.size * pool[0] * pool[1] * pool[2] >= _POOL_PARALLEL_MIN else 1


def max_pool(x, pool, strides, pads, out_shape):
    y = _out(x, out_shape)
    _pool.max_pool(x, y, tuple(pool), tuple(strides), tuple(p[0] for p in pads), _pool_threads(y, pool))
    return y


def avg_pool(x, pool, strides, pads, out_shape):
    y = _out(x, out_shape)
    _pool.avg_pool(x, y, tuple(pool), tuple(strides), tuple(p[0] for p in pads), _pool_threads(y, pool))
    return y
