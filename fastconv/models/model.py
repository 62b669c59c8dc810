"""The model graph: building it from a Keras config, loading weights, running it."""

import contextlib
import numbers
import weakref

import numpy as np

from .. import backends
from ..errors import FastconvError, InvalidArgumentError, InvalidDTypeError, InvalidShapeError
from . import _fuse, _io
from .errors import LimitExceededError, ModelFormatError, UnsafeModelError, UnsupportedLayerError
from .layers import (CODE_LAYERS, DTYPE, LAYERS, MODEL_CLASSES, OPS, InputLayer, KerasOp, custom_layer,
                     op_constant, refuse_code, supported_layers)

_TRUSTED_MODULES = ("keras", "tf_keras", "tensorflow")
_SERIALIZED_CODE_MARKERS = ("__lambda__", "__python_function__", "__function__")


# ---------------------------------------------------------------------- safety

def scan_for_code(obj, where="model", depth=0, limit=_io.DEFAULTS["max_json_depth"]):
    """Refuse any serialized function/bytecode or code-running layer anywhere in a config."""
    if depth > limit:
        raise LimitExceededError(f"{where}: the configuration is nested deeper than max_json_depth={limit}",
                                 limit="max_json_depth", value=limit)
    if isinstance(obj, dict):
        cls = obj.get("class_name")
        if isinstance(cls, str) and (cls in _SERIALIZED_CODE_MARKERS or cls in CODE_LAYERS):
            if cls in CODE_LAYERS:
                inner = obj.get("config") if isinstance(obj.get("config"), dict) else {}
                refuse_code(obj.get("name") or inner.get("name") or where, cls)
            raise UnsafeModelError(
                f"{where}: the configuration holds a serialized Python function ({cls!r}); fastconv "
                f"never deserializes or executes code from a model file")
        if "function_type" in obj or "output_shape_type" in obj or (
                "function" in obj and isinstance(obj.get("function"), (list, tuple))):
            raise UnsafeModelError(
                f"{where}: the configuration holds a serialized Python function (bytecode); fastconv "
                f"never deserializes or executes code from a model file")
        for k, v in obj.items():
            scan_for_code(v, f"{where}/{k}", depth + 1, limit)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            scan_for_code(v, where, depth + 1, limit)


def _check_origin(entry, name, class_name):
    module = entry.get("module")
    registered = entry.get("registered_name")
    # built-in Keras classes come from keras.* (tf_keras / tensorflow.keras for Keras 2) with
    # no registered name, or their own class name; anything else (keras_hub>..., my_pkg>...)
    # is a different class that merely shares a name
    trusted = module is None or (isinstance(module, str) and (
        module in _TRUSTED_MODULES or module.startswith(tuple(m + "." for m in _TRUSTED_MODULES))))
    custom = not trusted or registered not in (None, "", class_name)
    if custom and custom_layer(class_name, registered) is None:
        raise UnsupportedLayerError(
            f"layer {name!r}: class {class_name!r} comes from a custom module/registration "
            f"(module={module!r}, registered_name={registered!r}); custom layers are not supported "
            f"(nothing from a model file is imported). Supported: {', '.join(supported_layers())}")


# ---------------------------------------------------------------------- graph

def _is_history(v):
    return isinstance(v, (list, tuple)) and len(v) >= 3 and isinstance(v[0], str) \
        and isinstance(v[1], int) and isinstance(v[2], int)


def _tensor_struct(obj, where):
    """Keras 3 node args -> structure of (layer, node, index) keys."""
    if isinstance(obj, dict) and obj.get("class_name") == "__keras_tensor__":
        hist = (obj.get("config") or {}).get("keras_history")
        if not _is_history(hist):
            raise ModelFormatError(f"{where}: a tensor without a valid keras_history: {hist!r}")
        return (hist[0], hist[1], hist[2])
    if isinstance(obj, (list, tuple)):
        return [_tensor_struct(v, where) for v in obj]
    if isinstance(obj, dict):
        return {k: _tensor_struct(v, where) for k, v in obj.items()}
    raise UnsupportedLayerError(f"{where}: a constant argument {obj!r} in a layer call is not supported")


