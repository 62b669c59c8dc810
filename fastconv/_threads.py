"""Thread count shared by every compiled backend."""

import contextlib
import functools
import os
import threading

from .errors import InvalidArgumentError

_num_threads = None
# a per-thread override (fastconv.dask gives each task its share of a worker's threads)
_local = threading.local()


def get_num_threads():
    """Threads the compiled kernels use: the last :func:`set_num_threads`, else
    ``NUMBA_NUM_THREADS`` or ``OMP_NUM_THREADS`` as the environment had them at the first
    call (Numba and OpenMP read them once, too), else the CPU count.

    >>> get_num_threads() >= 1
    True
    """
    n = getattr(_local, "n", None)
    if n is not None:
        return n
    if _num_threads is not None:
        return _num_threads
    return _default()


@functools.lru_cache(maxsize=None)
def _default():
    """The default thread count, worked out once: reading the environment and the CPU
    affinity costs a few microseconds, and a small layer runs in ~50."""
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_num_threads(n):
    """Set how many threads fastconv's compiled kernels use (``None`` restores the default).

    Parameters
    ----------
    n : int or None
        A positive thread count.

    Examples
    --------
    >>> import fastconv
    >>> fastconv.set_num_threads(1); fastconv.get_num_threads()
    1
    >>> fastconv.set_num_threads(None)
    """
    global _num_threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InvalidArgumentError(f"set_num_threads: argument `n` must be a positive integer or None; got {n!r}")
    _num_threads = n


@contextlib.contextmanager
def thread_limit(n):
    """Within the block, :func:`get_num_threads` returns ``n`` in the calling thread only
    (other threads and the process-wide setting are untouched). Private: used by fastconv.dask."""
    prev = getattr(_local, "n", None)
    _local.n = int(n)
    try:
        yield
    finally:
        _local.n = prev
