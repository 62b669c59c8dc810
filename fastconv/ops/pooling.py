"""Max, average and global pooling in 1-D, 2-D and 3-D, with Keras 3 semantics."""

import collections

import numpy as np

from . import _args as A
from ._layout import axes3, from_3d, kernel, to_3d

__all__ = [
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "global_max_pool1d", "global_max_pool2d", "global_max_pool3d",
    "global_avg_pool1d", "global_avg_pool2d", "global_avg_pool3d",
]


PoolPlan = collections.namedtuple("PoolPlan", "op fmt x spatial channels pool strides out pads")
GlobalPlan = collections.namedtuple("GlobalPlan", "op fmt x spatial channels keepdims")


def pool_plan(kind, nsp, x, pool_size, strides, padding, data_format):
    """Validate a pooling call's arguments and work out its geometry (shared with fastconv.cost)."""
    op = f"{kind}_pool{nsp}d"
    fmt = A.data_format(data_format, op)
    padding = A.padding_mode(padding, op)
    x = A.as_array(x, "x", op)
    spatial, channels = A.split_input(x, nsp, fmt, op)
    pool = A.int_tuple(pool_size, nsp, "pool_size", op)
    strides = pool if strides is None else A.int_tuple(strides, nsp, "strides", op)
    out, pads = A.pool_geometry(spatial, pool, strides, padding, op)
    return PoolPlan(op, fmt, x, spatial, channels, pool, strides, out, pads)


def global_plan(kind, nsp, x, keepdims, data_format):
    """Validate a global pooling call's arguments."""
    op = f"global_{kind}_pool{nsp}d"
    fmt = A.data_format(data_format, op)
    x = A.as_array(x, "x", op)
    spatial, channels = A.split_input(x, nsp, fmt, op)
    if 0 in spatial:
        raise A.InvalidShapeError(f"{op}: argument `x` has an empty spatial axis: shape {x.shape}")
    if not isinstance(keepdims, (bool, np.bool_)):
        raise A.InvalidArgumentError(f"{op}: argument `keepdims` must be True or False; got {keepdims!r}")
    return GlobalPlan(op, fmt, x, spatial, channels, bool(keepdims))


def _pool(kind, nsp, x, pool_size, strides, padding, data_format, backend):
    def geometry():
        p = pool_plan(kind, nsp, x, pool_size, strides, padding, data_format)
        return (p.op, p.fmt, A.compute_dtype(p.x), axes3(p.pool, nsp, 1), axes3(p.strides, nsp, 1),
                axes3(p.pads, nsp, (0, 0)), axes3(p.out, nsp, 1))
    op, fmt, dt, *rest = A.remembered(
        A.call_key((kind, nsp), (x,), (pool_size, strides, padding, data_format)), geometry)
    x3 = to_3d(A.as_array(x, "x", op), nsp, fmt, dt)
    return from_3d(kernel(backend, f"{kind}_pool", x3)(x3, *rest), nsp, fmt)


def _global(kind, nsp, x, keepdims, data_format, backend):
    def geometry():
        p = global_plan(kind, nsp, x, keepdims, data_format)
        return p.op, p.fmt, A.compute_dtype(p.x), p.keepdims
    op, fmt, dt, keep = A.remembered(A.call_key(("global", kind, nsp), (x,), (keepdims, data_format)), geometry)
    x3 = to_3d(A.as_array(x, "x", op), nsp, fmt, dt)
    y = kernel(backend, f"global_{kind}_pool", x3)(x3)
    if keep:
        y = y.reshape((y.shape[0],) + (1,) * nsp + (y.shape[1],)) if fmt == "channels_last" \
            else y.reshape(y.shape + (1,) * nsp)
    return y


def _make_pool(kind, nsp):
    default = 2 if nsp == 1 else (2,) * nsp

    def pool(x, pool_size=default, strides=None, padding="valid", *, data_format="channels_last",
             backend="auto"):
        return _pool(kind, nsp, x, pool_size, strides, padding, data_format, backend)

    name = f"{kind}_pool{nsp}d"
    pool.__name__ = pool.__qualname__ = name
    layer = f"{'Max' if kind == 'max' else 'Average'}Pooling{nsp}D"
    if kind == "max":
        what = ("    The maximum over each window; with ``padding=\"same\"`` a padded position\n"
                "    never wins (as if it held -inf).\n")
    else:
        what = ("    The mean over each window; with ``padding=\"same\"`` each window is divided by the\n"
                "    number of real (unpadded) elements it covers, not by the window size.\n")
    shape = (2,) + (4,) * nsp + (3,)
    expected = (2,) + (2,) * nsp + (3,)
    pool.__doc__ = f"""{kind.capitalize()} pooling over {nsp}-D windows (Keras ``{layer}``).

{what}
    Parameters
    ----------
    x : array_like
        ``{A.spatial_layout(nsp, "channels_last")}`` or channels first.
    pool_size : int or tuple of int, default {default}
        Window size per spatial axis.
    strides : int or tuple of int, optional
        Step per spatial axis; defaults to ``pool_size``.
    padding : {{"valid", "same"}}, default "valid"
        "same" gives ``ceil(n / stride)`` outputs, the odd padding after.
    data_format : {{"channels_last", "channels_first"}}, default "channels_last"
    backend : str, default "auto"

    Returns
    -------
    numpy.ndarray
        float64 for float64 input, else float32.

    Raises
    ------
    InvalidShapeError, InvalidArgumentError, InvalidDTypeError, BackendError

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.{name}(np.ones({shape})).shape
    {expected}
"""
    return pool


def _make_global(kind, nsp):
    def pool(x, keepdims=False, *, data_format="channels_last", backend="auto"):
        return _global(kind, nsp, x, keepdims, data_format, backend)

    name = f"global_{kind}_pool{nsp}d"
    pool.__name__ = pool.__qualname__ = name
    layer = f"Global{'Max' if kind == 'max' else 'Average'}Pooling{nsp}D"
    shape = (2,) + (4,) * nsp + (3,)
    pool.__doc__ = f"""Global {kind} pooling over all {nsp}-D positions (Keras ``{layer}``).

    Parameters
    ----------
    x : array_like
        ``{A.spatial_layout(nsp, "channels_last")}`` or channels first.
    keepdims : bool, default False
        Keep the spatial axes with size 1.
    data_format : {{"channels_last", "channels_first"}}, default "channels_last"
    backend : str, default "auto"

    Returns
    -------
    numpy.ndarray
        ``(batch, channels)``, or with unit spatial axes when ``keepdims``.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.{name}(np.ones({shape})).shape
    (2, 3)
    >>> fastconv.{name}(np.ones({shape}), keepdims=True).shape
    {(2,) + (1,) * nsp + (3,)}
"""
    return pool


max_pool1d, max_pool2d, max_pool3d = (_make_pool("max", n) for n in (1, 2, 3))
avg_pool1d, avg_pool2d, avg_pool3d = (_make_pool("avg", n) for n in (1, 2, 3))
global_max_pool1d, global_max_pool2d, global_max_pool3d = (_make_global("max", n) for n in (1, 2, 3))
global_avg_pool1d, global_avg_pool2d, global_avg_pool3d = (_make_global("avg", n) for n in (1, 2, 3))