def _has_tensor(obj):
    if isinstance(obj, dict):
        return obj.get("class_name") == "__keras_tensor__" or any(_has_tensor(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_tensor(v) for v in obj)
    return False


def _parse_node(node, where):
    if isinstance(node, dict):  # Keras 3
        args = node.get("args", [])
        kwargs = node.get("kwargs", {}) or {}
        if not isinstance(args, list) or not args:
            raise ModelFormatError(f"{where}: a call node without arguments")
        if len(args) > 1 or any(_has_tensor(v) for k, v in kwargs.items() if k != "mask"):
            raise UnsupportedLayerError(f"{where}: layer calls with extra tensor arguments are not supported")
        return _tensor_struct(args[0], where)
    if isinstance(node, list):  # Keras 2: [[name, node, index, kwargs], ...]
        keys = []
        for item in node:
            if not _is_history(item):
                raise ModelFormatError(f"{where}: bad inbound node entry {item!r}")
            keys.append((item[0], item[1], item[2]))
        return keys[0] if len(keys) == 1 else keys
    raise ModelFormatError(f"{where}: bad inbound node {node!r}")


def _is_op(entry):
    """Whether a layer entry is a ``keras.ops`` call of the fixed :data:`OPS` table."""
    module = entry.get("module")
    return isinstance(module, str) and module.startswith(("keras.src.ops.", "keras.ops")) \
        and entry.get("class_name") in OPS


def _parse_op_node(layer, node, where):
    """A Keras 3 call node of a ``keras.ops`` operation: tensor and constant arguments."""
    if not isinstance(node, dict):
        raise ModelFormatError(f"{where}: bad inbound node for a {layer.class_name} op")
    args = node.get("args", [])
    kwargs = node.get("kwargs", {}) or {}
    if not isinstance(args, list) or not args:
        raise ModelFormatError(f"{where}: a call node without arguments")
    if kwargs:
        raise UnsupportedLayerError(f"{where}: keyword arguments {sorted(kwargs)[:5]} to a "
                                    f"{layer.class_name} op are not supported")
    keys, template = [], []
    for a in args:
        if _has_tensor(a):
            key = _tensor_struct(a, where)
            if not isinstance(key, tuple):
                raise UnsupportedLayerError(f"{where}: a nested tensor argument to a {layer.class_name} op")
            keys.append(key)
            template.append(None)
        else:
            template.append(op_constant(a, where))
    layer.set_template(template, where)
    return keys


def _io_struct(value, where, single_list_unwrap):
    """input_layers / output_layers -> structure of keys."""
    if _is_history(value):
        return (value[0], value[1], value[2])
    if isinstance(value, list):
        out = [_io_struct(v, where, False) for v in value]
        return out[0] if single_list_unwrap and len(out) == 1 else out
    if isinstance(value, dict):
        return {k: _io_struct(v, where, False) for k, v in value.items()}
    raise ModelFormatError(f"{where}: bad input/output specification {value!r}")


def _flatten(struct):
    if isinstance(struct, tuple):
        return [struct]
    if isinstance(struct, list):
        return [k for s in struct for k in _flatten(s)]
    if isinstance(struct, dict):
        return [k for key in sorted(struct) for k in _flatten(struct[key])]
    raise AssertionError(struct)


def _rebuild(struct, values):
    """Put the values of the flattened keys back into ``struct``'s shape."""
    it = iter(values)

    def go(s):
        if isinstance(s, tuple):
            return next(it)
        if isinstance(s, list):
            return [go(v) for v in s]
        return {k: go(s[k]) for k in sorted(s)}
    out = go(struct)
    if isinstance(struct, dict):
        out = {k: out[k] for k in struct}
    return out


class _Node:
    __slots__ = ("layer", "index", "inputs")

    def __init__(self, layer, index, inputs):
        self.layer = layer
        self.index = index
        self.inputs = inputs          # structure of keys, None for an input layer


class _Step:
    """One call in an execution plan: ``layer`` on ``inputs`` (a structure of keys) giving ``outputs``."""
    __slots__ = ("layer", "inputs", "input_keys", "outputs")

    def __init__(self, layer, inputs, outputs):
        self.layer = layer
        self.inputs = inputs
        self.input_keys = _flatten(inputs) if inputs is not None else []
        self.outputs = outputs


class Graph:
    """One Sequential or Functional model (the outer one or a nested one)."""

    multi_input = True

    def __init__(self, name, class_name, config, limits, depth=0, counter=None):
        self.name = name
        self.class_name = class_name
        self.config = config
        self.counter = counter if counter is not None else [0]
        if depth > limits["max_nesting"]:
            raise LimitExceededError(f"model {name!r}: models nested deeper than max_nesting={limits['max_nesting']}",
                                     limit="max_nesting", value=limits["max_nesting"], actual=depth)
        self.layers = []            # in the model's `layers` order (what the weights follow)
        self.by_name = {}
        self.nodes = []
        layers_cfg = config.get("layers")
        if not isinstance(layers_cfg, list):
            raise ModelFormatError(f"model {name!r}: its config has no 'layers' list")
        if class_name == "Sequential":
            self._build_sequential(layers_cfg, limits, depth)
        else:
            self._build_functional(config, layers_cfg, limits, depth)
        self._order()

    # -- construction
    def _make_layer(self, entry, limits, depth):
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
            raise ModelFormatError(f"model {self.name!r}: a layer entry without a class_name: {str(entry)[:200]}")
        cls = entry["class_name"]
        cfg = entry.get("config")
        if not isinstance(cfg, dict):
            raise ModelFormatError(f"model {self.name!r}: layer entry {cls!r} without a config dict")
        name = entry.get("name") or cfg.get("name")
        if not isinstance(name, str):
            raise ModelFormatError(f"model {self.name!r}: a {cls} layer without a name")
        self.counter[0] += 1
        if self.counter[0] > limits["max_layers"]:
            raise LimitExceededError(f"the model has more than max_layers={limits['max_layers']} layers",
                                     limit="max_layers", value=limits["max_layers"])
        if cls in CODE_LAYERS:
            refuse_code(name, cls)
        _check_origin(entry, name, cls)
        user = custom_layer(cls, entry.get("registered_name"))
        if user is not None:
            layer = user(name, cls, cfg)
            layer.trainable = cfg.get("trainable", True) is not False
        elif _is_op(entry):
            layer = OPS[cls](name, cls, cfg)
            layer.trainable = True
        elif cls in MODEL_CLASSES:
            layer = Graph(name, "Sequential" if cls == "Sequential" else "Functional", cfg, limits,
                          depth + 1, self.counter)
            layer.trainable = cfg.get("trainable", True) is not False
        elif cls in LAYERS:
            layer = LAYERS[cls](name, cls, cfg)
            layer.trainable = cfg.get("trainable", True) is not False
        else:
            raise UnsupportedLayerError(
                f"layer {name!r} has class {cls!r}, which fastconv cannot run. Supported layers: "
                f"{', '.join(supported_layers())}")
        if name in self.by_name:
            raise ModelFormatError(f"model {self.name!r}: two layers are named {name!r}")
        self.by_name[name] = layer
        return layer

    def _build_sequential(self, layers_cfg, limits, depth):
        prev = None
        self.input_layers = []
        for i, entry in enumerate(layers_cfg):
            layer = self._make_layer(entry, limits, depth)
            if isinstance(layer, InputLayer):
                if i != 0:
                    raise ModelFormatError(f"model {self.name!r}: an InputLayer after the first layer")
                self.input_layers.append(layer)
                self.nodes.append(_Node(layer, 0, None))
                prev = (layer.name, 0, 0)
                continue
            if prev is None:  # no InputLayer: the first layer (or the model) carries the shape
                cfg = entry.get("config", {})
                shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
                if shape is None and self.config.get("build_input_shape") is not None:
                    shape = self.config["build_input_shape"]
                # (an unbuilt Sequential has no input shape: its input is then not checked)
                inp = InputLayer(f"{self.name}_input", "InputLayer", {"batch_shape": shape})
                inp.trainable = True
                self.input_layers.append(inp)
                self.nodes.append(_Node(inp, 0, None))
                prev = (inp.name, 0, 0)
            if getattr(layer, "multi_input", False) and not isinstance(layer, Graph):
                raise ModelFormatError(
                    f"model {self.name!r}: {layer.class_name} layer {layer.name!r} needs several inputs "
                    f"and cannot be part of a Sequential model")
            self.layers.append(layer)
            self.nodes.append(_Node(layer, 0, prev))
            prev = (layer.name, 0, 0)
        if not self.input_layers:
            raise ModelFormatError(f"model {self.name!r}: an empty Sequential model")
        self.inputs_struct = (self.input_layers[0].name, 0, 0)
        self.outputs_struct = prev

    def _build_functional(self, config, layers_cfg, limits, depth):
        for entry in layers_cfg:
            layer = self._make_layer(entry, limits, depth)
            self.layers.append(layer)
            nodes = entry.get("inbound_nodes", [])
            if not isinstance(nodes, list):
                raise ModelFormatError(f"layer {layer.name!r}: inbound_nodes must be a list")
            if isinstance(layer, InputLayer):
                self.nodes.append(_Node(layer, 0, None))
                continue
            for k, node in enumerate(nodes):
                if isinstance(layer, KerasOp):
                    inputs = _parse_op_node(layer, node, f"layer {layer.name!r}")
                    self.nodes.append(_Node(layer, k, inputs))
                    continue
                inputs = _parse_node(node, f"layer {layer.name!r}")
                if not isinstance(layer, Graph) and layer.multi_input != isinstance(inputs, list):
                    raise ModelFormatError(
                        f"layer {layer.name!r} ({layer.class_name}) takes "
                        f"{'a list of tensors' if layer.multi_input else 'one tensor'}; the model "
                        f"gives it {'a list' if isinstance(inputs, list) else 'one tensor'}")
                self.nodes.append(_Node(layer, k, inputs))
        for key in ("input_layers", "output_layers"):
            if key not in config:
                raise ModelFormatError(f"model {self.name!r}: its config has no {key!r}")
        self.inputs_struct = _io_struct(config["input_layers"], f"model {self.name!r}", True)
        self.outputs_struct = _io_struct(config["output_layers"], f"model {self.name!r}", True)
        self.input_layers = []
        for k in _flatten(self.inputs_struct):
            layer = self.by_name.get(k[0])
            if not isinstance(layer, InputLayer):
                raise ModelFormatError(f"model {self.name!r}: input {k[0]!r} is not an InputLayer of the model")
            self.input_layers.append(layer)

    def _order(self):
        """Topological order of the nodes; every key used must be produced."""
        producers = {}
        for node in self.nodes:
            producers[(node.layer.name, node.index)] = node
        order, state = [], {}

        def visit(node):
            sid = id(node)
            if state.get(sid) == 2:
                return
            if state.get(sid) == 1:
                raise ModelFormatError(f"model {self.name!r}: the graph has a cycle through {node.layer.name!r}")
            state[sid] = 1
            stack = [(node, iter(_flatten(node.inputs) if node.inputs is not None else []))]
            while stack:
                cur, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    state[id(cur)] = 2
                    order.append(cur)
                    continue
                dep = producers.get((nxt[0], nxt[1]))
                if dep is None:
                    raise ModelFormatError(
                        f"model {self.name!r}: layer {cur.layer.name!r} takes tensor {list(nxt)} that "
                        f"no layer of the model produces")
                _check_tensor_index(self.name, dep, nxt)
                if state.get(id(dep)) == 1:
                    raise ModelFormatError(f"model {self.name!r}: the graph has a cycle through {dep.layer.name!r}")
                if state.get(id(dep)) != 2:
                    state[id(dep)] = 1
                    stack.append((dep, iter(_flatten(dep.inputs) if dep.inputs is not None else [])))
        for node in self.nodes:
            visit(node)
        self.order = order
        self.producers = producers
        for k in _flatten(self.outputs_struct):
            if (k[0], k[1]) not in producers:
                raise ModelFormatError(f"model {self.name!r}: output {list(k)} is not produced by any layer")
            _check_tensor_index(self.name, producers[(k[0], k[1])], k)

    # -- weights
    def load_weights(self, store, ctx, limits):
        if store.kind == "keras":
            groups = store.assign(ctx, [(l.name, _class_for_path(l)) for l in self.layers])
            for layer in self.layers:
                g = groups[layer.name]
                if isinstance(layer, Graph):
                    layer.load_weights(store, g, limits)
                elif layer.weight_spec():
                    if g is None:
                        raise ModelFormatError(
                            f"{store.where}: no weights for layer {layer.name!r} ({layer.class_name}) of "
                            f"model {self.name!r}")
                    layer.set_weights(store.values(g, f"layer {layer.name!r}", limits))
            return
        # legacy
        for layer in self.layers:
            if isinstance(layer, Graph):
                pairs = store.layer_pairs(ctx, layer.name, limits) if not isinstance(ctx, list) else ctx
                if pairs is None:
                    raise ModelFormatError(f"{store.where}: no weights group for nested model {layer.name!r}")
                layer._load_legacy_pool(store, pairs, limits)
            elif layer.weight_spec():
                pairs = store.layer_pairs(ctx, layer.name, limits)
                if not pairs:
                    raise ModelFormatError(
                        f"{store.where}: no weights for layer {layer.name!r} ({layer.class_name}) of "
                        f"model {self.name!r}")
                _set_legacy(layer, pairs)

    def _leaves(self):
        for layer in self.layers:
            if isinstance(layer, Graph):
                yield from ((l, tr and layer.trainable) for l, tr in layer._leaves())
            elif layer.weight_spec():
                yield layer, layer.trainable

    def _load_legacy_pool(self, store, pool, limits):
        """A nested model saved as one legacy layer: match weights to sublayers by the
        layer-name component of their names, else by Keras's legacy order (trainable
        weights of all sublayers, then the non-trainable ones)."""
        leaves = list(self._leaves())
        matched = {}
        for layer, _ in leaves:
            mine = [(n, a) for n, a in pool if _io._legacy_owner(n) == layer.name]
            if len(mine) != len(layer.weight_spec()):
                break
            matched[id(layer)] = mine
        else:
            for layer, _ in leaves:
                _set_legacy(layer, matched[id(layer)])
            return
        trainable, frozen = [], []
        for layer, tr in leaves:
            for i, (_, is_tr, _) in enumerate(layer.weight_spec()):
                (trainable if (is_tr and tr) else frozen).append((layer, i))
        slots = trainable + frozen
        if len(slots) != len(pool):
            raise ModelFormatError(
                f"{store.where}: nested model {self.name!r} expects {len(slots)} weight arrays; the file "
                f"has {len(pool)}")
        per = {}
        for (layer, i), (_, arr) in zip(slots, pool):
            per.setdefault(id(layer), (layer, {}))[1][i] = arr
        for layer, d in per.values():
            layer.set_weights([d[i] for i in range(len(d))])

    # -- running
    def run(self, feeds, keys, backend, timer=None, stats=None):
        """Compute ``keys`` given {input layer name: array}; returns {key: array}.

        Uses the optimised plan (folded BatchNormalization, fused activations)
        unless a requested tensor only exists in the original graph. ``timer``,
        if given, is called as ``timer(step, seconds)`` after each step that
        runs a layer (``time.perf_counter`` around the call; for Model.profile).

        Memory: each activation is released right after its last use, and an
        elementwise layer (activations, BatchNormalization, Rescaling, Add and the
        other merges) writes its result over an input that dies at that step
        (:meth:`Layer.call_donated`), so a chain of them reuses one buffer. An
        array is donated only when the engine made it, nothing else alive shares
        its memory (views included) and it is not an input or a requested output:
        callers' arrays are never written. ``stats``, if a dict, receives
        ``peak_bytes`` (the largest total of live activations, counting shared
        memory once), ``peak_step`` (the layer running then) and ``donated``
        (how many steps wrote over an input)."""
        if timer is not None:
            from time import perf_counter
        plan = self.plan
        if plan is not self.plain_plan and not all(k in self.fused_keys for k in keys):
            plan = self.plain_plan
        producer = {}
        for step in plan:
            for k in step.outputs:
                producer[k] = step
        needed, stack = set(), [producer[k] for k in keys]
        while stack:
            step = stack.pop()
            if id(step) in needed:
                continue
            needed.add(id(step))
            stack.extend(producer[k] for k in step.input_keys)
        order = [st for st in plan if id(st) in needed]
        last_use = {}
        for i, step in enumerate(order):
            for k in step.input_keys:
                last_use[k] = i
        keep = set(keys)
        values = {}
        live = _LiveSet()
        cu = backends._module("cuda") if backend == "cuda" else None
        for i, step in enumerate(order):
            if step.inputs is None:
                v = feeds[step.layer.name]
                if cu is not None:
                    v = cu.to_device(v)   # a no-op for a device array
                values[step.outputs[0]] = v
                live.add(v, owned=False)         # the caller's array: never written
                continue
            flat = [values[k] for k in step.input_keys]
            args = _rebuild(step.inputs, flat)
            donated = ()
            if cu is None and getattr(step.layer, "donates", False):
                donated = tuple(j for j, k in enumerate(step.input_keys)
                                if last_use[k] == i and k not in keep and step.input_keys.count(k) == 1
                                and live.sole_owner(flat[j]))
            if timer is not None:
                t0 = perf_counter()
            if isinstance(step.layer, Graph):
                outs = step.layer.call(args, backend)
            elif cu is not None:
                outs = [_call_layer_cuda(step.layer, args, cu, stats)]
            elif donated:
                outs = [_call_layer(step.layer, args, backend, donated)]
            else:
                outs = [_call_layer(step.layer, args, backend)]
            if timer is not None:
                if cu is not None:
                    cu.cuda.synchronize()   # kernels run asynchronously: time them to the end
                timer(step, perf_counter() - t0)
            in_roots = {id(_root(a)) for a in flat}
            # fresh memory from a built-in layer is the engine's (a registered layer's output might
            # be an array the layer keeps); a view or an input passed through inherits its owner
            fresh_ok = isinstance(step.layer, Graph) or type(step.layer).__module__ == _BUILTIN_LAYERS
            for k, v in zip(step.outputs, outs):
                values[k] = v
                live.add(v, owned=(fresh_ok and id(_root(v)) not in in_roots) or live.owned(v))
            if stats is not None:
                stats["donated"] = stats.get("donated", 0) + bool(donated)
                if live.bytes > stats.get("peak_bytes", -1):
                    stats["peak_bytes"], stats["peak_step"] = live.bytes, step.layer.name
            for k in step.input_keys:
                if last_use.get(k) == i and k not in keep and k in values:
                    live.discard(values.pop(k))
        return {k: values[k] for k in keys}

    # -- plans
    def make_plans(self, optimize):
        """The plain plan (one step per node) and, if ``optimize``, the fused one."""
        self.plain_plan = [_Step(n.layer, n.inputs, self._node_outputs(n)) for n in self.order]
        for layer in self.layers:
            if isinstance(layer, Graph):
                layer.make_plans(optimize)
        self.plan = self.plain_plan
        self.fused_keys = {k for st in self.plain_plan for k in st.outputs}
        if optimize:
            self.plan, self.fused_keys = _fuse.optimize(self)

    def _node_outputs(self, node):
        if isinstance(node.layer, Graph):
            n = len(_flatten(node.layer.outputs_struct))
            return [(node.layer.name, node.index, j) for j in range(n)]
        return [(node.layer.name, node.index, 0)]

    def call(self, args, backend):
        """Run as a layer of an outer model; returns the flattened outputs."""
        if isinstance(self.inputs_struct, tuple):   # a single input
            flat_in = args if isinstance(args, list) and len(args) == 1 else [args]
        else:
            flat_in = _flatten_values(args)
        if len(flat_in) != len(self.input_layers):
            raise ModelFormatError(
                f"nested model {self.name!r} takes {len(self.input_layers)} inputs; its call gives {len(flat_in)}")
        feeds = {l.name: x for l, x in zip(self.input_layers, flat_in)}
        keys = _flatten(self.outputs_struct)
        vals = self.run(feeds, keys, backend)
        return [vals[k] for k in keys]


_BUILTIN_LAYERS = InputLayer.__module__

# device copies of each model's weights (backend="cuda"), dropped with the model
_DEVICE_WEIGHTS = weakref.WeakKeyDictionary()


def _all_weights(graph, seen=None):
    """Every weight array of the graph's layers and of the steps of its plans (folded weights)."""
    seen = set() if seen is None else seen
    layers = list(graph.layers) + [st.layer for plan in (graph.plan, graph.plain_plan) for st in plan]
    for layer in layers:
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, Graph):
            yield from _all_weights(layer, seen)
            continue
        yield from layer.weights.values()
        for attr in ("mul", "add"):          # BatchNormalization's affine form
            v = getattr(layer, attr, None)
            if isinstance(v, np.ndarray):
                yield v


