"""Keras activations on NumPy arrays.

Each function follows the Keras 3 definition of the same name (keyword
defaults included, e.g. ``leaky_relu`` slopes by 0.2 like
``keras.activations.leaky_relu``; the ``LeakyReLU`` *layer* uses 0.3).
All of them accept any array-like and return a new array of the input's
floating dtype (integers become float32, as in Keras).

The names listed in :data:`ELEMENTWISE` can be fused into a convolution by
the backends; ``softmax`` and ``log_softmax`` act along an axis and are
applied by the ops layer after the output is in its final data format.

Examples
--------
>>> import numpy as np
>>> from fastconv import activations
>>> activations.relu6(np.array([-1.0, 3.0, 9.0]))
array([0., 3., 6.])
>>> activations.get("hard_sigmoid")(np.array([0.0]))
array([0.5])
"""

import math

import numpy as np
from scipy import special

from .errors import InvalidArgumentError

__all__ = [
    "get", "names", "apply", "ELEMENTWISE",
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu",
    "sigmoid", "hard_sigmoid", "silu", "swish", "hard_silu", "hard_swish",
    "tanh", "hard_tanh", "tanh_shrink", "softmax", "log_softmax", "softplus",
    "softsign", "exponential", "mish", "log_sigmoid", "squareplus",
    "sparse_plus", "soft_shrink", "hard_shrink",
]

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _float(x):
    x = np.asarray(x)
    if x.dtype.kind in "fc" and x.dtype != np.float16:
        return x
    if x.dtype.kind not in "biuf":
        raise InvalidArgumentError(
            f"activation input must be a real numeric array; got dtype {x.dtype}")
    return x.astype(np.float32)


def linear(x):
    """Identity: returns ``x`` unchanged (as a float array).

    >>> linear([1, -2]).tolist()
    [1.0, -2.0]
    """
    return np.array(_float(x), copy=True)


def relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Rectified linear unit, Keras's ``relu`` with all its options.

    ``x`` above ``threshold`` passes (capped at ``max_value`` if given);
    below it the result is ``negative_slope * (x - threshold)``.

    >>> relu(np.array([-2.0, 0.5, 7.0]), max_value=6.0).tolist()
    [0.0, 0.5, 6.0]
    """
    x = _float(x)
    if negative_slope == 0 and threshold == 0:
        y = np.maximum(x, x.dtype.type(0))
    else:
        y = np.where(x > threshold, x, x.dtype.type(negative_slope) * (x - x.dtype.type(threshold)))
        y = y.astype(x.dtype, copy=False)
    if max_value is not None:
        np.minimum(y, x.dtype.type(max_value), out=y)
    return y


def relu6(x):
    """``min(max(x, 0), 6)``.

    >>> relu6(np.array([-1.0, 8.0])).tolist()
    [0.0, 6.0]
    """
    x = _float(x)
    return np.clip(x, 0, 6).astype(x.dtype, copy=False)


def leaky_relu(x, negative_slope=0.2):
    """``x`` if ``x >= 0`` else ``negative_slope * x`` (Keras function default 0.2).

    >>> leaky_relu(np.array([-1.0, 2.0])).tolist()
    [-0.2, 2.0]
    """
    x = _float(x)
    return np.where(x >= 0, x, x * x.dtype.type(negative_slope))


def elu(x, alpha=1.0):
    """``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``.

    >>> round(float(elu(np.array([-1.0]))[0]), 4)
    -0.6321
    """
    x = _float(x)
    return np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)))


def selu(x):
    """Scaled ELU with Keras's constants (alpha ~ 1.6733, scale ~ 1.0507).

    >>> round(float(selu(np.array([1.0]))[0]), 4)
    1.0507
    """
    x = _float(x)
    t = x.dtype.type
    return t(_SELU_SCALE) * np.where(x > 0, x, t(_SELU_ALPHA) * np.expm1(np.minimum(x, 0)))


def celu(x, alpha=1.0):
    """``max(0, x) + min(0, alpha * (exp(x / alpha) - 1))``.

    >>> celu(np.array([2.0])).tolist()
    [2.0]
    """
    x = _float(x)
    t = x.dtype.type
    return np.maximum(x, t(0)) + np.minimum(t(0), t(alpha) * np.expm1(np.minimum(x, 0) / t(alpha)))


def gelu(x, approximate=False):
    """Gaussian error linear unit; exact (erf) unless ``approximate=True`` (tanh form).

    Keras's ``gelu`` activation defaults to the exact form.

    >>> round(float(gelu(np.array([1.0]))[0]), 4)
    0.8413
    """
    x = _float(x)
    t = x.dtype.type
    if approximate:
        c = t(math.sqrt(2.0 / math.pi))
        return t(0.5) * x * (t(1) + np.tanh(c * (x + t(0.044715) * x ** 3)))
    # erfc(-x / sqrt 2) = 1 + erf(x / sqrt 2), without the cancellation for large negative x
    return (t(0.5) * x * special.erfc(-x / t(math.sqrt(2.0)))).astype(x.dtype, copy=False)


def sigmoid(x):
    """Logistic sigmoid ``1 / (1 + exp(-x))``.

    >>> sigmoid(np.array([0.0])).tolist()
    [0.5]
    """
    x = _float(x)
    return special.expit(x)


def hard_sigmoid(x):
    """Keras 3 hard sigmoid: ``relu6(x + 3) / 6``.

    >>> hard_sigmoid(np.array([-4.0, 0.0, 4.0])).tolist()
    [0.0, 0.5, 1.0]
    """
    x = _float(x)
    return (np.clip(x + x.dtype.type(3), 0, 6) / x.dtype.type(6)).astype(x.dtype, copy=False)


def silu(x):
    """``x * sigmoid(x)`` (also called swish).

    >>> silu(np.array([0.0])).tolist()
    [0.0]
    """
    x = _float(x)
    return x * special.expit(x)


swish = silu


def hard_silu(x):
    """``x * hard_sigmoid(x)`` (also called hard swish).

    >>> hard_silu(np.array([-4.0, 4.0])).tolist()
    [-0.0, 4.0]
    """
    x = _float(x)
    return x * hard_sigmoid(x)


hard_swish = hard_silu


def tanh(x):
    """Hyperbolic tangent.

    >>> tanh(np.array([0.0])).tolist()
    [0.0]
    """
    return np.tanh(_float(x))


def hard_tanh(x):
    """``clip(x, -1, 1)``.

    >>> hard_tanh(np.array([-3.0, 0.5])).tolist()
    [-1.0, 0.5]
    """
    x = _float(x)
    return np.clip(x, -1, 1).astype(x.dtype, copy=False)


def tanh_shrink(x):
    """``x - tanh(x)``.

    >>> tanh_shrink(np.array([0.0])).tolist()
    [0.0]
    """
    x = _float(x)
    return x - np.tanh(x)


def softmax(x, axis=-1):
    """Softmax along ``axis`` (default the last), computed stably.

    >>> softmax(np.array([0.0, 0.0])).tolist()
    [0.5, 0.5]
    """
    x = _float(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    """``log(softmax(x))`` along ``axis``, computed stably.

    >>> round(float(log_softmax(np.array([0.0, 0.0]))[0]), 4)
    -0.6931
    """
    x = _float(x)
    s = x - np.max(x, axis=axis, keepdims=True)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


def softplus(x):
    """``log(1 + exp(x))``, computed stably.

    >>> round(float(softplus(np.array([0.0]))[0]), 4)
    0.6931
    """
    x = _float(x)
    return np.logaddexp(x.dtype.type(0), x)


def softsign(x):
    """``x / (1 + |x|)``.

    >>> softsign(np.array([1.0])).tolist()
    [0.5]
    """
    x = _float(x)
    return x / (x.dtype.type(1) + np.abs(x))


def exponential(x):
    """``exp(x)``.

    >>> exponential(np.array([0.0])).tolist()
    [1.0]
    """
    return np.exp(_float(x))


def mish(x):
    """``x * tanh(softplus(x))``.

    >>> mish(np.array([0.0])).tolist()
    [0.0]
    """
    x = _float(x)
    return x * np.tanh(softplus(x))


def log_sigmoid(x):
    """``log(sigmoid(x)) = -softplus(-x)``.

    >>> round(float(log_sigmoid(np.array([0.0]))[0]), 4)
    -0.6931
    """
    x = _float(x)
    return -np.logaddexp(x.dtype.type(0), -x)


def squareplus(x, b=4):
    """``(x + sqrt(x**2 + b)) / 2``.

    >>> squareplus(np.array([0.0])).tolist()
    [1.0]
    """
    x = _float(x)
    t = x.dtype.type
    return (x + np.sqrt(x * x + t(b))) / t(2)


def sparse_plus(x):
    """0 for ``x <= -1``, ``(x + 1)**2 / 4`` for ``|x| < 1``, ``x`` for ``x >= 1``.

    >>> sparse_plus(np.array([-2.0, 0.0, 2.0])).tolist()
    [0.0, 0.25, 2.0]
    """
    x = _float(x)
    t = x.dtype.type
    return np.where(x <= -1, t(0), np.where(x >= 1, x, (x + t(1)) ** 2 / t(4))).astype(x.dtype, copy=False)


def soft_shrink(x, threshold=0.5):
    """``x - threshold`` above it, ``x + threshold`` below ``-threshold``, else 0.

    >>> soft_shrink(np.array([-1.0, 0.2, 1.0])).tolist()
    [-0.5, 0.0, 0.5]
    """
    x = _float(x)
    t = x.dtype.type(threshold)
    return np.where(x > t, x - t, np.where(x < -t, x + t, x.dtype.type(0))).astype(x.dtype, copy=False)


def hard_shrink(x, threshold=0.5):
    """``x`` where ``|x| > threshold``, else 0.

    >>> hard_shrink(np.array([-1.0, 0.2])).tolist()
    [-1.0, 0.0]
    """
    x = _float(x)
    return np.where(np.abs(x) > x.dtype.type(threshold), x, x.dtype.type(0)).astype(x.dtype, copy=False)


_ACTIVATIONS = {
    "linear": linear, "relu": relu, "relu6": relu6, "leaky_relu": leaky_relu,
    "elu": elu, "selu": selu, "celu": celu, "gelu": gelu, "sigmoid": sigmoid,
    "hard_sigmoid": hard_sigmoid, "silu": silu, "swish": silu,
    "hard_silu": hard_silu, "hard_swish": hard_silu, "tanh": tanh,
    "hard_tanh": hard_tanh, "tanh_shrink": tanh_shrink, "softmax": softmax,
    "log_softmax": log_softmax, "softplus": softplus, "softsign": softsign,
    "exponential": exponential, "mish": mish, "log_sigmoid": log_sigmoid,
    "squareplus": squareplus, "sparse_plus": sparse_plus,
    "soft_shrink": soft_shrink, "hard_shrink": hard_shrink,
}

#: Activations that act on each element alone; backends may fuse these.
ELEMENTWISE = frozenset(_ACTIVATIONS) - {"softmax", "log_softmax"}


def names():
    """Sorted names accepted by :func:`get` and by ``activation=``.

    >>> "relu" in names()
    True
    """
    return sorted(_ACTIVATIONS)


def canonical(activation):
    """Normalise an ``activation=`` argument: ``None``/"linear" -> None, a name
    -> its canonical name, a callable -> itself.  Raises on an unknown name.

    >>> canonical("Swish"), canonical("linear"), canonical(None)
    ('silu', None, None)
    """
    if activation is None:
        return None
    if callable(activation):
        return activation
    if not isinstance(activation, str):
        raise InvalidArgumentError(
            f"argument `activation` must be None, a Keras activation name or a "
            f"callable; got {type(activation).__name__} {activation!r}")
    name = activation.lower()
    if name not in _ACTIVATIONS:
        raise InvalidArgumentError(
            f"argument `activation`: unknown activation {activation!r}; expected "
            f"one of {', '.join(names())}")
    f = _ACTIVATIONS[name]
    if f is linear:
        return None
    return f.__name__


def get(activation):
    """Return the activation function for a Keras name (or a callable as is).

    Parameters
    ----------
    activation : str, callable or None
        A Keras activation name such as ``"relu"``; ``None`` means linear.

    Returns
    -------
    callable

    Raises
    ------
    InvalidArgumentError
        For an unknown name, listing the known ones.

    Examples
    --------
    >>> get("swish") is silu
    True
    """
    a = canonical(activation)
    if a is None:
        return linear
    if callable(a):
        return a
    return _ACTIVATIONS[a]


def apply(activation, y):
    """Apply a canonical activation (see :func:`canonical`) to ``y``.

    Writes into ``y`` where that is possible (``y`` must be a float array
    the caller owns) and returns the result.

    >>> y = np.array([-1.0, 1.0]); apply("relu", y).tolist()
    [0.0, 1.0]
    """
    if activation is None:
        return y
    if activation == "relu":
        return np.maximum(y, 0, out=y)
    if activation == "relu6":
        return np.clip(y, 0, 6, out=y)
    f = _ACTIVATIONS[activation] if isinstance(activation, str) else activation
    return np.asarray(f(y), dtype=y.dtype)
