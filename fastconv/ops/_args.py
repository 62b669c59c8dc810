"""Argument validation and Keras shape/padding math, in one place.

Every public op calls these helpers to turn what the user passed into
explicit per-axis integers before anything is dispatched to a backend.
The shape formulas are Keras 3's (``keras/src/ops/operation_utils.py`` and
``keras/src/backend/common/backend_utils.py``):

* "valid": ``out = (n - k_eff) // s + 1`` with ``k_eff = (k - 1) * d + 1``;
* "same": ``out = ceil(n / s)``; the total padding
  ``max((out - 1) * s + k_eff - n, 0)`` is split with the smaller half
  before and the larger half after;
* "causal" (1-D convolutions): ``k_eff - 1`` zeros before, then "valid";
* transposed convolutions: the output length of
  ``compute_conv_transpose_output_shape`` and TensorFlow's padding
  (``pad_before = max((n - 1) * s + k_eff - out, 0) // 2`` for "same").
"""

import numbers
import operator

import numpy as np

from ..errors import InvalidArgumentError, InvalidDTypeError, InvalidShapeError

DATA_FORMATS = ("channels_last", "channels_first")
_MAX_INT = 2 ** 31  # sizes, strides and the like beyond this are nonsense, and overflow kernels


def int_tuple(value, n, name, op, *, minimum=1, allow_none=False):
    """``value`` (an int or a sequence of ``n`` ints) as a tuple of ``n`` ints >= ``minimum``."""
    if value is None and allow_none:
        return None
    if type(value) is int and minimum <= value < _MAX_INT:  # the common cases, checked quickly
        return (value,) * n
    if type(value) is tuple and len(value) == n and all(type(v) is int and minimum <= v < _MAX_INT for v in value):
        return value
    what = "positive" if minimum == 1 else "non-negative"
    expected = (f"a {what} integer or a tuple of {n} {what} integers")
    try:
        if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
            values = (operator.index(value),) * n
        else:
            values = tuple(value)
            if len(values) != n or any(
                    isinstance(v, bool) or not isinstance(v, (numbers.Integral, np.integer))
                    for v in values):
                raise TypeError
            values = tuple(operator.index(v) for v in values)
    except TypeError:
        raise InvalidArgumentError(f"{op}: argument `{name}` must be {expected}; got {value!r}") from None
    if any(v < minimum for v in values):
        raise InvalidArgumentError(f"{op}: argument `{name}` must be {expected}; got {value!r}")
    if any(v >= _MAX_INT for v in values):
        raise InvalidArgumentError(f"{op}: argument `{name}` must be below 2**31; got {value!r}")
    return values


def padding_mode(padding, op, allowed=("valid", "same"), explicit_axes=None):
    """Lower-cased padding name, checked against ``allowed``; or, where ``explicit_axes`` is
    given (forward convolutions), explicit zero padding: one ``(before, after)`` pair of
    non-negative integers per spatial axis, returned as a tuple of pairs."""
    if isinstance(padding, str) and padding.lower() in allowed:
        return padding.lower()
    expected = f"one of {', '.join(map(repr, allowed))}"
    if explicit_axes is not None:
        expected += f", or {explicit_axes} (before, after) pairs of non-negative integers"
        if not isinstance(padding, str):
            try:
                pairs = tuple(tuple(p) for p in padding)
            except TypeError:
                pairs = None
            if pairs is not None and len(pairs) == explicit_axes and all(len(p) == 2 for p in pairs):
                return tuple(int_tuple(p, 2, "padding", op, minimum=0) for p in pairs)
    raise InvalidArgumentError(f"{op}: argument `padding` must be {expected}; got {padding!r}")


def data_format(value, op):
    """``"channels_last"`` or ``"channels_first"`` (``None`` means channels_last)."""
    if value is None:
        return "channels_last"
    if not isinstance(value, str) or value.lower() not in DATA_FORMATS:
        raise InvalidArgumentError(
            f"{op}: argument `data_format` must be 'channels_last' or 'channels_first'; got {value!r}")
    return value.lower()


