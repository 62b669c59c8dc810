"""Model-level accounting: parameter counts, per-layer cost records, a summary table and a profiler.

:class:`~fastconv.models.Model` delegates to this module: ``count_params``,
``param_counts``, ``cost``, ``summary`` and ``profile``.

Which graph is counted
----------------------
Parameters and costs (:func:`param_counts`, :func:`model_cost`, :func:`summary`)
describe the **Keras graph** as saved: every layer as Keras defines it,
BatchNormalization *not* folded into the convolution before it and activation
layers *not* fused, so the numbers match Keras's ``count_params()`` and the
usual published counts. :func:`profile` times the **execution graph** actually
run (folded and fused steps), and reports each fused step under the names of
the layers it absorbed (``"conv2d_1 (+batch_normalization_1, re_lu_1)"``),
crediting it with the Keras-graph FLOPs of those layers.

Parameter counts (Keras's rules)
--------------------------------
A layer's parameters are all its variables: BatchNormalization's ``gamma``,
``beta`` (trainable) and ``moving_mean``, ``moving_variance`` (non-trainable);
an adapted Normalization's ``mean``, ``variance`` and ``count`` (non-trainable);
every other variable trainable. A layer whose config says ``"trainable": false``
has only non-trainable parameters, and so has every layer of a nested model
that does. A shared layer is counted once.

MAC and FLOP conventions
------------------------
Convolutions and pooling are counted by :mod:`fastconv.cost` (MACs in full,
including taps on zero padding; transposed convolutions per *input* pixel;
2 FLOPs per MAC, +1 per output element for a bias and +1 for an activation;
pooling 1 FLOP per real element read). The other layers follow the same
conventions:

* Dense: ``rows x inputs x units`` MACs, ``rows`` being the product of the
  input's leading axes (the batch, for a 2-D input); FLOPs as a convolution's;
* BatchNormalization: no MACs, 2 FLOPs per element (scale and shift; the
  inference form ``x * mul + add``), counted even where the execution graph
  folds it away;
* LayerNormalization: 5 FLOPs per element (mean, variance, normalisation), +1
  for ``scale``, +1 for ``center``; with ``rms_scaling`` 3 (+1 for ``scale``);
* Normalization, Rescaling: 2 FLOPs per element;
* activation layers (Activation, ReLU, LeakyReLU, ELU, PReLU, Softmax): 1 FLOP
  per element (0 for a linear Activation), as :mod:`fastconv.cost` counts a
  fused activation;
* merges: Add, Subtract, Multiply, Maximum, Minimum ``k - 1`` FLOPs per output
  element for ``k`` inputs; Average ``k`` (the division included); a recorded
  ``keras.ops`` call (``x + 3.0``, ``ops.maximum(a, b)``...): 1 per output element;
* bilinear UpSampling2D: 3 FLOPs per element of each axis's interpolated result;
* everything else (Concatenate, ZeroPadding, Cropping, nearest UpSampling,
  Permute, Flatten, Reshape, Dropout and the other identity-at-inference
  layers, InputLayer) and layers registered by the caller
  (:func:`fastconv.models.register_layer`) that subclass none of the above: 0 FLOPs.

Only convolutions and Dense layers have MACs (the convention of the published
totals, e.g. VGG16 15.5 G, ResNet50 3.9 G, MobileNetV2 0.30 G MACs at 224x224,
which these rules reproduce within 2%). Bytes follow :mod:`fastconv.cost`
(input elements plus parameters read, output elements written, 4 bytes each),
except that layers that are views or the identity at inference (InputLayer,
Flatten, Reshape, Dropout and the like) move no bytes. A shared layer's
parameters are counted in the record of its first call only (its later calls
still read them). Costs are for the batch size asked for (``batch_size=1``:
per sample); output shapes are found by shape math for convolutions and
pooling and by running the other layers once on zeros of one sample.
"""

import dataclasses
import math
import re
import statistics

