"""Moving arrays between the user's layout and the backends' 3-D channels-last form."""

import numpy as np

from .. import activations, backends
from ..errors import BackendError
from ._args import is_device_array


def to_3d(x, nsp, fmt, dtype):
    """(N, *spatial, C) or (N, C, *spatial) -> contiguous (N, D, H, W, C) of ``dtype``."""
    if type(x) is np.ndarray and fmt == "channels_last":  # the common case, first
        return np.ascontiguousarray(x.reshape(x.shape[:1] + (1,) * (3 - nsp) + x.shape[1:]), dtype=dtype)
    if is_device_array(x):
        return backends._module("cuda").to_3d(x, nsp, fmt, dtype)
    if fmt == "channels_first":
        x = np.moveaxis(x, 1, -1)
    x = x.reshape((x.shape[0],) + (1,) * (3 - nsp) + x.shape[1:])
    return np.ascontiguousarray(x, dtype=dtype)


def from_3d(y, nsp, fmt):
    """Inverse of :func:`to_3d` for a result (N, D, H, W, C)."""
    if is_device_array(y):
        return backends._module("cuda").from_3d(y, nsp, fmt)
    y = y.reshape((y.shape[0],) + y.shape[4 - nsp:])
    if fmt == "channels_first":
        y = np.ascontiguousarray(np.moveaxis(y, -1, 1))
    return y


def kernel_3d(w, nsp, dtype):
    """A kernel (*k, a, b) -> contiguous (1.., *k, a, b) with 3 spatial axes."""
    return np.ascontiguousarray(w.reshape((1,) * (3 - nsp) + w.shape), dtype=dtype)


def axes3(values, nsp, fill):
    """Per-axis values for ``nsp`` spatial axes, led by unit entries up to 3 axes."""
    return (fill,) * (3 - nsp) + tuple(values)


def kernel(backend, op, x3, *weights):
    """The backend's kernel for ``op``; a CUDA device array ``x3`` needs ``backend="cuda"``.

    A call with an empty operand (no images, pixels, channels or filters) runs on the
    reference backend on the host: its result is empty or the bias alone and costs
    nothing, and the compiled kernels are written for at least one of each."""
    if backend != "cuda":
        if is_device_array(x3):
            raise BackendError(
                f"x is a CUDA device array: pass backend='cuda' (got backend={backend!r}; 'auto' "
                f"never runs on the GPU), or copy x to the host first")
        if x3.size == 0 or 0 in [w.size for w in weights]:
            backend = "reference"
    return backends.resolve(backend, op)


def run_conv_like(op, backend, nsp, fmt, activation, *args):
    """Dispatch a convolution-type kernel with its elementwise activation fused, then
    apply an axis-dependent activation (softmax) in the user's layout, as Keras does."""
    fused = activation if isinstance(activation, str) and activation in activations.ELEMENTWISE else None
    y = kernel(backend, op, args[0], *[a for a in args[1:3] if isinstance(a, np.ndarray)])(*args, fused)
    y = from_3d(y, nsp, fmt)
    if activation is not None and fused is None:
        y = backends._module("cuda").activation(y, activation) if is_device_array(y) \
            else activations.apply(activation, y)
    return y