def _root(a):
    """The array that owns ``a``'s memory (``a`` itself, or the end of its ``.base`` chain)."""
    while isinstance(getattr(a, "base", None), np.ndarray):
        a = a.base
    return a


class _LiveSet:
    """The arrays alive during a run, by the memory they use: how many live values share
    each owning array, whether the engine made it, and the bytes alive in all."""

    __slots__ = ("count", "mine", "bytes")

    def __init__(self):
        self.count, self.mine, self.bytes = {}, set(), 0

    def add(self, v, owned):
        r = _root(v)
        key = id(r)
        if key not in self.count:
            self.count[key] = 0
            self.bytes += getattr(r, "nbytes", 0)
            if owned:
                self.mine.add(key)
        self.count[key] += 1

    def discard(self, v):
        r = _root(v)
        key = id(r)
        self.count[key] -= 1
        if not self.count[key]:
            del self.count[key]
            self.mine.discard(key)
            self.bytes -= getattr(r, "nbytes", 0)

    def owned(self, v):
        return id(_root(v)) in self.mine

    def sole_owner(self, v):
        """Whether ``v`` may be overwritten: the engine made its memory and no other live value uses it."""
        key = id(_root(v))
        return key in self.mine and self.count.get(key) == 1 and isinstance(v, np.ndarray) \
            and v.flags.writeable


