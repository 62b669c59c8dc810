"""The cuda backend: numba.cuda kernels on an NVIDIA GPU (``backend="cuda"``).

Availability
------------
The backend is usable when ``numba.cuda`` imports and ``numba.cuda.is_available()``
is true (a CUDA driver and a GPU).  Install it with ``pip install "fastconv[cuda]"``,
which brings NVIDIA's ``numba-cuda`` package (the maintained CUDA target; the
``numba.cuda`` built into Numba is deprecated) with the CUDA 12 runtime libraries.
It is **explicit-only**: ``backend="auto"`` never picks it, and
:func:`fastconv.available_backends` lists it (last) only on a real GPU.  Without
one, ``backend="cuda"`` raises :class:`~fastconv.errors.BackendUnavailableError`
giving the reason.

For testing without a GPU it runs under Numba's CUDA simulator when *both*
``NUMBA_ENABLE_CUDASIM=1`` (read by Numba when it is imported) and
``FASTCONV_CUDA_SIMULATOR=1`` are set: the backend can then be asked for by name
but is never listed by ``available_backends()``.  The simulator runs every
thread as a Python thread, so only tiny shapes are practical; it uses small
tiles and few threads (the kernels are the same code; see ``_TILES``).

Arrays
------
The kernel-contract functions (:mod:`fastconv.backends.reference`) accept host
(NumPy) arrays, which are copied to the device and the result back, or CUDA
device arrays (numba's, or anything with ``__cuda_array_interface__`` such as
CuPy arrays or PyTorch CUDA tensors, used without a copy), for which the
result stays on the device as a numba device array.  Weights may be either;
host weights are copied for each call, so callers that run many calls (the
model engine) should copy them once with :func:`to_device`.

Kernels
-------
See :mod:`fastconv.backends._cuda_kernels`: the dense convolutions (standard,
grouped, pointwise, transposed) are one shared-memory tiled implicit GEMM,
one thread block per output tile, with bias and activation applied to the
tile before it is stored; depthwise convolution and pooling are direct
kernels; every elementwise activation is a device function, so all of
:data:`fastconv.activations.ELEMENTWISE` is fused.

Engine helpers
--------------
:func:`to_device`, :func:`to_host`, :func:`activation`, :func:`bias_activation`,
:func:`affine`, :func:`merge`, :func:`concatenate`, :func:`dense`,
:func:`reshape` and :func:`flatten` do on device arrays what the model
engine's elementwise layers do on NumPy arrays, so that a whole model can
run on the device with one copy in and one copy out.
"""

import contextlib
import contextvars
import math
import os

import numpy as np

NAME = "cuda"
OPS = frozenset({"conv", "depthwise_conv", "conv_transpose", "max_pool", "avg_pool",
                 "global_max_pool", "global_avg_pool"})


def _setup():
    """Import numba.cuda and decide whether this backend is usable here.

    Returns ``(numba.cuda or None, simulator on, None or why the backend is unusable)``.
    The module always imports (so that its documentation can be read and tested
    anywhere); the registry reads ``UNAVAILABLE`` and reports the reason."""
    from numba.core import config

    simulator = bool(config.ENABLE_CUDASIM)
    if simulator and os.environ.get("FASTCONV_CUDA_SIMULATOR") != "1":
        return None, simulator, (
            "numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1); set FASTCONV_CUDA_SIMULATOR=1 "
            "as well to run the cuda backend on it (for tests: very slow)")
    try:
        from numba import cuda
    except Exception as exc:  # numba without its CUDA target
        return None, simulator, (f"numba.cuda cannot be imported ({exc}); "
                                 f"install the cuda extra: pip install 'fastconv[cuda]'")
    if not simulator:
        try:
            ok, why = cuda.is_available(), cuda.cuda_error()
        except Exception as exc:  # a broken driver installation
            ok, why = False, exc
        if not ok:
            why = " ".join(str(why or "no CUDA device was found").split())
            return None, simulator, f"no usable CUDA GPU: numba.cuda.is_available() is False ({why})"
    return cuda, simulator, None