import numpy as np

from .. import cost as C
from ..errors import InvalidArgumentError
from . import layers as L

_VIEW_LAYERS = (L.InputLayer, L.Identity, L.Flatten, L.Reshape)
_ACTIVATION_LAYERS = (L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.PReLU, L.Softmax)
_KERAS_OP = getattr(L, "KerasOp", None)  # keras.ops calls recorded in a functional graph


# ---------------------------------------------------------------------- parameter counts

@dataclasses.dataclass(frozen=True)
class ParamCounts:
    """Parameters of a model or a layer, as Keras counts them.

    Attributes
    ----------
    name, class_name : str
    total, trainable, non_trainable : int
        ``total == trainable + non_trainable``.
    layers : dict
        For a model: ``{layer name: ParamCounts}`` for each of its layers, in
        Keras's ``model.layers`` order (nested models recursively); else empty.
    """

    name: str
    class_name: str
    total: int
    trainable: int
    non_trainable: int
    layers: dict = dataclasses.field(default_factory=dict)


def _is_graph(layer):
    from .model import Graph
    return isinstance(layer, Graph)


def _counts(layer, parent_trainable, seen):
    trainable_here = parent_trainable and getattr(layer, "trainable", True)
    if _is_graph(layer):
        subs = {l.name: _counts(l, trainable_here, seen) for l in layer.layers}
        return ParamCounts(layer.name, "Sequential" if layer.class_name == "Sequential" else "Functional",
                           sum(s.total for s in subs.values()), sum(s.trainable for s in subs.values()),
                           sum(s.non_trainable for s in subs.values()), subs)
    tr = non = 0
    if id(layer) not in seen:
        seen.add(id(layer))
        for var, is_trainable, _ in layer.weight_spec():
            w = layer.weights.get(var)
            n = 0 if w is None else int(w.size)
            if is_trainable and trainable_here:
                tr += n
            else:
                non += n
    return ParamCounts(layer.name, layer.class_name, tr + non, tr, non)


def param_counts(graph):
    """:class:`ParamCounts` of a model's :class:`~fastconv.models.model.Graph` (Keras's rules)."""
    return _counts(graph, True, set())


# ---------------------------------------------------------------------- cost records

@dataclasses.dataclass(frozen=True)
class LayerCost:
    """The cost of one call of one layer of the Keras graph.

    Attributes
    ----------
    name : str
        The layer's name; ``"outer/inner"`` for a layer of a nested model.
    class_name : str
        Its Keras class.
    call : int
        Which call of the layer (0 unless the layer is shared).
    top : tuple
        ``(top-level layer name, call)`` this record belongs to (a nested
        model's records belong to the nested model's call).
    cost : fastconv.cost.Cost
    """

    name: str
    class_name: str
    call: int
    top: tuple
    cost: C.Cost

    @property
    def macs(self):
        return self.cost.macs

    @property
    def flops(self):
        return self.cost.flops

    @property
    def params(self):
        return self.cost.params

    @property
    def output_shape(self):
        return self.cost.output_shape


@dataclasses.dataclass(frozen=True)
class ModelCost:
    """What a model costs, layer by layer, on the Keras graph (BatchNormalization unfolded).

    Attributes
    ----------
    records : list of LayerCost
        One per layer call, in execution order (nested models' layers inline).
    total : fastconv.cost.Cost
        Their sum; ``params`` counts every parameter once.
    batch_size : int
    output_shapes : dict
        ``{(top-level layer name, call): output shape}``, or a list of shapes
        for a nested model with several outputs.
    """

    records: list
    total: C.Cost
    batch_size: int
    output_shapes: dict

    def by_layer(self):
        """``{top-level layer name: Cost}``, the sum over its calls (and, for a nested
        model, over its layers), in first-call order. A layer with no record (an
        input layer) gets none."""
        out = {}
        for r in self.records:
            name = r.top[0]
            out[name] = out[name] + r.cost if name in out else r.cost
        return out

    def by_call(self):
        """``{(top-level layer name, call): Cost}``."""
        out = {}
        for r in self.records:
            out[r.top] = out[r.top] + r.cost if r.top in out else r.cost
        return out

    def __str__(self):
        rows = [(r.name, r.class_name, _fmt_shape(r.output_shape, False), f"{r.params:,}", f"{r.macs:,}",
                 f"{r.flops:,}") for r in self.records]
        rows.append(("total", "", "", f"{self.total.params:,}", f"{self.total.macs:,}", f"{self.total.flops:,}"))
        return _table(("layer", "type", "output shape", "params", "MACs", "FLOPs"), rows, "lllrrr")