def _call_layer_cuda(layer, args, cu, stats):
    """``layer`` on device arrays: its :meth:`Layer.call_cuda`, or, for a layer without a device
    implementation, :meth:`Layer.call` on host copies and the result copied back (counted in
    ``stats["host_round_trips"]``)."""
    with _layer_errors(layer, args):
        y = layer.call_cuda(args, cu)
    if y is NotImplemented:
        host = _rebuild_values(args, cu.to_host)
        y = cu.to_device(_call_layer(layer, host, "auto"))
        if stats is not None:
            stats["host_round_trips"] = stats.get("host_round_trips", 0) + 1
    return y


def _rebuild_values(args, fn):
    if isinstance(args, list):
        return [_rebuild_values(a, fn) for a in args]
    if isinstance(args, dict):
        return {k: _rebuild_values(v, fn) for k, v in args.items()}
    return fn(args)


def _call_layer(layer, args, backend, donated=()):
    """``layer.call`` (or ``call_donated`` when inputs are donated), with NumPy's complaints about
    a model inconsistent with its input (shapes that don't broadcast or concatenate...) turned into
    a fastconv error naming the layer."""
    with _layer_errors(layer, args):
        if donated:
            return layer.call_donated(args, backend, donated)
        return layer.call(args, backend)


@contextlib.contextmanager
def _layer_errors(layer, args):
    """NumPy's complaints about a model inconsistent with its input, raised inside the block,
    as a fastconv error naming the layer (fastconv's own errors pass through)."""
    try:
        yield
    except FastconvError:
        raise
    except (ValueError, TypeError, OverflowError, IndexError) as exc:
        shapes = [getattr(a, "shape", None) for a in _flatten_values(args)]
        raise InvalidArgumentError(
            f"predict: layer {layer.name!r} ({layer.class_name}) cannot run on inputs of shape "
            f"{', '.join(map(str, shapes))}: {type(exc).__name__}: {exc}") from exc


