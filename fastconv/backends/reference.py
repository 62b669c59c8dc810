"""The reference backend: vectorised NumPy, the oracle every fast backend is tested against.

Kernel contract (shared by every backend)
-----------------------------------------
The ops layer has validated everything; a backend receives C-contiguous
arrays of one float dtype (float32 or float64) and explicit integers, always
in the 3-D channels-last form (1-D and 2-D ops arrive with unit spatial axes):

* ``conv(x, w, b, strides, dilation, pads, groups, out_shape, activation)``:
  ``x`` (N, D, H, W, C), ``w`` (KD, KH, KW, C // groups, F) (Keras layout),
  ``b`` (F,) or None, ``strides``/``dilation`` 3-tuples, ``pads`` three
  ``(before, after)`` zero paddings, ``out_shape`` the 3 output sizes;
  returns (N, OD, OH, OW, F) with bias and activation applied.
* ``depthwise_conv(x, w, b, strides, dilation, pads, out_shape, activation)``:
  ``w`` (KD, KH, KW, C, M); output channel ``c * M + m``.
* ``conv_transpose(x, w, b, strides, dilation, pads_before, out_shape, activation)``:
  ``w`` (KD, KH, KW, F, C); input position ``i`` and tap ``t`` write to
  output position ``i * s + t * d - pads_before`` (the adjoint of ``conv``).
* ``max_pool(x, pool, strides, pads, out_shape)`` and ``avg_pool(...)``:
  padded positions never win a max and are not counted in an average.
* ``global_max_pool(x)``, ``global_avg_pool(x)``: (N, C).
* optional, ``separable_conv(x, dk, pk, b, strides, dilation, pads, out_shape,
  activation)``: ``depthwise_conv`` by ``dk`` (KD, KH, KW, C, M) without bias,
  then a 1x1 ``conv`` by ``pk`` (1, 1, 1, C * M, F) with ``b`` and the
  activation, in one kernel; where a backend lacks it the ops call the two.

``activation`` is None or a name from :data:`fastconv.activations.ELEMENTWISE`.
"""

import itertools

import numpy as np

from .. import activations

NAME = "reference"
OPS = frozenset({"conv", "depthwise_conv", "conv_transpose", "max_pool", "avg_pool",
                 "global_max_pool", "global_avg_pool"})


def _taps(shape):
    return itertools.product(*(range(k) for k in shape))


def _window(xp, start, strides, out_shape):
    """The strided view of padded input ``xp`` seen by one kernel tap."""
    return xp[(slice(None),) + tuple(
        slice(t, t + (o - 1) * s + 1, s) for t, s, o in zip(start, strides, out_shape))]


def _pad(x, pads, value=0):
    if not any(lo or hi for lo, hi in pads):
        return x
    return np.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),), constant_values=value)


def _finish(y, b, activation):
    if b is not None:
        y += b
    return activations.apply(activation, y)


def conv(x, w, b, strides, dilation, pads, groups, out_shape, activation):
    xp = _pad(x, pads)
    n = x.shape[0]
    cg, f = w.shape[3], w.shape[4]
    y = np.zeros((n,) + tuple(out_shape) + (f,), dtype=x.dtype)
    if groups > 1:
        fg = f // groups
        yg = y.reshape(y.shape[:-1] + (groups, 1, fg))
    for tap in _taps(w.shape[:3]):
        patch = _window(xp, [t * d for t, d in zip(tap, dilation)], strides, out_shape)
        wt = w[tap]
        if groups == 1:
            y += patch @ wt
        else:
            pg = patch.reshape(patch.shape[:-1] + (groups, 1, cg))
            yg += pg @ wt.reshape(cg, groups, fg).transpose(1, 0, 2)
    return _finish(y, b, activation)


def depthwise_conv(x, w, b, strides, dilation, pads, out_shape, activation):
    xp = _pad(x, pads)
    c, m = w.shape[3], w.shape[4]
    y = np.zeros((x.shape[0],) + tuple(out_shape) + (c, m), dtype=x.dtype)
    for tap in _taps(w.shape[:3]):
        patch = _window(xp, [t * d for t, d in zip(tap, dilation)], strides, out_shape)
        y += patch[..., None] * w[tap]
    return _finish(y.reshape(y.shape[:-2] + (c * m,)), b, activation)


def conv_transpose(x, w, b, strides, dilation, pads_before, out_shape, activation):
    n, insp = x.shape[0], x.shape[1:4]
    f = w.shape[3]
    full = [max((i - 1) * s + (k - 1) * d + 1, p + o)
            for i, s, k, d, p, o in zip(insp, strides, w.shape[:3], dilation, pads_before, out_shape)]
    buf = np.zeros((n,) + tuple(full) + (f,), dtype=x.dtype)
    for tap in _taps(w.shape[:3]):
        view = _window(buf, [t * d for t, d in zip(tap, dilation)], strides, insp)
        view += x @ w[tap].T
    y = np.ascontiguousarray(buf[(slice(None),) + tuple(
        slice(p, p + o) for p, o in zip(pads_before, out_shape))])
    return _finish(y, b, activation)


def max_pool(x, pool, strides, pads, out_shape):
    xp = _pad(x, pads, -np.inf)
    y = None
    for tap in _taps(pool):
        patch = _window(xp, tap, strides, out_shape)
        y = patch.copy() if y is None else np.maximum(y, patch, out=y)
    return y


def _real_counts(n, k, s, lo, o):
    """How many unpadded elements each of ``o`` windows covers along one axis."""
    start = np.arange(o) * s - lo
    return (np.minimum(start + k, n) - np.maximum(start, 0)).astype(np.float64)


def avg_pool(x, pool, strides, pads, out_shape):
    xp = _pad(x, pads)
    y = np.zeros((x.shape[0],) + tuple(out_shape) + (x.shape[-1],), dtype=x.dtype)
    for tap in _taps(pool):
        y += _window(xp, tap, strides, out_shape)
    cd, ch, cw = (_real_counts(n, k, s, p[0], o)
                  for n, k, s, p, o in zip(x.shape[1:4], pool, strides, pads, out_shape))
    counts = cd[:, None, None] * ch[None, :, None] * cw[None, None, :]
    y /= counts[..., None].astype(x.dtype)
    return y


def global_max_pool(x):
    return x.max(axis=(1, 2, 3))


def global_avg_pool(x):
    return x.mean(axis=(1, 2, 3), dtype=x.dtype)


def algorithm(op, *args):
    """How this backend computes kernel-contract ``op`` (for :func:`fastconv.explain`)."""
    return {"conv": "NumPy: one matmul per kernel tap over a strided view of the padded input",
            "depthwise_conv": "NumPy: one broadcast multiply-add per kernel tap",
            "conv_transpose": "NumPy: one matmul per kernel tap, added into a strided view of the output",
            "max_pool": "NumPy: running maximum over the window's strided views",
            "avg_pool": "NumPy: sum over the window's strided views, divided by the real counts",
            "global_max_pool": "NumPy: max over the spatial axes",
            "global_avg_pool": "NumPy: mean over the spatial axes"}[op]