_SNAKE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _snake(name):
    return _SNAKE.sub("_", name).lower()


def _record(op, out_shape, params, macs, flops, n_in, n_out, view=False):
    size = 4
    if view:
        return C.Cost(op, tuple(out_shape), params, macs, flops, 0, 0)
    return C.Cost(op, tuple(out_shape), params, macs, flops, (n_in + params) * size, n_out * size)


def _weights_size(layer):
    return sum(int(w.size) for w in layer.weights.values())


def _run_for_shape(layer, args, batch):
    """Output shape(s) of ``layer`` on ``args`` (a structure of shapes), found by calling it once
    on zeros of one sample; the batch axis is then set to ``batch``."""
    def zeros(s):
        return np.zeros((1,) + tuple(s[1:]), L.DTYPE)
    arrays = [zeros(s) for s in args] if isinstance(args, list) else zeros(args)
    with np.errstate(all="ignore"):  # zeros may divide by zero (a recorded keras.ops division)
        y = layer.call(arrays, "auto")
    return (batch,) + tuple(y.shape[1:])


def _layer_cost(layer, args, batch):
    """(Cost, output shape) of one call of a (non-model) layer on input shape(s) ``args``."""
    fmt = getattr(layer, "fmt", "channels_last")
    if isinstance(layer, (L.Conv, L.ConvTranspose, L.DepthwiseConv, L.SeparableConv)):
        w, n = layer.weights, layer.nsp
        common = dict(use_bias=layer.use_bias, strides=layer.strides, padding=layer.padding,
                      dilation_rate=layer.dilation, activation=layer.activation, data_format=fmt)
        if isinstance(layer, L.Conv):
            c = C.__dict__[f"conv{n}d"](args, w["kernel"].shape, groups=layer.groups, **common)
        elif isinstance(layer, L.ConvTranspose):
            c = C.__dict__[f"conv{n}d_transpose"](args, w["kernel"].shape, output_padding=layer.output_padding,
                                                  **common)
        elif isinstance(layer, L.DepthwiseConv):
            c = C.__dict__[f"depthwise_conv{n}d"](args, w["kernel"].shape, **common)
        else:
            c = C.__dict__[f"separable_conv{n}d"](args, w["depthwise_kernel"].shape,
                                                  w["pointwise_kernel"].shape, **common)
        return c, c.output_shape
    if isinstance(layer, L.Pool):
        c = C.__dict__[f"{layer.kind}_pool{layer.nsp}d"](args, layer.pool, layer.strides, layer.padding,
                                                         data_format=fmt)
        return c, c.output_shape
    if isinstance(layer, L.GlobalPool):
        c = C.__dict__[f"global_{layer.kind}_pool{layer.nsp}d"](args, layer.keepdims, data_format=fmt)
        return c, c.output_shape

    out = _run_for_shape(layer, args, batch)
    shapes_in = args if isinstance(args, list) else [args]
    n_in = sum(math.prod(s) for s in shapes_in)
    n_out = math.prod(out)
    params = _weights_size(layer)
    op = _snake(layer.class_name)
    macs = flops = 0
    if isinstance(layer, L.Dense):
        k = layer.weights["kernel"]
        macs = math.prod(args[:-1]) * k.shape[0] * k.shape[1]
        flops = 2 * macs + (n_out if layer.use_bias else 0) + (n_out if layer.activation else 0)
    elif isinstance(layer, L.BatchNormalization):
        flops = 2 * n_out
    elif isinstance(layer, L.LayerNormalization):
        flops = ((3 + layer.scale) if layer.rms else (5 + layer.scale + layer.center)) * n_out
    elif isinstance(layer, (L.Normalization, L.Rescaling)):
        flops = 2 * n_out
    elif isinstance(layer, _ACTIVATION_LAYERS):
        linear = isinstance(layer, L.Activation) and layer.activation is None
        flops = 0 if linear else n_out
    elif isinstance(layer, L.Merge):
        k = len(shapes_in)
        flops = (k if layer.class_name == "Average" else k - 1) * n_out
    elif _KERAS_OP is not None and isinstance(layer, _KERAS_OP):
        flops = n_out
    elif isinstance(layer, L.UpSampling) and layer.interpolation == "bilinear":
        shape = list(args)
        axes = L._spatial_axes(np.empty((0,) * len(shape)), layer.nsp, layer.fmt)
        for a, s in zip(axes, layer.size):
            shape[a] *= s
            flops += 3 * math.prod(shape)
    return _record(op, out, params, macs, flops, n_in, n_out, view=isinstance(layer, _VIEW_LAYERS)), out