def _check_tensor_index(model, node, key):
    n = len(_flatten(node.layer.outputs_struct)) if isinstance(node.layer, Graph) else 1
    if not 0 <= key[2] < n:
        raise ModelFormatError(
            f"model {model!r}: tensor {list(key)} asks for output {key[2]} of layer {key[0]!r}, "
            f"which has {n} output(s)")


def _flatten_values(args):
    if isinstance(args, list):
        return [v for a in args for v in _flatten_values(a)]
    if isinstance(args, dict):
        return [v for k in sorted(args) for v in _flatten_values(args[k])]
    return [args]


def _class_for_path(layer):
    if isinstance(layer, Graph):
        return "Sequential" if layer.class_name == "Sequential" else "Functional"
    return layer.class_name


def _set_legacy(layer, pairs):
    spec = layer.weight_spec()
    by_name = {}
    for n, a in pairs:
        by_name.setdefault(_io.legacy_var_name(n), a)
    arrays = []
    for var, _, aliases in spec:
        for cand in (var,) + tuple(aliases):
            if cand in by_name:
                arrays.append(by_name[cand])
                break
        else:
            break
    if len(arrays) != len(spec):
        arrays = [a for _, a in pairs]  # names don't match: take Keras's order
    layer.set_weights(arrays)


# ---------------------------------------------------------------------- public model

