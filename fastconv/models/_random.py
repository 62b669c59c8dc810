"""Models from an architecture alone, with seeded random weights (for benchmarks and tests)."""

import json
import math
import os

import numpy as np

from ..errors import InvalidArgumentError
from . import _io
from . import layers as L
from .errors import ModelFormatError, UnsupportedLayerError
from .model import (DEFAULT_LIMITS, Graph, Model, _flatten, _flatten_values, _keras2_semantics, _rebuild,
                    build_graph, check_limits)


def _channels(layer, x):
    return x.shape[1] if getattr(layer, "fmt", "channels_last") == "channels_first" else x.shape[-1]


def _kernel_size(layer):
    return L._tuple(layer.opt("kernel_size"), layer.nsp, layer, "kernel_size")


def _positive_int(layer, key):
    v = layer.opt(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ModelFormatError(f"layer {layer.name!r} ({layer.class_name}): `{key}` must be a positive "
                               f"integer; got {v!r}")
    return v


def _shapes(layer, x):
    """{variable name: shape} of ``layer`` called on ``x`` (Keras's shapes), and each kernel's fan-in."""
    if isinstance(layer, L.Conv):
        k, cin, f = _kernel_size(layer), _channels(layer, x), _positive_int(layer, "filters")
        if cin % layer.groups or f % layer.groups:
            raise ModelFormatError(f"layer {layer.name!r}: groups={layer.groups} does not divide "
                                   f"{cin} input channels and {f} filters")
        return {"kernel": k + (cin // layer.groups, f), "bias": (f,)}, math.prod(k) * cin // layer.groups
    if isinstance(layer, L.ConvTranspose):
        k, cin, f = _kernel_size(layer), _channels(layer, x), _positive_int(layer, "filters")
        return {"kernel": k + (f, cin), "bias": (f,)}, math.prod(k) * cin
    if isinstance(layer, L.DepthwiseConv):
        k, cin, m = _kernel_size(layer), _channels(layer, x), _positive_int(layer, "depth_multiplier")
        return {"kernel": k + (cin, m), "bias": (cin * m,)}, math.prod(k)
    if isinstance(layer, L.SeparableConv):
        k, cin = _kernel_size(layer), _channels(layer, x)
        m, f = _positive_int(layer, "depth_multiplier"), _positive_int(layer, "filters")
        return {"depthwise_kernel": k + (cin, m), "pointwise_kernel": (1,) * layer.nsp + (cin * m, f),
                "bias": (f,)}, math.prod(k)
    if isinstance(layer, L.Dense):
        units = _positive_int(layer, "units")
        return {"kernel": (x.shape[-1], units), "bias": (units,)}, x.shape[-1]
    if isinstance(layer, (L.BatchNormalization, L.LayerNormalization)):
        shape = tuple(x.shape[a] for a in L._norm_axes(layer.axes, x.ndim, layer))
        return {k: shape for k in ("gamma", "beta", "moving_mean", "moving_variance")}, None
    if isinstance(layer, L.Normalization):
        shape = tuple(x.shape[a] for a in L._norm_axes(layer.axes, x.ndim, layer)) if layer.axes else ()
        return {"mean": shape, "variance": shape, "count": ()}, None
    if isinstance(layer, L.PReLU):
        shape = list(x.shape[1:])
        shared = layer.opt("shared_axes") or []
        for a in shared if isinstance(shared, (list, tuple)) else [shared]:
            if not isinstance(a, int) or not 1 <= a <= len(shape):
                raise ModelFormatError(f"layer {layer.name!r} (PReLU): bad shared_axes {shared!r}")
            shape[a - 1] = 1
        return {"alpha": tuple(shape)}, None
    raise UnsupportedLayerError(
        f"layer {layer.name!r} ({layer.class_name}): from_config cannot make random weights for it")


def random_weights(layer, x, rng):
    """Seeded random arrays for ``layer``'s variables (``weight_spec`` order) given its input ``x``.

    Convolution kernels are He-normal (standard deviation ``sqrt(2 / fan_in)``),
    Dense kernels LeCun-normal (``sqrt(1 / fan_in)``); biases and ``beta`` are
    normal with standard deviation 0.1; ``gamma`` is uniform on [0.5, 1.5].
    BatchNormalization's moving statistics come from its input ``x``, as in a
    trained network: the mean of each channel (plus 0.1 standard deviation of
    noise) and its variance times a factor uniform on [0.5, 1.5] (1 where the
    variance is ~0), so the variance is always positive and activations stay
    of order 1 through deep networks (softmax outputs are not saturated).
    Normalization's mean is normal (0.1), its variance uniform on [0.5, 1.5],
    its ``count`` 1; PReLU's ``alpha`` is uniform on [0, 0.3].
    """
    shapes, fan_in = _shapes(layer, x)
    gain = 1.0 if isinstance(layer, L.Dense) else 2.0
    stats = None
    if isinstance(layer, L.BatchNormalization):
        axes = L._norm_axes(layer.axes, x.ndim, layer)
        other = tuple(a for a in range(x.ndim) if a not in axes)
        x64 = x.astype(np.float64)
        stats = {"moving_mean": x64.mean(axis=other).reshape(shapes["moving_mean"]),
                 "moving_variance": x64.var(axis=other).reshape(shapes["moving_variance"])}
    out = []
    for var, _, _ in layer.weight_spec():
        shape = shapes[var]
        if var.endswith("kernel"):
            a = rng.standard_normal(shape) * math.sqrt(gain / max(fan_in, 1))
        elif stats is not None and var == "moving_mean":
            a = stats[var] + rng.standard_normal(shape) * 0.1 * np.sqrt(stats["moving_variance"])
        elif stats is not None and var == "moving_variance":
            v = stats[var]
            a = np.where(v > 1e-6, v, 1.0) * rng.uniform(0.5, 1.5, shape)
        elif var in ("bias", "beta", "moving_mean", "mean"):
            a = rng.standard_normal(shape) * 0.1
        elif var in ("gamma", "moving_variance", "variance"):
            a = rng.uniform(0.5, 1.5, shape)
        elif var == "alpha":
            a = rng.uniform(0.0, 0.3, shape)
        elif var == "count":
            a = np.ones(shape)
        else:  # pragma: no cover - every weight_spec name is handled above
            raise UnsupportedLayerError(f"layer {layer.name!r}: no random initialiser for {var!r}")
        out.append(np.asarray(a, dtype=L.DTYPE))
    return out


def _fill(graph, feeds, rng, budget):
    """Run ``graph``'s plain plan on ``feeds``, giving each weighted layer random weights
    (from the shape of its input) before its first call. Returns the flattened outputs."""
    plan = graph.plain_plan
    last_use = {}
    for i, step in enumerate(plan):
        for k in step.input_keys:
            last_use[k] = i
    keep = set(_flatten(graph.outputs_struct))
    values = {}
    for i, step in enumerate(plan):
        layer = step.layer
        if step.inputs is None:
            values[step.outputs[0]] = feeds[layer.name]
            continue
        args = _rebuild(step.inputs, [values[k] for k in step.input_keys])
        if isinstance(layer, Graph):
            flat_in = (args if isinstance(args, list) and len(args) == 1 else [args]) \
                if isinstance(layer.inputs_struct, tuple) else _flatten_values(args)
            if len(flat_in) != len(layer.input_layers):
                raise ModelFormatError(f"nested model {layer.name!r} takes {len(layer.input_layers)} "
                                       f"inputs; its call gives {len(flat_in)}")
            outs = _fill(layer, {l.name: v for l, v in zip(layer.input_layers, flat_in)}, rng, budget)
            values.update(zip(step.outputs, outs))
        else:
            if layer.weight_spec() and not layer.weights:
                if not isinstance(args, np.ndarray):
                    raise UnsupportedLayerError(f"layer {layer.name!r}: weights for a multi-input layer")
                arrays = random_weights(layer, args, rng)
                budget[0] -= sum(a.nbytes for a in arrays)
                if budget[0] < 0:
                    raise ModelFormatError(
                        f"layer {layer.name!r}: the model's weights exceed max_weight_bytes")
                layer.set_weights(arrays)
            values[step.outputs[0]] = layer.call(args, "auto")
        for k in step.input_keys:
            if last_use.get(k) == i and k not in keep:
                values.pop(k, None)
    return [values[k] for k in _flatten(graph.outputs_struct)]


def _read_config(config, limits):
    if isinstance(config, dict):
        text = json.dumps(config)  # the same checks as a file's JSON (size, shape of the document)
        return _io._parse_json(text, "from_config", limits)
    if isinstance(config, (str, bytes)) and config.lstrip()[:1] in ("{", b"{"):
        return _io._parse_json(config, "from_config", limits)
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not os.path.isfile(path):
            raise ModelFormatError(f"from_config: argument `config`: no such file {path!r}")
        _io._check_size(path, limits["max_config_bytes"], "the architecture JSON")
        with open(path, "rb") as fh:
            return _io._parse_json(fh.read(), repr(path), limits)
    raise InvalidArgumentError(
        f"from_config: argument `config` must be a dict, JSON text or the path of a JSON file; "
        f"got {type(config).__name__}")


def from_config(config, *, seed=0, optimize=True, max_config_bytes=DEFAULT_LIMITS["max_config_bytes"],
                max_weight_bytes=DEFAULT_LIMITS["max_weight_bytes"], max_layers=DEFAULT_LIMITS["max_layers"],
                max_nesting=DEFAULT_LIMITS["max_nesting"]):
    """A runnable model from a Keras architecture alone, with seeded random weights.

    For benchmarks and tests: no weights file is needed. The architecture is
    checked exactly as :func:`fastconv.load_model` checks one (nothing in it is
    ever executed). Every variable of every layer the graph calls gets random
    values of Keras's shape for it (see :func:`random_weights`; BatchNormalization
    variances are positive), found by running the model once on one random
    sample, so every input shape must be fully known apart from the batch axis.

    Parameters
    ----------
    config : dict, str or os.PathLike
        The serialized model: ``json.loads(model.to_json())``, the text of
        ``model.to_json()`` (a ``str`` starting with ``{``), or the path of a
        file holding it.
    seed : int, default 0
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same weights.
    optimize : bool, default True
        As in :func:`fastconv.load_model`.
    max_config_bytes, max_weight_bytes, max_layers, max_nesting : int
        As in :func:`fastconv.load_model` (``max_weight_bytes`` bounds the total
        of the random weights).

    Returns
    -------
    Model

    Raises
    ------
    ModelFormatError, UnsafeModelError, UnsupportedLayerError
        As :func:`fastconv.load_model` does for the architecture.
    InvalidArgumentError
        ``config`` is of the wrong type, ``seed`` is not an integer, or an input
        has an unknown (``None``) axis besides the batch.

    Examples
    --------
    >>> import os, numpy as np, fastconv
    >>> from fastconv.models import from_config
    >>> here = os.path.join(os.path.dirname(fastconv.__file__), "..", "tests", "fixtures", "models")
    >>> m = from_config(os.path.join(here, "sign_mnist.json"), seed=1)
    >>> m.predict(np.zeros((2, 28, 28, 1), np.float32)).shape
    (2, 24)
    """
    limits = {"max_config_bytes": max_config_bytes, "max_weight_bytes": max_weight_bytes,
              "max_layers": max_layers, "max_nesting": max_nesting}
    check_limits(limits, "from_config")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidArgumentError(f"from_config: argument `seed` must be a non-negative integer; got {seed!r}")
    cfg = _read_config(config, limits)
    graph = build_graph(cfg, limits, caller="from_config")
    feeds = {}
    for layer in graph.input_layers:
        shape = layer.batch_shape
        if shape is None or any(d is None for d in shape[1:]):
            raise InvalidArgumentError(
                f"from_config: input {layer.name!r} has shape {shape}; random weights need every axis "
                f"but the batch to be known")
    graph.make_plans(False)
    rng = np.random.default_rng(int(seed))
    for layer in graph.input_layers:
        feeds[layer.name] = rng.standard_normal((1,) + tuple(layer.batch_shape[1:])).astype(L.DTYPE)
    _fill(graph, feeds, rng, [max_weight_bytes])
    if str(cfg.get("keras_version", ""))[:2] in ("1.", "2."):
        _keras2_semantics(graph)
    graph.make_plans(bool(optimize))
    return Model(graph, source=f"<random weights, seed={int(seed)}>")