def _graph_cost(graph, in_shapes, batch, prefix, top, seen, records, out_shapes):
    """Append the records of ``graph`` run on ``in_shapes`` (one per input layer); return its
    flattened output shapes. ``top`` is the top-level (name, call) for nested graphs, else None."""
    from .model import Graph, _flatten, _flatten_values, _rebuild
    shapes = {}
    feeds = {l.name: s for l, s in zip(graph.input_layers, in_shapes)}
    for step in graph.plain_plan:
        layer = step.layer
        if step.inputs is None:
            shapes[step.outputs[0]] = feeds[layer.name]
            continue
        args = _rebuild(step.inputs, [shapes[k] for k in step.input_keys])
        call = step.outputs[0][1]
        where = top if top is not None else (layer.name, call)
        if isinstance(layer, Graph):
            flat = (args if isinstance(args, list) and len(args) == 1 else [args]) \
                if isinstance(layer.inputs_struct, tuple) else _flatten_values(args)
            outs = _graph_cost(layer, flat, batch, f"{prefix}{layer.name}/", where, seen, records, None)
            shapes.update(zip(step.outputs, outs))
            result = outs[0] if len(outs) == 1 else outs
        else:
            try:
                c, result = _layer_cost(layer, args, batch)
            except Exception as e:  # name the layer: the op's own message says what is wrong
                raise InvalidArgumentError(
                    f"cost: layer {prefix}{layer.name!r} ({layer.class_name}) cannot take input shape "
                    f"{args}: {e}") from e
            if id(layer) in seen and c.params:
                c = dataclasses.replace(c, params=0)
            seen.add(id(layer))
            records.append(LayerCost(prefix + layer.name, layer.class_name, call, where, c))
            shapes[step.outputs[0]] = result
        if out_shapes is not None:
            out_shapes.setdefault((layer.name, call), result)
    return [shapes[k] for k in _flatten(graph.outputs_struct)]


