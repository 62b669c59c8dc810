"""BLAS for compiled kernels: SciPy's ``cython_blas`` sgemm/dgemm, callable from Numba.

The function pointers SciPy exports are registered with LLVM under fixed symbol
names, so Numba code calls them by name (and stays cacheable on disk, which
calling a ctypes pointer would not be).  Kernels call BLAS from inside their
own parallel loops, one tile per thread, so BLAS itself must run on one
thread there: :func:`single_threaded` arranges that for SciPy's OpenBLAS and
restores the previous setting afterwards.
"""

import contextlib
import ctypes
import glob
import os
import threading

import llvmlite.binding as ll
import numpy as np
import scipy
import scipy.linalg.cython_blas as _cython_blas
from numba import njit, types

_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype = ctypes.c_char_p
_capsule_name.argtypes = [ctypes.py_object]
_capsule_ptr = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_ptr.restype = ctypes.c_void_p
_capsule_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _register(name):
    cap = _cython_blas.__pyx_capi__[name]
    ll.add_symbol(f"fastconv_{name}", _capsule_ptr(cap, _capsule_name(cap)))


_register("sgemm")
_register("dgemm")
# Fortran interface: every argument by address (pointers passed as intp).
_SIG = types.void(*([types.intp] * 13))
_sgemm = types.ExternalFunction("fastconv_sgemm", _SIG)
_dgemm = types.ExternalFunction("fastconv_dgemm", _SIG)


@njit(cache=True, nogil=True)
def _operand(x):
    """(BLAS transpose flag, leading dimension) for a row-major operand: a matrix with unit
    column stride is passed as is ('N' on its transpose), one with unit row stride (a
    transposed view) as 'T'."""
    item = x.itemsize
    if x.shape[1] == 1 or x.strides[1] == item:
        return 78, max(x.strides[0] // item, x.shape[1])  # 'N'
    return 84, max(x.strides[1] // item, x.shape[0])  # 'T'


@njit(cache=True, nogil=True)
def gemm(a, b, c, beta):
    """Row-major ``c = a @ b + beta * c`` through BLAS, nothing copied.

    ``a`` and ``b`` may have any row pitch, or be transposed views (unit row
    stride); ``c`` needs unit column stride.  BLAS computes the column-major
    ``c^T = b^T a^T``, which is the same memory.
    """
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0:
        return
    item = a.itemsize
    ta, lda = _operand(a)
    tb, ldb = _operand(b)
    ints = np.empty(6, np.int32)
    ints[0], ints[1], ints[2] = n, m, k
    ints[3], ints[4] = ldb, lda
    ints[5] = max(c.strides[0] // item, n)
    flags = np.empty(2, np.uint8)
    flags[0], flags[1] = tb, ta
    scal = np.empty(2, a.dtype)
    scal[0], scal[1] = 1, beta
    p, f = ints.ctypes.data, flags.ctypes.data
    args = (f, f + 1, p, p + 4, p + 8, scal.ctypes.data,
            b.ctypes.data, p + 12, a.ctypes.data, p + 16, scal.ctypes.data + item, c.ctypes.data, p + 20)
    if item == 4:
        _sgemm(*args)
    else:
        _dgemm(*args)


def _openblas_threads():
    """(get, set) for SciPy's OpenBLAS thread count, or None if it isn't OpenBLAS."""
    libs = glob.glob(os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs", "*openblas*"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            get = getattr(lib, f"{prefix}_get_num_threads", None)
            put = getattr(lib, f"{prefix}_set_num_threads", None)
            if get is not None and put is not None:
                get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                return get, put
    return None


_threads_api = _openblas_threads()


_lock = threading.Lock()
_users = 0
_saved = None


@contextlib.contextmanager
def single_threaded():
    """Run SciPy's BLAS on one thread inside the block (no-op if it isn't OpenBLAS).

    Counted under a lock, so that concurrent callers (several Python threads running
    fastconv) share one switch: the first in sets one thread, the last out restores."""
    global _users, _saved
    if _threads_api is None:
        yield
        return
    get, put = _threads_api
    with _lock:
        if _users == 0:
            _saved = get()
            if _saved != 1:
                put(1)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _saved not in (None, 1):
                put(_saved)