def _fmt_shape(shape):
    if shape is None:
        return "(unknown)"
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class Model:
    """A Keras model loaded by :func:`fastconv.load_model`, runnable without TensorFlow.

    Build it with :func:`fastconv.load_model`; the graph is ordered and the
    weights are converted to float32 once, at load time.

    Attributes
    ----------
    name : str
        The model's name.
    layers : list
        Its top-level layers, in Keras's ``model.layers`` order (a nested model
        appears as one entry).
    input_names, output_names : list of str
        Names of the input layers and of the layers giving the outputs.
    input_shapes : list of tuple
        Each input's expected shape (``None`` for the batch or any free axis).

    Examples
    --------
    >>> import os, numpy as np, fastconv
    >>> here = os.path.join(os.path.dirname(fastconv.__file__), "..", "tests", "fixtures", "models")
    >>> model = fastconv.load_model(os.path.join(here, "mobilenet_like.keras"))
    >>> model.input_shapes
    [(None, 16, 16, 3)]
    >>> probs = model.predict(np.zeros((2, 16, 16, 3), np.float32))
    >>> probs.shape, bool(np.allclose(probs.sum(axis=1), 1.0))
    ((2, 10), True)
    """

    def __init__(self, graph, source=None):
        self._graph = graph
        self.name = graph.name
        self.source = source
        self.layers = list(graph.layers)
        self.input_names = [l.name for l in graph.input_layers]
        self.input_shapes = [l.batch_shape for l in graph.input_layers]
        self.output_names = [k[0] for k in _flatten(graph.outputs_struct)]

    def __repr__(self):
        return (f"<fastconv Model {self.name!r}: {len(self.layers)} layers, inputs "
                f"{dict(zip(self.input_names, map(_fmt_shape, self.input_shapes)))}, outputs {self.output_names}>")

    def get_layer(self, name):
        """The top-level layer called ``name``.

        Raises
        ------
        InvalidArgumentError
            If the model has no such layer (the message lists the names).
        """
        layer = self._graph.by_name.get(name) if isinstance(name, str) else None
        if layer is None:
            names = list(self._graph.by_name)
            raise InvalidArgumentError(
                f"get_layer: argument `name`: model {self.name!r} has no layer {name!r}; its layers are "
                f"{names[:40]}{' ...' if len(names) > 40 else ''}")
        return layer

    def _inputs(self, x):
        g = self._graph
        n = len(g.input_layers)
        if isinstance(x, dict):
            # keyed by input name, or by the model's own dict keys when it was built with a dict
            names = self.input_names
            if isinstance(g.inputs_struct, dict) and set(x) == set(g.inputs_struct):
                names = sorted(g.inputs_struct)
            if set(x) != set(names):
                raise InvalidArgumentError(
                    f"predict: argument `x`: a dict must have exactly the keys {self.input_names}; "
                    f"got {list(x)}")
            xs = [x[k] for k in names]
        elif isinstance(x, (list, tuple)) and (n > 1 or (len(x) == 1 and hasattr(x[0], "shape"))):
            if len(x) != n:
                raise InvalidArgumentError(
                    f"predict: argument `x`: the model has {n} inputs {self.input_names}; got a "
                    f"{type(x).__name__} of {len(x)}")
            xs = list(x)
        else:
            if n != 1:
                raise InvalidArgumentError(
                    f"predict: argument `x`: the model has {n} inputs {self.input_names}; pass a list "
                    f"or a dict of arrays, not one array")
            xs = [x]
        out = []
        for layer, v in zip(g.input_layers, xs):
            arr = np.asarray(v)
            if arr.dtype.kind not in "biuf":
                raise InvalidDTypeError(
                    f"predict: input {layer.name!r} must be a real numeric array; got dtype {arr.dtype}")
            exp = layer.batch_shape
            if arr.ndim == 0:
                raise InvalidShapeError(
                    f"predict: input {layer.name!r} expects a batch of samples; got a scalar")
            if exp is not None and (arr.ndim != len(exp) or any(
                    e is not None and e != d for e, d in zip(exp[1:], arr.shape[1:]))):
                raise InvalidShapeError(
                    f"predict: input {layer.name!r} expects shape {_fmt_shape(exp)}; got an array of "
                    f"shape {_fmt_shape(arr.shape)}")
            out.append(arr.astype(DTYPE))  # always a copy: the caller's array is never touched
        sizes = {a.shape[0] for a in out}
        if len(sizes) > 1:
            raise InvalidShapeError(
                f"predict: all inputs must have the same batch size; got "
                f"{dict(zip(self.input_names, [a.shape[0] for a in out]))}")
        return out

    def predict(self, x, batch_size=None, backend="auto", outputs=None):
        """Run the model on ``x`` at inference (dropout off, BatchNormalization on its moving statistics).

        Parameters
        ----------
        x : array_like, or list or dict of array_like
            One array for a single-input model; for several inputs a list in
            :attr:`input_names` order or a dict keyed by input name. Each must
            match the input's shape (the batch axis is free); it is converted to
            float32 (a copy, ``x`` is never modified).
        batch_size : int, optional
            Run this many samples at a time (default 32, as Keras). Results do
            not depend on it.
        backend : str, default "auto"
            ``"auto"`` or a name from :func:`fastconv.available_backends`: each op
            runs on that backend where it implements the op's kernel, else on "auto".
        outputs : str or list of str, optional
            Layer names whose outputs to return instead of the model's outputs
            (a layer called several times gives its first call's output).

        Returns
        -------
        numpy.ndarray, list or dict
            The structure Keras's ``predict`` returns: one array for one output,
            a list for a list of outputs, a dict for a dict of outputs; with
            ``outputs=``, one array for a name, a list for a list of names.
        """
        xs = self._inputs(x)
        if batch_size is None:
            batch_size = 32
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise InvalidArgumentError(f"predict: argument `batch_size` must be a positive integer or None; got {batch_size!r}")
        if backend not in (None, "auto"):
            backends.backend_ops(backend)  # unknown/unavailable names fail here, before any work
        g = self._graph
        if outputs is None:
            struct = g.outputs_struct
        else:
            names = [outputs] if isinstance(outputs, str) else outputs
            if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
                raise InvalidArgumentError(
                    f"predict: argument `outputs` must be a layer name or a list of them; got {outputs!r}")
            keys = []
            for n in names:
                layer = self.get_layer(n)
                if isinstance(layer, Graph) and len(_flatten(layer.outputs_struct)) > 1:
                    keys.append([(n, 0, j) for j in range(len(_flatten(layer.outputs_struct)))])
                else:
                    keys.append((n, 0, 0))
            struct = keys[0] if isinstance(outputs, str) else keys
            for k in _flatten(struct):
                if (k[0], k[1]) not in g.producers:
                    raise InvalidArgumentError(f"predict: argument `outputs`: layer {k[0]!r} is never called in the model")
        keys = _flatten(struct)
        nb = xs[0].shape[0]
        chunks = []
        with self._device_weights(backend) as cu:
            for start in range(0, max(nb, 1), batch_size):
                feeds = {l.name: a[start:start + batch_size] for l, a in zip(g.input_layers, xs)}
                if cu is not None:   # one copy in per input and batch...
                    feeds = {k: cu.to_device(v) for k, v in feeds.items()}
                vals = g.run(feeds, keys, backend)
                # ...and one copy out per output
                chunks.append([vals[k] if cu is None else cu.to_host(vals[k]) for k in keys])
        flat = [c[0] if len(chunks) == 1 else np.concatenate(c, axis=0) for c in zip(*chunks)]
        flat = [np.ascontiguousarray(a, dtype=DTYPE) for a in flat]
        return _rebuild(struct, flat)

    __call__ = predict

    @contextlib.contextmanager
    def _device_weights(self, backend):
        """For ``backend="cuda"``: yields the cuda backend with this model's weights cached on
        the device (copied on the first call that needs each one); else yields None."""
        if backend != "cuda":
            yield None
            return
        cu = backends._module("cuda")
        cache = _DEVICE_WEIGHTS.setdefault(self._graph, {})
        owners = {id(r): r for r in map(_root, _all_weights(self._graph))}
        with cu.weight_cache(cache, owners):
            yield cu

    # -- accounting (fastconv/models/accounting.py; its docstring states the conventions)
    def count_params(self):
        """Number of parameters, as Keras's ``model.count_params()`` counts them (an int).

        See :meth:`param_counts` for the trainable / non-trainable split and per-layer counts.
        """
        return self.param_counts().total

    def param_counts(self):
        """Parameters in total and per layer, trainable and non-trainable, by Keras's rules.

        Counted on the layers as saved (BatchNormalization not folded):
        BatchNormalization's moving mean and variance and an adapted
        Normalization's statistics are non-trainable; so is every variable of a
        layer (or nested model) whose config says ``trainable: false``; the rest
        is trainable. A shared layer counts once.

        Returns
        -------
        fastconv.models.accounting.ParamCounts
            ``total``, ``trainable``, ``non_trainable`` and ``layers``
            (``{name: ParamCounts}`` in :attr:`layers` order, nested models recursively).
        """
        from . import accounting
        return accounting.param_counts(self._graph)

    def cost(self, batch_size=1, input_shapes=None):
        """Cost records of the Keras graph (BatchNormalization unfolded), per layer call and in total.

        Convolutions and pooling are counted by :mod:`fastconv.cost` (MACs in
        full, taps on zero padding included); Dense counts ``rows x inputs x
        units`` MACs; BatchNormalization 2 FLOPs per element (scale and shift),
        activation layers 1 per element; see :mod:`fastconv.models.accounting`.

        Parameters
        ----------
        batch_size : int, default 1
            Samples per call (1: the costs per sample).
        input_shapes : shape, list or dict of shapes, optional
            Each input's shape, batch axis first (its value ignored); needed only
            where the model leaves an axis besides the batch unknown.

        Returns
        -------
        fastconv.models.accounting.ModelCost
            ``records`` (one :class:`LayerCost` per layer call, in execution
            order), ``total`` (a :class:`fastconv.cost.Cost`), ``by_layer()``.
        """
        from . import accounting
        return accounting.model_cost(self._graph, batch_size, input_shapes)

    def summary(self, print_fn=print, input_shapes=None):
        """Print a Keras-like table of the layers and return it as a string.

        One row per layer of :attr:`layers`: name (type), output shape, parameters,
        MACs per sample and share of the model's MACs (Keras graph,
        BatchNormalization not folded); then the totals
        ``Total params``, ``Trainable params``, ``Non-trainable params`` (as Keras
        prints them) and the total MACs and FLOPs.

        Parameters
        ----------
        print_fn : callable or None, default print
            Called with the text; ``None`` prints nothing.
        input_shapes : optional
            As in :meth:`cost`.
        """
        from . import accounting
        text = accounting.summary(self, 1, input_shapes)
        if print_fn is not None:
            print_fn(text)
        return text

    def profile(self, x, repeat=5, warmup=1, backend="auto"):
        """Time every step of the execution graph on ``x``.

        Runs the graph ``warmup`` times untimed, then ``repeat`` times with
        ``time.perf_counter`` around each step; each step's time is the median
        of its repeats. ``x`` runs as one batch (no splitting). The execution
        graph is the one :meth:`predict` runs: a step that absorbed folded or
        fused layers is named after them (``"conv2d_1 (+batch_normalization_1,
        re_lu_1)"``) and credited with their Keras-graph FLOPs (see :meth:`cost`),
        from which the achieved GFLOP/s is computed. A nested model is one step.

        Returns
        -------
        fastconv.models.accounting.Profile
            ``records`` (one :class:`ProfileRecord` per executed step: ``name``,
            ``layers``, ``seconds``, ``macs``, ``flops``, ``gflops``, ``share``
            of the summed step times) and totals; memory of the first run:
            ``peak_activation_bytes`` (the most activation memory alive at once;
            the engine frees each activation after its last use and writes
            elementwise layers over dead inputs), ``peak_step``, ``weight_bytes``,
            ``in_place_steps``; ``print(result)`` prints a table.
        """
        from . import accounting
        return accounting.profile(self, x, repeat=repeat, warmup=warmup, backend=backend)