def is_device_array(x):
    """Whether ``x`` is a CUDA device array: a numba.cuda device array (or the simulator's),
    or any object with ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors)."""
    if type(x) is np.ndarray:  # the common case, answered without attribute lookups
        return False
    return hasattr(x, "__cuda_array_interface__") or getattr(x, "__cuda_ndarray__", False) is True


def as_array(x, name, op):
    """``x`` as a NumPy array of a real numeric dtype (not copied if it already is one).

    A CUDA device array is accepted for ``x`` only (weights are host arrays) and stays
    on the device, as a numba device array: it has the ``shape``, ``ndim`` and ``dtype``
    that validation reads; the ops hand it to the cuda backend.
    """
    if is_device_array(x):
        if name != "x":
            raise InvalidArgumentError(
                f"{op}: argument `{name}` is a CUDA device array; only `x` may be one "
                f"(pass weights as NumPy arrays)")
        from .. import backends
        arr = backends._module("cuda").as_device_array(x)
        if np.dtype(arr.dtype).kind not in "biuf":
            raise InvalidDTypeError(f"{op}: argument `{name}` must be a real numeric array; "
                                    f"got dtype {arr.dtype}")
        return arr
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise InvalidDTypeError(f"{op}: argument `{name}` cannot be read as a numeric array ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise InvalidDTypeError(
            f"{op}: argument `{name}` must be a real numeric array (float32, float64, integer or bool); "
            f"got dtype {arr.dtype}")
    return arr


def compute_dtype(*arrays):
    """float64 if any array is float64, else float32 (Keras turns integers and bools into float32)."""
    return np.dtype(np.float64) if any(a is not None and a.dtype == np.float64 for a in arrays) \
        else np.dtype(np.float32)


def check_rank(arr, rank, name, op, layout):
    if arr.ndim != rank:
        raise InvalidShapeError(
            f"{op}: argument `{name}` must be a {rank}-D array {layout}; got shape {arr.shape}")


def spatial_layout(nsp, fmt):
    axes = ("steps",) if nsp == 1 else ("height", "width") if nsp == 2 else ("depth", "height", "width")
    inner = ", ".join(axes)
    return f"(batch, {inner}, channels)" if fmt == "channels_last" else f"(batch, channels, {inner})"


def split_input(x, nsp, fmt, op, name="x"):
    """Check ``x`` has rank ``nsp + 2``; return ``(x, spatial_shape, channels)``."""
    check_rank(x, nsp + 2, name, op, spatial_layout(nsp, fmt))
    if fmt == "channels_last":
        return x.shape[1:-1], x.shape[-1]
    return x.shape[2:], x.shape[1]


