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


def _openblas_threads(libs_dir):
    """(get, set) for the thread count of the OpenBLAS bundled in ``libs_dir``, or None."""
    for path in glob.glob(os.path.join(libs_dir, "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("", "64_"):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                    return get, put
    return None


class _OneThread:
    """A counted switch of one OpenBLAS to a single thread: the first user in sets one
    thread, the last out restores the previous count (safe with concurrent callers)."""

    def __init__(self, api):
        self.api, self.lock, self.users, self.saved = api, threading.Lock(), 0, None

    @contextlib.contextmanager
    def __call__(self):
        if self.api is None:
            yield
            return
        get, put = self.api
        with self.lock:
            if self.users == 0:
                self.saved = get()
                if self.saved != 1:
                    put(1)
            self.users += 1
        try:
            yield
        finally:
            with self.lock:
                self.users -= 1
                if self.users == 0 and self.saved not in (None, 1):
                    put(self.saved)


_threads_api = _openblas_threads(os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs"))
_numpy_threads_api = _openblas_threads(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs"))

#: ``with single_threaded():`` runs SciPy's OpenBLAS (the one the kernels call) on one thread.
single_threaded = _OneThread(_threads_api)
#: ``with numpy_single_threaded():`` does the same for NumPy's own OpenBLAS (``np.matmul``):
#: small products on several threads wait for a core that another pool may hold, and
#: OpenBLAS's idle threads spin afterwards (measured: a 1x2048 @ 2048x1000 product took
#: ms instead of 0.1 ms next to busy kernels).
numpy_single_threaded = _OneThread(_numpy_threads_api)