def _input_shapes(graph, batch, input_shapes, caller):
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise InvalidArgumentError(f"{caller}: argument `batch_size` must be a positive integer; got {batch!r}")
    names = [l.name for l in graph.input_layers]
    if input_shapes is None:
        given = [l.batch_shape for l in graph.input_layers]
    else:
        given = input_shapes
        if not isinstance(given, (list, tuple, dict)):
            raise InvalidArgumentError(
                f"{caller}: argument `input_shapes` must be a shape, a list of shapes or a dict of them; "
                f"got {given!r}")
        if isinstance(given, dict):
            if set(given) != set(names):
                raise InvalidArgumentError(
                    f"{caller}: argument `input_shapes`: a dict must have exactly the keys {names}; got {list(given)}")
            given = [given[n] for n in names]
        elif len(names) == 1 and isinstance(given, (list, tuple)) and all(
                d is None or isinstance(d, (int, np.integer)) for d in given):
            given = [given]  # one shape for a one-input model
        given = [None if s is None else tuple(s) for s in given]
        if len(given) != len(names):
            raise InvalidArgumentError(
                f"{caller}: argument `input_shapes`: the model has {len(names)} inputs {names}; got "
                f"{len(given)} shapes")
        for name, s, l in zip(names, given, graph.input_layers):
            if s is not None and l.batch_shape is not None and len(s) != len(l.batch_shape):
                raise InvalidArgumentError(
                    f"{caller}: argument `input_shapes`: input {name!r} has shape {l.batch_shape} "
                    f"(batch axis first); got {s}")
    out = []
    for name, s in zip(names, given):
        if s is None or any(d is None for d in s[1:]) or any(
                isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0 for d in s[1:]):
            raise InvalidArgumentError(
                f"{caller}: input {name!r} has shape {s}; pass `input_shapes` with every axis but the "
                f"batch known")
        out.append((int(batch),) + tuple(int(d) for d in s[1:]))
    return out


def model_cost(graph, batch_size=1, input_shapes=None):
    """The :class:`ModelCost` of a model's graph (see the module doc for the conventions)."""
    shapes = _input_shapes(graph, batch_size, input_shapes, "cost")
    records, out_shapes = [], {}
    _graph_cost(graph, shapes, int(batch_size), "", None, set(), records, out_shapes)
    if records:
        total = C.total([r.cost for r in records])
    else:
        total = C.Cost("total", (), 0, 0, 0, 0, 0)
    return ModelCost(records, total, int(batch_size), out_shapes)


# ---------------------------------------------------------------------- summary

def _fmt_shape(shape, keras=True):
    """``(None, 28, 28, 75)``: the batch axis shown as None, as Keras does (``keras=True``)."""
    if isinstance(shape, list):
        return "[" + ", ".join(_fmt_shape(s, keras) for s in shape) + "]"
    if shape is None:
        return "?"
    dims = ["None" if (keras and i == 0) or d is None else str(d) for i, d in enumerate(shape)]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _table(header, rows, align, sep="="):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        return "  ".join(str(v).ljust(w) if a == "l" else str(v).rjust(w)
                         for v, w, a in zip(r, widths, align)).rstrip()
    width = sum(widths) + 2 * (len(widths) - 1)
    return "\n".join([line(header), sep * width] + [line(r) for r in rows])


def summary(model, batch_size=1, input_shapes=None):
    """The text of :meth:`Model.summary`."""
    graph = model._graph
    counts = param_counts(graph)
    try:
        cost = model_cost(graph, batch_size, input_shapes)
    except InvalidArgumentError:
        if input_shapes is not None or all(
                l.batch_shape is not None and None not in l.batch_shape[1:] for l in graph.input_layers):
            raise
        cost = None  # an input axis is unknown: parameters only (pass input_shapes for MACs)
    per = cost.by_layer() if cost is not None else {}
    total_macs = cost.total.macs if cost is not None else 0
    rows = []
    for layer in graph.layers:
        cls = ("Sequential" if layer.class_name == "Sequential" else "Functional") if _is_graph(layer) \
            else layer.class_name
        shape = cost.output_shapes.get((layer.name, 0)) if cost is not None else None
        if shape is None and getattr(layer, "batch_shape", None) is not None:
            shape = layer.batch_shape
        c = per.get(layer.name)
        macs = c.macs if c is not None else 0
        share = f"{100 * macs / total_macs:.1f}%" if total_macs else "-"
        rows.append((f"{layer.name} ({cls})", _fmt_shape(shape), f"{counts.layers[layer.name].total:,}",
                     f"{macs:,}" if cost is not None else "?", share))
    table = _table(("Layer (type)", "Output Shape", "Param #", "MACs", "MACs %"), rows, "llrrr")
    width = len(table.splitlines()[1])
    lines = [f'Model: "{model.name}"', "_" * width, table, "=" * width,
             f"Total params: {counts.total:,}",
             f"Trainable params: {counts.trainable:,}",
             f"Non-trainable params: {counts.non_trainable:,}",
             "_" * width]
    if cost is None:
        lines.append("Total MACs: unknown (an input shape is not fully known; pass input_shapes)")
    else:
        per_what = "per sample" if cost.batch_size == 1 else f"for a batch of {cost.batch_size}"
        lines += [f"Total MACs: {total_macs:,} ({C._si(total_macs)}; {per_what}, Keras graph: "
                  f"BatchNormalization not folded)",
                  f"Total FLOPs: {cost.total.flops:,} ({C._si(cost.total.flops)})"]
    return "\n".join(lines)


