"""Backend registry and dispatch.

A backend is a module that implements some of the kernel-contract names
documented in :mod:`fastconv.backends.reference` and lists them in ``OPS``.
Backends are imported lazily, on first use; one that fails to import (not
compiled) or says it cannot run here (``UNAVAILABLE``: no GPU) is simply not
available.
"""

import importlib

from ..errors import BackendError, BackendUnavailableError, NotSupportedError

#: The backends ``backend="auto"`` picks from, in order of preference.
#: (``reference`` comes last: it is the oracle, the fallback of last resort.)
AUTO = ("numba", "cython", "reference")
#: Every backend fastconv knows: ``auto``'s, then the explicit-only ``cuda`` (GPU).
KNOWN = AUTO + ("cuda",)
_MODULES = {"numba": ".numba", "cython": ".cython", "reference": ".reference", "cuda": ".cuda"}
_loaded = {}
_failed = {}

#: The kernel-contract operations each public op needs from a backend.
OP_KERNELS = {
    **{f"conv{n}d": frozenset({"conv"}) for n in (1, 2, 3)},
    **{f"conv{n}d_transpose": frozenset({"conv_transpose"}) for n in (1, 2, 3)},
    **{f"depthwise_conv{n}d": frozenset({"depthwise_conv"}) for n in (1, 2)},
    **{f"separable_conv{n}d": frozenset({"depthwise_conv", "conv"}) for n in (1, 2)},
    "spatially_separable_conv2d": frozenset({"conv", "depthwise_conv"}),
    **{f"{k}_pool{n}d": frozenset({f"{k}_pool"}) for k in ("max", "avg") for n in (1, 2, 3)},
    **{f"global_{k}_pool{n}d": frozenset({f"global_{k}_pool"}) for k in ("max", "avg") for n in (1, 2, 3)},
}


def supports(name, op):
    """Whether backend ``name`` implements everything public op ``op`` needs.

    >>> supports("reference", "conv2d")
    True
    """
    return OP_KERNELS[op] <= backend_ops(name)


def implements(backend, op):
    """Whether ``backend`` ("auto" or a name) has a kernel for kernel-contract ``op``; for
    optional kernels (``separable_conv``: a fused form of two others) the ops fall back to
    the kernels they are made of where it does not.  For ``"auto"``: whether the backend
    its rule prefers for ``op`` (the first available one) has it; if not, the ops run the
    component kernels, each dispatched by ``auto``.

    >>> implements("reference", "separable_conv")
    False
    """
    if backend is None or backend == "auto":
        from . import _auto
        for name in _auto.RULE.get(op, ()) + AUTO:
            mod = _load(name)
            if mod is not None:
                return op in mod.OPS
        return False
    return op in _module(backend).OPS


def separable_in_two(mod, x, dk, pk, b, strides, dilation, pads, out_shape, activation):
    """``separable_conv`` (kernel contract) by backend module ``mod``'s own two kernels:
    its depthwise convolution, then its 1x1 convolution with the bias and activation."""
    mid = mod.depthwise_conv(x, dk, None, strides, dilation, pads, out_shape, None)
    return mod.conv(mid, pk, b, (1, 1, 1), (1, 1, 1), ((0, 0),) * 3, 1, tuple(out_shape), activation)


def _load(name):
    if name in _loaded:
        return _loaded[name]
    if name in _failed:
        return None
    try:
        mod = importlib.import_module(_MODULES[name], __name__)
    except ImportError as exc:
        _failed[name] = exc
        return None
    if getattr(mod, "UNAVAILABLE", None):  # imports, but cannot run here (cuda: no GPU)
        _failed[name] = mod.UNAVAILABLE
        return None
    _loaded[name] = mod
    return mod


def available_backends():
    """Names of the backends usable on this machine, in ``auto``'s order of preference,
    then ``cuda`` where a GPU can be used (``auto`` never picks it: ask for it by name).

    Returns
    -------
    list of str

    Examples
    --------
    >>> import fastconv
    >>> "reference" in fastconv.available_backends()
    True
    """
    # A backend may be usable by name but not listed (``LISTED = False``): the cuda
    # backend under Numba's CUDA simulator, which exists for tests only.
    return [name for name in KNOWN if _load(name) is not None and getattr(_loaded[name], "LISTED", True)]


def backend_ops(name):
    """The kernel-contract operations a backend implements (a frozenset of names)."""
    return _module(name).OPS


def _module(name):
    if not isinstance(name, str) or name not in KNOWN:
        raise BackendError(
            f"argument `backend` must be 'auto' or one of {', '.join(map(repr, KNOWN))}; got {name!r}")
    mod = _load(name)
    if mod is None:
        raise BackendUnavailableError(
            f"backend {name!r} is not available on this machine: {_failed[name]}")
    return mod


def resolve(backend, op):
    """The function implementing kernel-contract ``op`` for ``backend`` ("auto" or a name).

    For ``"auto"`` it is a dispatcher that picks the backend per call, from the
    arguments' shape class (:mod:`fastconv.backends._auto`). Inside
    :func:`fastconv.explain` the returned function records the call instead of
    computing it.
    """
    hit = _RESOLVED.get((backend, op)) if backend is None or type(backend) is str else None
    if hit is not None and (hit[0] is None or _loaded.get(backend) is hit[0] and op in hit[0].OPS):
        fn = hit[1]
    elif backend is None or backend == "auto":
        fn = _auto_kernel(op)
        _RESOLVED[backend, op] = (None, fn)
    else:
        mod = _module(backend)
        if op not in mod.OPS:
            raise NotSupportedError(
                f"backend {backend!r} does not implement {op!r} yet; use backend='auto' or "
                f"one of the backends that do: "
                f"{', '.join(n for n in available_backends() if op in _load(n).OPS)}")
        fn = getattr(mod, op)
        _RESOLVED[backend, op] = (mod, fn)
    if _explain.recording():
        return _explain.recorder(op, backend or "auto", fn)
    return fn


# (backend, op) -> (module, function) found for it, reused while that module is still the
# loaded one and still lists op (tests take backends away); auto's dispatcher has no module
_RESOLVED = {}


def _auto_kernel(op):
    from . import _auto

    def auto(*args):
        return getattr(_load(_auto.choose(op, args)), op)(*args)
    auto.__name__ = auto.__qualname__ = f"auto_{op}"
    return auto


from .. import _explain  # noqa: E402  (it imports this module's names lazily)
