"""Backend registry and dispatch.

A backend is a module that implements some of the kernel-contract names
documented in :mod:`fastconv.backends.reference` and lists them in ``OPS``.
Backends are imported lazily, on first use; one that fails to import (not
compiled, no GPU) is simply not available.
"""

import importlib

from ..errors import BackendError, BackendUnavailableError, NotSupportedError

#: Every backend fastconv knows, in the order ``backend="auto"`` prefers them.
#: (``reference`` comes last: it is the oracle, the fallback of last resort.)
KNOWN = ("numba", "cython", "reference")
_MODULES = {"numba": ".numba", "cython": ".cython", "reference": ".reference"}
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
    _loaded[name] = mod
    return mod


def available_backends():
    """Names of the backends usable on this machine, in ``auto``'s order of preference.

    Returns
    -------
    list of str

    Examples
    --------
    >>> import fastconv
    >>> "reference" in fastconv.available_backends()
    True
    """
    return [name for name in KNOWN if _load(name) is not None]


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
    """The function implementing kernel-contract ``op`` for ``backend`` ("auto" or a name)."""
    if backend is None or backend == "auto":
        for name in KNOWN:
            mod = _load(name)
            if mod is not None and op in mod.OPS:
                return getattr(mod, op)
        raise AssertionError(f"no backend implements {op!r}")  # reference implements all
    mod = _module(backend)
    if op not in mod.OPS:
        raise NotSupportedError(
            f"backend {backend!r} does not implement {op!r} yet; use backend='auto' or "
            f"one of the backends that do: "
            f"{', '.join(n for n in available_backends() if op in _load(n).OPS)}")
    return getattr(mod, op)