# ---------------------------------------------------------------------- profile

@dataclasses.dataclass(frozen=True)
class ProfileRecord:
    """One step of the execution graph, timed.

    Attributes
    ----------
    name : str
        ``"conv2d_1 (+batch_normalization_1, re_lu_1)"`` for a step that absorbed
        layers, else the layer's name.
    layers : tuple of str
        The Keras layers the step runs (the first is the step's own).
    class_name : str
        The first layer's Keras class.
    seconds : float
        Median time of the step over the repeats.
    macs, flops : int
        Keras-graph counts of ``layers`` at the profiled batch size.
    gflops : float
        Achieved ``flops / seconds / 1e9``.
    share : float
        ``seconds`` over the sum of every step's ``seconds``.
    """

    name: str
    layers: tuple
    class_name: str
    seconds: float
    macs: int
    flops: int
    gflops: float
    share: float


@dataclasses.dataclass(frozen=True)
class Profile:
    """What :meth:`Model.profile` measured: ``records`` (one per executed step, in execution
    order), the batch size, backend and repeats, and totals. ``str()`` is a table."""

    records: list
    batch_size: int
    backend: str
    repeat: int
    seconds: float      # sum of the steps' median times
    flops: int
    macs: int
    #: the largest total of activations alive at once during a run (bytes; memory shared
    #: by views counted once) and the step running then
    peak_activation_bytes: int = 0
    peak_step: str = ""
    #: the model's weights as loaded (bytes)
    weight_bytes: int = 0
    #: steps that wrote their result over a dead input instead of a new array
    in_place_steps: int = 0

    @property
    def gflops(self):
        return self.flops / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def table(self):
        rows = [(r.name, r.class_name, f"{r.seconds * 1e3:.3f}", f"{100 * r.share:.1f}%", f"{r.macs:,}",
                 f"{r.gflops:.2f}") for r in self.records]
        rows.append(("total", "", f"{self.seconds * 1e3:.3f}", "100.0%", f"{self.macs:,}", f"{self.gflops:.2f}"))
        head = (f"Profile: batch {self.batch_size}, backend {self.backend!r}, median of {self.repeat} run(s) "
                f"per step (execution graph: folded/fused steps named after the layers they absorb)")
        mem = (f"Memory: weights {self.weight_bytes / 2**20:.2f} MiB; peak live activations "
               f"{self.peak_activation_bytes / 2**20:.2f} MiB (during {self.peak_step}); "
               f"{self.in_place_steps} step(s) wrote over a dead input")
        return head + "\n" + mem + "\n" + _table(("Step", "Type", "ms", "time %", "MACs", "GFLOP/s"), rows, "llrrrr")

    __str__ = table