def keras2_hard_sigmoid(x):
    """Keras 2's ``hard_sigmoid``: ``clip(0.2 * x + 0.5, 0, 1)`` (Keras 3 uses ``relu6(x + 3) / 6``)."""
    t = x.dtype.type
    return np.clip(t(0.2) * x + t(0.5), t(0), t(1)).astype(x.dtype, copy=False)


def _keras2_semantics(graph):
    """Activations whose definition changed in Keras 3 keep their Keras 2 meaning in files
    written by Keras 2 (weights files say which Keras wrote them)."""
    for layer in graph.layers:
        if isinstance(layer, Graph):
            _keras2_semantics(layer)
        elif getattr(layer, "activation", None) == "hard_sigmoid":
            layer.activation = keras2_hard_sigmoid


#: The default limits, as a dict (see :class:`fastconv.models.Limits`).
DEFAULT_LIMITS = dict(_io.DEFAULTS)


def check_limits(limits, caller):
    for k, v in limits.items():
        low = 0 if k == "max_nesting" else 1
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
            raise InvalidArgumentError(
                f"{caller}: argument `{k}` must be an integer >= {low}; got {v!r}")


def build_graph(cfg, limits, caller="load_model"):
    """The :class:`Graph` of a serialized model (``{"class_name": ..., "config": ...}``), without weights."""
    with _io.wrap_errors(f"{caller}: the model configuration", ModelFormatError,
                         "is malformed (a value of the wrong type or range)"):
        return _build_graph(cfg, limits, caller)