cuda, SIMULATOR, UNAVAILABLE = _setup()
#: Whether :func:`fastconv.available_backends` lists this backend: on a real GPU only.
LISTED = UNAVAILABLE is None and not SIMULATOR
#: Which numba.cuda is in use: "NVIDIA" (the numba-cuda package) or "Built-in" (deprecated).
IMPLEMENTATION = getattr(cuda, "implementation", "?")

from . import _cuda_kernels as K  # noqa: E402

# Tile shapes of the implicit-GEMM convolution, (BM, BN, BK, RM, RN): BM pixels x BN
# filters per block of (BM/RM) * (BN/RN) threads, K stepped BK at a time.  On a GPU,
# 256 threads with a 4x4 register tile each (64x64 tiles, 8 KiB of float32 shared
# memory) is the usual shape for a simple register-blocked GEMM; groups or layers
# with <= 16 filters use 128x16 tiles so that most of a tile is not wasted.  The
# simulator starts one Python thread per CUDA thread for every block, so there
# blocks of 32 threads are several times faster (and cover the same code).
if SIMULATOR:
    _TILES = {"wide": (64, 8, 16, 8, 2), "narrow": (64, 8, 16, 8, 2)}
    _THREADS, _MAX_BLOCKS = 8, 1           # direct kernels: grid-stride loops
    _GLOBAL = (4, 2)                       # global pooling: channels x position rows per block
else:
    _TILES = {"wide": (64, 64, 16, 4, 4), "narrow": (128, 16, 16, 4, 2)}
    _THREADS, _MAX_BLOCKS = 256, 1 << 16
    _GLOBAL = (32, 8)
_NARROW_MAX_FILTERS = 16


# ----------------------------------------------------------------------------- arrays

def is_device_array(a):
    """Whether ``a`` lives on a CUDA device (numba device array or CUDA Array Interface)."""
    return hasattr(a, "__cuda_array_interface__") or getattr(a, "__cuda_ndarray__", False) is True


if SIMULATOR and cuda is not None:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    class _SimArray(FakeCUDAArray):
        """The simulator's device array with a plain-tuple shape: the simulator's own
        refuses negative indices (``a.shape[-1]``), which real device arrays allow and
        the ops layer's validation uses."""

        @property
        def shape(self):
            return tuple(self._ary.shape)

        def reshape(self, *shape):
            return _SimArray(self._ary.reshape(*shape))

    def _wrap(a):
        return a if isinstance(a, _SimArray) else _SimArray(a._ary, a.stream)

    def _view(a, shape, strides):
        return _SimArray(np.lib.stride_tricks.as_strided(a._ary, tuple(shape), tuple(strides)))
else:
    def _wrap(a):
        return a

    def _view(a, shape, strides):
        """A view of device array ``a`` with another shape and byte strides (no copy)."""
        desc = dict(a.__cuda_array_interface__)
        desc.update(shape=tuple(shape), strides=tuple(strides))
        return cuda.from_cuda_array_interface(desc, owner=a, sync=False)


def as_device_array(a):
    """A numba device array for a device array-like ``a`` (no copy).

    Parameters
    ----------
    a : device array
        A numba device array, or any object with ``__cuda_array_interface__``
        (CuPy, PyTorch CUDA tensors, ...).

    Returns
    -------
    numba device array
    """
    if SIMULATOR:
        return _wrap(a)
    if getattr(a, "__cuda_ndarray__", False) is True:
        return a
    return cuda.as_cuda_array(a)


def to_device(a, dtype=None):
    """``a`` on the device: host arrays are copied (C-contiguous, cast to ``dtype`` if
    given), device arrays are returned as numba device arrays without a copy.

    Parameters
    ----------
    a : array_like or device array
    dtype : numpy dtype, optional

    Returns
    -------
    numba device array
    """
    if is_device_array(a):
        a = as_device_array(a)
        return a if dtype is None or a.dtype == dtype else _cast(a, dtype)
    return _wrap(cuda.to_device(np.ascontiguousarray(a, dtype=dtype)))


def to_host(a):
    """A NumPy copy of device array ``a`` (a host array is returned as it is)."""
    return as_device_array(a).copy_to_host() if is_device_array(a) else a


def _empty(shape, dtype):
    return _wrap(cuda.device_array(tuple(int(s) for s in shape), dtype=dtype))


def _contiguous(a):
    return a.is_c_contiguous()