def _absorbed(graph):
    """``{id(step of graph.plan): [plain-plan steps it runs]}``."""
    plain = graph.plain_plan
    in_plain = {id(s) for s in plain}
    consumers = {}
    for s in plain:
        for k in s.input_keys:
            consumers.setdefault(k, []).append(s)
    producer = {k: s for s in plain for k in s.outputs}
    out = {}
    for step in graph.plan:
        if step.inputs is None:
            continue
        if id(step) in in_plain:
            out[id(step)] = [step]
            continue
        named = [s for s in plain if s.inputs is not None and s.layer.name == step.layer.name]
        first = next((s for s in named if s.inputs == step.inputs), None)
        before = []  # layers feeding the step that it absorbed (ZeroPadding folded into a conv)
        if first is None:
            for s in named:
                walk, prev = [], s
                while prev.input_keys and prev.inputs != step.inputs and prev.input_keys[0] in producer:
                    prev = producer[prev.input_keys[0]]
                    walk.append(prev)
                if prev.inputs == step.inputs:
                    first, before = s, walk
                    break
        chain = [first]
        while chain[-1].outputs[0] != step.outputs[0]:
            chain.append(consumers[chain[-1].outputs[0]][0])
        out[id(step)] = chain + before
    return out


def profile(model, x, repeat=5, warmup=1, backend="auto"):
    """The :class:`Profile` of ``model`` on ``x`` (see :meth:`Model.profile`)."""
    from .model import _flatten
    for name, v, low in (("repeat", repeat, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise InvalidArgumentError(f"profile: argument `{name}` must be an integer >= {low}; got {v!r}")
    graph = model._graph
    xs = model._inputs(x)
    batch = xs[0].shape[0]
    if batch < 1:
        raise InvalidArgumentError("profile: argument `x` holds no sample")
    if backend not in (None, "auto"):
        from .. import backends
        backends.backend_ops(backend)
    cost = model_cost(graph, batch, [a.shape for a in xs]).by_call()
    feeds = {l.name: a for l, a in zip(graph.input_layers, xs)}
    keys = _flatten(graph.outputs_struct)
    times = {}

    def timer(step, seconds):
        times.setdefault(id(step), []).append(seconds)

    stats = {}   # memory figures, from the first run
    for i in range(warmup):
        graph.run(feeds, keys, backend, stats=stats if i == 0 else None)
    for i in range(repeat):
        graph.run(feeds, keys, backend, timer=timer, stats=stats if i == 0 and not warmup else None)
    absorbed = _absorbed(graph)
    steps = [s for s in graph.plan if id(s) in times]
    med = {id(s): statistics.median(times[id(s)]) for s in steps}
    total_time = sum(med.values())
    records = []
    for s in steps:
        chain = absorbed[id(s)]
        names = tuple(c.layer.name for c in chain)
        cs = [cost[(c.layer.name, c.outputs[0][1])] for c in chain if (c.layer.name, c.outputs[0][1]) in cost]
        macs, flops = sum(c.macs for c in cs), sum(c.flops for c in cs)
        label = names[0] + (f" (+{', '.join(names[1:])})" if len(names) > 1 else "")
        sec = med[id(s)]
        records.append(ProfileRecord(label, names, chain[0].layer.class_name, sec, macs, flops,
                                     flops / sec / 1e9 if sec > 0 else 0.0,
                                     sec / total_time if total_time > 0 else 0.0))
    weight_bytes = sum(w.nbytes for layer in _leaf_layers(graph) for w in layer.weights.values())
    return Profile(records, batch, str(backend), int(repeat), total_time, sum(r.flops for r in records),
                   sum(r.macs for r in records), stats.get("peak_bytes", 0), stats.get("peak_step", ""),
                   weight_bytes, stats.get("donated", 0))


def _leaf_layers(graph, seen=None):
    """Every layer of ``graph`` and its nested models, once."""
    seen = set() if seen is None else seen
    for layer in graph.layers:
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if _is_graph(layer):
            yield from _leaf_layers(layer, seen)
        else:
            yield layer