def _build_graph(cfg, limits, caller):
    scan_for_code(cfg, "model", limit=limits.get("max_json_depth", DEFAULT_LIMITS["max_json_depth"]))
    cls = cfg.get("class_name")
    if cls in CODE_LAYERS or cls in ("__lambda__",):
        refuse_code(str(cfg.get("config", {}).get("name", "model")), cls)
    if cls not in MODEL_CLASSES:
        raise UnsupportedLayerError(
            f"{caller}: the file holds a {cls!r}, not a Sequential or Functional model "
            f"(subclassed models cannot be loaded without their Python code)")
    inner = cfg["config"]
    if not isinstance(inner, dict):
        raise ModelFormatError(f"{caller}: the model config is not a JSON object")
    _check_origin(cfg, inner.get("name", "model"), cls)
    graph = Graph(inner.get("name", "model"), "Sequential" if cls == "Sequential" else "Functional",
                  inner, limits)
    graph.trainable = True
    return graph


def load_model(path, weights=None, *, limits=None, optimize=True, max_config_bytes=None,
               max_weight_bytes=None, max_layers=None, max_nesting=None):
    """Load a Keras model saved by Keras 3 (or tf.keras / Keras 2) for inference without TensorFlow.

    Model files are treated as untrusted: nothing in them is imported or
    executed, nothing outside the given files is read, and sizes are bounded
    by ``limits`` (see :mod:`fastconv.models._io` for the threat model and checks).

    Parameters
    ----------
    path : str or os.PathLike
        A Keras 3 ``.keras`` archive, a legacy full-model ``.h5`` file, or an
        architecture alone (a ``config.json`` or the text of ``model.to_json()``),
        in which case ``weights`` is required.
    weights : str or os.PathLike, optional
        A weights file from ``model.save_weights()`` (``.weights.h5``, Keras 3
        layout, or a legacy HDF5 weights file); overrides weights in ``path``.
    limits : fastconv.models.Limits, optional
        Limits on what the (untrusted) files may ask for: file, JSON, weight and
        archive sizes, parameter count, compression ratio, JSON depth, layers,
        nesting of models. Default: ``Limits()``.
    optimize : bool, default True
        Fold each BatchNormalization into the convolution or Dense layer before
        it, and fuse a following activation layer into that op, wherever the
        intermediate result has no other consumer and the fold is exact in real
        arithmetic (results then differ from Keras's only by float rounding).
        Asking ``predict`` for such an intermediate output runs the unfused graph.
    max_config_bytes, max_weight_bytes, max_layers, max_nesting : int, optional
        Shortcuts overriding the fields of ``limits`` of the same names.

    Returns
    -------
    Model

    Raises
    ------
    ModelFormatError
        The file is not a model fastconv can read, or is inconsistent; its
        subclasses say why: UnknownFormatError, CorruptModelError, ArchiveError,
        LimitExceededError, WeightMismatchError.
    UnsafeModelError
        The model holds code (a ``Lambda`` layer, serialized functions/bytecode),
        or (UnsafeReferenceError) refers to data outside the file.
        Nothing from a file is ever imported, evaluated or executed.
    UnsupportedLayerError
        A layer class or option the engine does not implement; the message
        names the layer and lists the supported classes.

    Examples
    --------
    >>> import os, fastconv
    >>> here = os.path.join(os.path.dirname(fastconv.__file__), "..", "tests", "fixtures", "models")
    >>> m = fastconv.load_model(os.path.join(here, "sign_mnist.h5"))
    >>> m.input_shapes, m.output_names
    ([(None, 28, 28, 1)], ['dense_1'])
    >>> [l.name for l in m.layers][:3]
    ['conv2d', 'batch_normalization', 'max_pooling2d']
    """
    if limits is None:
        limits = _io.Limits()
    if not isinstance(limits, _io.Limits):
        raise InvalidArgumentError(
            f"load_model: argument `limits` must be a fastconv.models.Limits or None; got {type(limits).__name__}")
    limits = limits.as_dict()
    for k, v in (("max_config_bytes", max_config_bytes), ("max_weight_bytes", max_weight_bytes),
                 ("max_layers", max_layers), ("max_nesting", max_nesting)):
        if v is not None:
            limits[k] = v
    check_limits(limits, "load_model")
    src = _io.read(path, weights, limits)
    try:
        graph = build_graph(src.config, limits)
        with _io.wrap_errors(f"load_model: {str(path)!r}"):
            graph.load_weights(src.store, src.store.top(), limits)
        if src.store.keras_version[:2] in ("1.", "2."):
            _keras2_semantics(graph)
        graph.make_plans(bool(optimize))
    finally:
        for f in src.files:
            _io._close(f)
    return Model(graph, source=str(path))