def conv_geometry(spatial, kernel, strides, dilation, padding, op, what="kernel"):
    """Output sizes and ``(before, after)`` zero padding per axis for a forward window op."""
    out, pads = [], []
    for axis, (n, k, s, d) in enumerate(zip(spatial, kernel, strides, dilation)):
        keff = (k - 1) * d + 1
        if n == 0:
            raise InvalidShapeError(f"{op}: input has size 0 along spatial axis {axis}")
        if not isinstance(padding, str):  # explicit (before, after) zeros
            lo, hi = padding[axis]
            if n + lo + hi < keff:
                raise InvalidShapeError(
                    f"{op}: the {what} (size {k}, dilated to {keff}) is larger than the padded input "
                    f"(size {n} + {lo} + {hi}) along spatial axis {axis}")
            o = (n + lo + hi - keff) // s + 1
            pads.append((lo, hi))
        elif padding == "valid":
            if n < keff:
                raise InvalidShapeError(
                    f"{op}: the {what} (size {k}, dilated to {keff}) is larger than the input "
                    f"(size {n}) along spatial axis {axis} with padding='valid'")
            o = (n - keff) // s + 1
            pads.append((0, 0))
        elif padding == "same":
            o = -(-n // s)
            total = max((o - 1) * s + keff - n, 0)
            pads.append((total // 2, total - total // 2))
        elif padding == "causal":
            o = (n - 1) // s + 1
            pads.append((keff - 1, 0))
        else:  # pragma: no cover - padding_mode() has checked
            raise AssertionError(padding)
        out.append(o)
    return tuple(out), tuple(pads)


def conv_transpose_geometry(spatial, kernel, strides, dilation, padding, output_padding, op):
    """Output sizes and padding-before per axis for a transposed convolution (Keras/TF rules)."""
    out, before = [], []
    for axis, (n, k, s, d) in enumerate(zip(spatial, kernel, strides, dilation)):
        if n == 0:
            raise InvalidShapeError(f"{op}: input has size 0 along spatial axis {axis}")
        keff = (k - 1) * d + 1
        op_ = None if output_padding is None else output_padding[axis]
        if padding == "valid":
            o = (n - 1) * s + keff + (max(keff, s) - keff if op_ is None else op_)
            before.append(0)
        else:
            o = n * s if op_ is None else (n - 1) * s + keff % 2 + op_
            before.append(max((n - 1) * s + keff - o, 0) // 2)
        if o <= 0:
            raise InvalidShapeError(f"{op}: the output would be empty along spatial axis {axis}")
        out.append(o)
    return tuple(out), tuple(before)


def pool_geometry(spatial, pool, strides, padding, op):
    return conv_geometry(spatial, pool, strides, (1,) * len(pool), padding, op, what="pool window")


def refuse_strided_dilation(strides, dilation, op):
    """Keras's Conv and ConvTranspose layers refuse strides > 1 together with dilation > 1."""
    if max(strides) > 1 and max(dilation) > 1:
        raise InvalidArgumentError(
            f"{op}: `strides > 1` is not supported together with `dilation_rate > 1` (as in Keras); "
            f"got strides={strides} and dilation_rate={dilation}")


def vector(arr, length, name, op, what):
    """Check a 1-D parameter vector (bias) of the given length."""
    if arr.ndim != 1 or arr.shape[0] != length:
        raise InvalidShapeError(
            f"{op}: argument `{name}` must have shape ({length},) ({what}); got shape {arr.shape}")


# ---------------------------------------------------------------- validated calls, remembered
# An op's validation and geometry depend only on its arrays' shapes and dtypes and on its
# other arguments; repeating them costs several microseconds per call (a tenth of a small
# layer's time), so they are remembered under a key of exactly those (:func:`call_key`).
_MEMO = {}
_MEMO_MAX = 4096


# the types of argument a key takes as they are (bools only at the top level)
_SCALARS = frozenset({int, str, type(None), bool})


def _plain(v):
    """Whether ``v`` is an int, a string, None, or a tuple of those (bools excluded: True == 1)."""
    t = type(v)
    if t is int or t is str or v is None:
        return True
    return t is tuple and all(_plain(e) for e in v)


def call_key(op, arrays, params):
    """The key under which a call's checked geometry is remembered, or None (not remembered).

    ``arrays`` are the call's array arguments (or None): each must be a NumPy ndarray
    (exactly; no subclass, no device array) and enters the key by shape and dtype.
    ``params`` are the other arguments: ints, strings, None, tuples of those, and bools at
    the top level, each keyed with its type.  Anything else (lists, NumPy integers,
    callables) makes the call checked from scratch every time."""
    key = [op]
    for a in arrays:
        if type(a) is np.ndarray:
            key.append((a.shape, a.dtype))
        elif a is None:
            key.append(None)
        else:
            return None
    for p in params:
        t = type(p)
        if not (t in _SCALARS or t is tuple and _plain(p)):
            return None
        key.append((t, p))
    return tuple(key)


def remembered(key, compute):
    """``compute()``'s result for ``key`` (see :func:`call_key`), computed once; a None key
    computes it every time.  ``compute`` raises for bad input, and nothing is remembered."""
    if key is None:
        return compute()
    value = _MEMO.get(key)
    if value is None:
        value = compute()
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()
        _MEMO[key] = value
    return value
