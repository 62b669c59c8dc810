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


def algorithm(op, *args):
    """How this backend computes kernel-contract ``op`` for these contract ``args``
    (a one-line description, for :func:`fastconv.explain`)."""
    if op == "conv":
        x, w, _, strides, dilation, pads, groups, out_shape = args[:8]
        name = _cython_conv.choose_algorithm(x.shape, w.shape, tuple(strides), tuple(dilation), groups,
                                             tuple(tuple(p) for p in pads), tuple(out_shape))
        return f"Cython {name}: {_cython_conv.describe(name)}"
    if op == "conv_transpose":
        x, w, _, strides, dilation, before, out_shape = args[:7]
        plan = _cython_conv._transpose_plan(x.shape, w.shape, tuple(strides), tuple(dilation), tuple(before),
                                            tuple(out_shape), x.dtype.str)
        engine = ("direct register-tiled" if plan.engine == "direct"
                  else "GEMM (SciPy BLAS on packed tiles of patches)")
        phases = int(np.prod(strides))
        return (f"Cython: {phases} output phase(s), each a stride-1 convolution with its subset of the taps, "
                f"in one parallel loop of the {engine} engine, each written to its strided slice of the output")
    return _cython_direct.describe(op, *args)