def _launch(kernel, n, *args):
    """Launch a grid-stride kernel over ``n`` work items (nothing to do for ``n == 0``)."""
    if n:
        kernel[min(-(-n // _THREADS), _MAX_BLOCKS), _THREADS](*args)


def _kernels(dtype):
    return K.elementwise(np.dtype(dtype).name)


def _cast(a, dtype):
    """A contiguous copy of device array ``a`` (at most 5-D) in ``dtype``."""
    out = _empty(a.shape, dtype)
    lead = (1,) * (5 - a.ndim)
    _launch(_kernels(dtype)["copy5"], out.size, _view(a, lead + a.shape, (0,) * len(lead) + a.strides),
            out.reshape(lead + a.shape))
    return out


def _dummy(dtype):
    return _empty((1,), dtype)


def _act_code(activation):
    return K.ACT_CODES[activation]


# ----------------------------------------------------------------------------- kernel contract

_WEIGHTS = contextvars.ContextVar("fastconv_cuda_weights", default=None)


@contextlib.contextmanager
def weight_cache(cache, owners):
    """Within this block, weights that are views of ``owners`` go to the device once.

    Parameters
    ----------
    cache : dict
        Kept by the caller between blocks (the model engine keeps one per model):
        device copies keyed by the host memory they copy (address, shape, strides, dtype).
    owners : dict
        ``{id(array): array}``: the host arrays whose memory does not change while the
        cache lives (the engine's weights). A weight that is a view of one of them is
        cached; any other host array is copied at each call, as outside the block.
    """
    token = _WEIGHTS.set((cache, owners))
    try:
        yield cache
    finally:
        _WEIGHTS.reset(token)


def _owner(a):
    while isinstance(getattr(a, "base", None), np.ndarray):
        a = a.base
    return a


def weight(w, dtype):
    """Host or device weight ``w`` on the device in ``dtype`` (see :func:`weight_cache`)."""
    state = _WEIGHTS.get()
    if state is None or not isinstance(w, np.ndarray):
        return to_device(w, dtype)
    cache, owners = state
    root = _owner(w)
    if owners.get(id(root)) is not root:
        return to_device(w, dtype)
    key = (w.__array_interface__["data"][0], w.shape, w.strides, w.dtype.str, np.dtype(dtype).str)
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = (root, to_device(w, dtype))
    return hit[1]


def _inputs(x, *weights):
    """(device x, whether x came from the host, device weights in x's dtype)."""
    host = not is_device_array(x)
    dx = to_device(x)
    return (dx, host) + tuple(None if w is None else weight(w, dx.dtype) for w in weights)


def _finish(y, host):
    return y.copy_to_host() if host else y


def _gemm(dx, w2, db, ksize, strides, dilation, before, groups, out_shape, activation, transposed):
    """Run the tiled implicit-GEMM convolution; returns the device output (N, *out, F)."""
    n, f = dx.shape[0], w2.shape[1]
    cg, fg = dx.shape[4] // groups, f // groups
    y = _empty((n,) + tuple(out_shape) + (f,), dx.dtype)
    m = n * math.prod(out_shape)
    if m == 0 or fg == 0:
        return y
    bm, bn, bk, rm, rn = _TILES["narrow" if fg <= _NARROW_MAX_FILTERS else "wide"]
    kernel, threads = K.conv_gemm(np.dtype(dx.dtype).name, bm, bn, bk, rm, rn)
    grid = (-(-m // bm), -(-fg // bn), groups)
    kernel[grid, threads](
        dx, w2, _dummy(dx.dtype) if db is None else db, db is not None, _act_code(activation),
        y.reshape((m, f)), *out_shape, *ksize, *strides, *dilation, *before, cg, fg, int(transposed))
    return y


def conv(x, w, b, strides, dilation, pads, groups, out_shape, activation):
    """Convolution (see the kernel contract in :mod:`fastconv.backends.reference`)."""
    dx, host, dw, db = _inputs(x, w, b)
    kd, kh, kw, cg, f = dw.shape
    y = _gemm(dx, reshape(dw, (kd * kh * kw * cg, f)), db, (kd, kh, kw), strides, dilation,
              [p[0] for p in pads], groups, out_shape, activation, False)
    return _finish(y, host)


def conv_transpose(x, w, b, strides, dilation, pads_before, out_shape, activation):
    """Transposed convolution, gather form (see :mod:`fastconv.backends.reference`)."""
    host = not is_device_array(x)
    dx = to_device(x)
    kd, kh, kw, f, c = w.shape
    if is_device_array(w):  # (KD, KH, KW, F, C) -> (KD, KH, KW, C, F) on the device
        w = to_device(w, dx.dtype)
        ws = _empty((kd, kh, kw, c, f), dx.dtype)
        s = w.strides
        _launch(_kernels(dx.dtype)["copy5"], ws.size, _view(w, ws.shape, s[:3] + (s[4], s[3])), ws)
    else:
        ws = weight(_swapped(w), dx.dtype)
    db = None if b is None else weight(b, dx.dtype)
    y = _gemm(dx, reshape(ws, (kd * kh * kw * c, f)), db, (kd, kh, kw), strides, dilation,
              pads_before, 1, out_shape, activation, True)
    return _finish(y, host)


def _swapped(w):
    """(KD, KH, KW, F, C) -> (KD, KH, KW, C, F): a strided view, copied to the device
    (once per weight inside :func:`weight_cache`)."""
    return np.swapaxes(w, 3, 4)


def depthwise_conv(x, w, b, strides, dilation, pads, out_shape, activation):
    """Depthwise convolution (see :mod:`fastconv.backends.reference`)."""
    dx, host, dw, db = _inputs(x, w, b)
    y = _empty((dx.shape[0],) + tuple(out_shape) + (dw.shape[3] * dw.shape[4],), dx.dtype)
    _launch(_kernels(dx.dtype)["depthwise"], y.size, dx, dw, _dummy(dx.dtype) if db is None else db,
            db is not None, _act_code(activation), y, *strides, *dilation, *(p[0] for p in pads))
    return _finish(y, host)


def _pool(kind, x, pool, strides, pads, out_shape):
    dx, host = _inputs(x)
    y = _empty((dx.shape[0],) + tuple(out_shape) + (dx.shape[4],), dx.dtype)
    _launch(_kernels(dx.dtype)["pool"], y.size, dx, y, kind, *pool, *strides, *(p[0] for p in pads))
    return _finish(y, host)


def max_pool(x, pool, strides, pads, out_shape):
    """Max pooling; padded positions never win, NaN propagates."""
    return _pool(0, x, pool, strides, pads, out_shape)


def avg_pool(x, pool, strides, pads, out_shape):
    """Average pooling over the real (unpadded) elements of each window."""
    return _pool(1, x, pool, strides, pads, out_shape)


def _global(kind, x):
    dx, host = _inputs(x)
    n, d, h, w, c = dx.shape
    y = _empty((n, c), dx.dtype)
    if n and c:
        cx, sy = _GLOBAL
        kernel = K.global_pool(np.dtype(dx.dtype).name, cx, sy)
        kernel[(n, -(-c // cx)), cx * sy](dx.reshape((n, d * h * w, c)), y, kind)
    return _finish(y, host)


def global_max_pool(x):
    """Maximum over all spatial positions: (N, C)."""
    return _global(0, x)


def global_avg_pool(x):
    """Mean over all spatial positions (accumulated in float64): (N, C)."""
    return _global(1, x)


# ----------------------------------------------------------------------------- ops-layer helpers

def to_3d(x, nsp, fmt, dtype):
    """Device version of :func:`fastconv.ops._layout.to_3d`: (N, *spatial, C) or
    (N, C, *spatial) -> contiguous (N, D, H, W, C) in ``dtype`` (a view when possible)."""
    x = as_device_array(x)
    lead, s = (1,) * (3 - nsp), x.strides
    if fmt == "channels_last":
        shape = (x.shape[0],) + lead + tuple(x.shape[1:])
        if x.dtype == dtype and _contiguous(x):
            return x.reshape(shape)
        strides = (s[0],) + (0,) * len(lead) + tuple(s[1:])
    else:
        shape = (x.shape[0],) + lead + tuple(x.shape[2:]) + (x.shape[1],)
        strides = (s[0],) + (0,) * len(lead) + tuple(s[2:]) + (s[1],)
    out = _empty(shape, dtype)
    _launch(_kernels(dtype)["copy5"], out.size, _view(x, shape, strides), out)
    return out


def from_3d(y, nsp, fmt):
    """Device version of :func:`fastconv.ops._layout.from_3d`."""
    n, c, sp = y.shape[0], y.shape[4], tuple(y.shape[4 - nsp:4])
    if fmt == "channels_last":
        return y.reshape((n,) + sp + (c,))
    out = _empty((n, c) + sp, y.dtype)
    s = out.strides
    _launch(_kernels(y.dtype)["copy5"], y.size, y,
            _view(out, y.shape, (s[0],) + (0,) * (3 - nsp) + tuple(s[2:]) + (s[1],)))
    return out


def activation(y, name):
    """``name`` (a canonical activation, see :func:`fastconv.activations.canonical`) applied to
    device array ``y``, into a new device array.  Elementwise names run as one kernel;
    ``softmax`` and ``log_softmax`` act along the last axis (Keras's default); a callable is
    called with the device array.

    Parameters
    ----------
    y : device array
    name : str, callable or None

    Returns
    -------
    numba device array
    """
    y = as_device_array(y)
    if name is None:
        return y
    if callable(name):
        return name(y)
    out = _empty(y.shape, y.dtype)
    if y.size == 0:
        return out
    last = y.shape[-1] if y.ndim else 1
    y2, o2 = _flat_rows(y, last), out.reshape((y.size // last, last))
    if name in ("softmax", "log_softmax"):
        _launch(_kernels(y.dtype)["softmax_rows"], o2.shape[0], y2, o2, int(name == "log_softmax"))
    else:
        _launch(_kernels(y.dtype)["bias_act"], y.size, y2, _dummy(y.dtype), False, _act_code(name), o2)
    return out


def _flat_rows(a, last):
    """Contiguous device array ``a`` as (rows, last)."""
    if not _contiguous(a):
        a = _cast(a, a.dtype)
    return a.reshape((a.size // last, last))


# ----------------------------------------------------------------------------- engine helpers

def bias_activation(x, b=None, activation=None):
    """``activation(x + b)`` with ``b`` along the last axis, on the device (a new array).

    Parameters
    ----------
    x : device array
    b : array_like or device array, optional
        Shape ``(x.shape[-1],)``.
    activation : str or None
        A canonical elementwise activation name.

    Returns
    -------
    numba device array
    """
    x = as_device_array(x)
    out = _empty(x.shape, x.dtype)
    if x.size:
        last = x.shape[-1]
        db = _dummy(x.dtype) if b is None else weight(b, x.dtype)
        _launch(_kernels(x.dtype)["bias_act"], x.size, _flat_rows(x, last), db, b is not None,
                _act_code(activation), out.reshape((x.size // last, last)))
    return out


def affine(x, scale, shift, activation=None):
    """``activation(x * scale + shift)`` per channel (last axis): inference BatchNormalization.

    Parameters
    ----------
    x : device array
    scale, shift : array_like or device array
        Shape ``(x.shape[-1],)``.
    activation : str or None

    Returns
    -------
    numba device array
    """
    x = as_device_array(x)
    out = _empty(x.shape, x.dtype)
    if x.size:
        last = x.shape[-1]
        _launch(_kernels(x.dtype)["affine_act"], x.size, _flat_rows(x, last), weight(scale, x.dtype),
                weight(shift, x.dtype), _act_code(activation), out.reshape((x.size // last, last)))
    return out


def merge(op, arrays):
    """Keras merge layers on same-shaped device arrays: ``op`` is "add", "subtract"
    (two inputs), "multiply", "maximum", "minimum" or "average".

    Returns
    -------
    numba device array
    """
    arrays = [as_device_array(a) for a in arrays]
    code = K.BINARY_CODES["add" if op == "average" else op]
    acc = arrays[0]
    for a in arrays[1:]:
        out = _empty(acc.shape, acc.dtype)
        _launch(_kernels(acc.dtype)["binary"], out.size, _flat_rows(acc, 1).reshape((acc.size,)),
                _flat_rows(a, 1).reshape((a.size,)), code, out.reshape((out.size,)))
        acc = out
    if op == "average":
        c = acc.shape[-1]
        acc = affine(acc, np.full(c, 1.0 / len(arrays)), np.zeros(c))
    return acc


def concatenate(arrays, axis=-1):
    """Device arrays (at most 5-D, equal but for ``axis``) joined along ``axis``.

    Returns
    -------
    numba device array
    """
    arrays = [as_device_array(a) for a in arrays]
    nd = arrays[0].ndim
    axis = axis % nd
    shape = list(arrays[0].shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    out = _empty(shape, arrays[0].dtype)
    off = 0
    for a in arrays:
        _copy_into(a, out[(slice(None),) * axis + (slice(off, off + a.shape[axis]),)])
        off += a.shape[axis]
    return out


def dense(x, w, b=None, activation=None):
    """Keras Dense on the device: ``activation(x @ w + b)`` for ``x`` (..., C), ``w`` (C, F),
    by the tiled GEMM kernel.

    Returns
    -------
    numba device array of shape (..., F)
    """
    x = as_device_array(x)
    dw = weight(w, x.dtype)
    c, f = dw.shape
    rows = x.size // c if c else int(np.prod(x.shape[:-1]))
    x5 = _flat_rows(x, c).reshape((rows, 1, 1, 1, c))
    db = None if b is None else weight(b, x.dtype)
    y = _gemm(x5, dw, db, (1, 1, 1), (1, 1, 1), (1, 1, 1), (0, 0, 0), 1, (1, 1, 1), activation, False)
    return y.reshape(tuple(x.shape[:-1]) + (f,))


def reshape(x, shape):
    """A device array with a new shape (a view of a contiguous array; copied otherwise)."""
    x = as_device_array(x)
    if not _contiguous(x):
        x = _cast(x, x.dtype)
    return x.reshape(tuple(shape))


def flatten(x):
    """(N, ...) -> (N, prod(...)), as Keras Flatten on channels-last data."""
    x = as_device_array(x)
    return reshape(x, (x.shape[0], int(np.prod(x.shape[1:]))))


def _copy_into(src, dst):
    """``dst[...] = src`` for device arrays (views) of the same shape, at most 5-D."""
    if src.size:
        lead = (1,) * (5 - len(src.shape))
        _launch(_kernels(dst.dtype)["copy5"], src.size,
                _view(src, lead + tuple(src.shape), (0,) * len(lead) + tuple(src.strides)),
                _view(dst, lead + tuple(dst.shape), (0,) * len(lead) + tuple(dst.strides)))


def pad(x, widths):
    """Zero padding on the device: ``widths`` as :func:`numpy.pad`'s, one (before, after) per axis
    (at most 5 axes). Returns a new device array."""
    x = as_device_array(x)
    shape = tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, widths))
    out = _empty(shape, x.dtype)
    if out.size:
        _launch(_kernels(x.dtype)["fill"], out.size, out.reshape((out.size,)), x.dtype.type(0))
        _copy_into(x, out[tuple(slice(lo, lo + d) for d, (lo, _) in zip(x.shape, widths))])
    return out


def crop(x, index):
    """``x[index]`` (a tuple of slices) as a new contiguous device array."""
    x = as_device_array(x)
    view = x[tuple(index)]
    out = _empty(view.shape, x.dtype)
    _copy_into(view, out)
    return out


def repeat(x, count, axis):
    """:func:`numpy.repeat` of each element ``count`` times along ``axis`` (nearest upsampling)."""
    x = as_device_array(x)
    if not _contiguous(x):
        x = _cast(x, x.dtype)
    axis %= len(x.shape)
    shape = tuple(x.shape)
    lead = int(np.prod(shape[:axis]))
    trail = int(np.prod(shape[axis + 1:]))
    out = _empty(shape[:axis] + (shape[axis] * count,) + shape[axis + 1:], x.dtype)
    if out.size:
        # out as (lead, n, count, trail) reads x as (lead, n, 1, trail) with a zero stride
        item = x.dtype.itemsize
        src = _view(x, (lead, shape[axis], count, trail),
                    (shape[axis] * trail * item, trail * item, 0, item))
        _copy_into(src, out.reshape((lead, shape[axis], count, trail)))
    return out
