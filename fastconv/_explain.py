"""``fastconv.explain``: which backend and algorithm each kernel of a call would use."""

import contextvars
import dataclasses

import numpy as np

from .errors import InvalidArgumentError

_CALLS = contextvars.ContextVar("fastconv_explain_calls", default=None)


@dataclasses.dataclass(frozen=True)
class KernelCall:
    """One kernel-contract call that an op makes.

    Attributes
    ----------
    kernel : str
        The kernel-contract operation (``"conv"``, ``"depthwise_conv"``, ``"max_pool"``...).
    backend : str
        The backend that runs it.
    algorithm : str
        How that backend computes it, for these shapes.
    chosen_by : str
        ``"auto rule for <shape class>"`` or ``"requested"``.
    x_shape, w_shape, out_shape : tuple
        The contract's 3-D channels-last shapes (``w_shape`` None for pooling).
    """

    kernel: str
    backend: str
    algorithm: str
    chosen_by: str
    x_shape: tuple
    w_shape: tuple
    out_shape: tuple

    def __str__(self):
        w = f", w {self.w_shape}" if self.w_shape is not None else ""
        return (f"{self.kernel}(x {self.x_shape}{w}) -> {self.out_shape}: backend {self.backend!r} "
                f"({self.chosen_by}), {self.algorithm}")


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What :func:`fastconv.explain` found: the op and its kernel calls, in order."""

    op: str
    calls: tuple

    def __str__(self):
        return "\n".join([f"{self.op}:"] + [f"  {c}" for c in self.calls])


def recording():
    return _CALLS.get() is not None


def _out_shape(op, args):
    x = args[0]
    if op.startswith("global_"):
        return (x.shape[0], x.shape[4])
    if op in ("max_pool", "avg_pool"):
        return (x.shape[0],) + tuple(args[4]) + (x.shape[4],)
    w = args[1]
    if op in ("conv", "separable_conv"):
        out, channels = args[7], (w if op == "conv" else args[2]).shape[4]
    elif op == "depthwise_conv":
        out, channels = args[6], w.shape[3] * w.shape[4]
    else:  # conv_transpose
        out, channels = args[6], w.shape[3]
    return (x.shape[0],) + tuple(out) + (channels,)


def recorder(op, backend, fn):
    """A stand-in for kernel ``fn`` that records the call and returns zeros of the output's shape."""
    from . import backends
    from .backends import _auto

    def record(*args):
        if backend == "auto":
            name, how = _auto.choose(op, args), f"auto rule for {_auto.shape_class(op, args)!r}"
        else:
            name, how = backend, "requested"
        mod = backends._module(name)
        describe = getattr(mod, "algorithm", None)
        algo = describe(op, *args) if describe is not None else "(this backend does not describe its algorithms)"
        out = _out_shape(op, args)
        w = tuple(args[1].shape) if op in ("conv", "depthwise_conv", "separable_conv", "conv_transpose") else None
        _CALLS.get().append(KernelCall(op, name, algo, how, tuple(args[0].shape), w, out))
        return np.zeros(out, dtype=getattr(args[0], "dtype", np.float32))
    return record


def explain(op, *args, **kwargs):
    """Which backend and algorithm each kernel of ``fastconv.<op>(*args, **kwargs)`` would use.

    The arguments are validated exactly as the op validates them, but nothing is
    computed: each kernel call is recorded instead (a separable convolution makes
    two, depthwise then pointwise).

    Parameters
    ----------
    op : str or callable
        A function of the functional API or its name, e.g. ``"conv2d"``.
    *args, **kwargs
        Its arguments, ``backend=`` included (default ``"auto"``).

    Returns
    -------
    Explanation
        ``calls``: one :class:`KernelCall` per kernel (``backend``, ``algorithm``,
        ``chosen_by``, shapes); ``print()`` shows them.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> e = fastconv.explain("conv2d", np.zeros((1, 56, 56, 64)), np.zeros((1, 1, 64, 64)))
    >>> e.calls[0].kernel, e.calls[0].backend in fastconv.available_backends()
    ('conv', True)
    """
    from . import ops
    name = op if isinstance(op, str) else getattr(op, "__name__", None)
    if not isinstance(name, str) or name not in ops.__all__ or name in ("factor_separable_kernel",):
        raise InvalidArgumentError(
            f"explain: argument `op` must be an op of the functional API (e.g. 'conv2d'); got {op!r}")
    token = _CALLS.set([])
    try:
        getattr(ops, name)(*args, **kwargs)
        calls = tuple(_CALLS.get())
    finally:
        _CALLS.reset(token)
    return Explanation(name, calls)
