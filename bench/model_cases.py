"""The benchmarked models, as fastconv builds them, and what they cost.

* the two seed classifiers, loaded from their ``.keras`` files (tests/fixtures/models/);
* MobileNetV2 and ResNet50 (224x224x3, 1000 classes), from the architecture JSON in
  bench/models/ (written by ``make_model_configs.py``) with seeded random weights
  (:func:`fastconv.models.from_config`), so no weights file and no TensorFlow are needed.

:func:`model_flops` and :func:`save_keras_weights` look inside the model (its graph and
layers): they are benchmark helpers, not API.
"""

import functools
import os

import h5py
import numpy as np

import fastconv
from fastconv.models import from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "models")
CONFIGS = os.path.join(ROOT, "bench", "models")

#: name -> (kind, path): "keras" files are loaded as saved, "config" ones get random weights.
MODELS = {
    "sign_mnist": ("keras", os.path.join(FIXTURES, "sign_mnist.keras")),
    "cifar10": ("keras", os.path.join(FIXTURES, "cifar10.keras")),
    "mobilenet_v2": ("config", os.path.join(CONFIGS, "mobilenet_v2.json")),
    "resnet50": ("config", os.path.join(CONFIGS, "resnet50.json")),
}
SEED = 0


@functools.lru_cache(maxsize=None)
def model(name):
    """The fastconv Model for ``name`` (built once per process)."""
    kind, path = MODELS[name]
    return fastconv.load_model(path) if kind == "keras" else from_config(path, seed=SEED)


def inputs(name, batch):
    """A seeded standard-normal batch of the model's input shape."""
    shape = model(name).input_shapes[0]
    return np.random.default_rng(batch).standard_normal((batch,) + tuple(shape[1:])).astype(np.float32)


def weights_by_layer(name):
    """{layer name: [arrays in Keras's variable order]} of the (unfused) model, for peers."""
    return {layer.name: [layer.weights[v] for v, _, _ in layer.weight_spec()]
            for layer in _leaves(model(name)._graph) if layer.weight_spec()}


def _leaves(graph):
    for layer in graph.layers:
        if hasattr(layer, "plain_plan"):  # a nested model
            yield from _leaves(layer)
        else:
            yield layer


def save_keras_weights(name, path):
    """Write the model's weights as a Keras 3 ``.weights.h5`` file (``layers/<snake_case
    class>[_k]/vars/<i>``), the file ``model.save_weights()`` writes, so a fresh process can
    ``fastconv.load_model(architecture, weights=path)``."""
    from fastconv.models._io import snake_case

    def write(graph, group):
        layers = group.create_group("layers")
        used = {}
        for layer in graph.layers:
            base = snake_case("Functional" if hasattr(layer, "plain_plan") and layer.class_name != "Sequential"
                              else layer.class_name)
            used[base] = used.get(base, -1) + 1
            g = layers.create_group(base if used[base] == 0 else f"{base}_{used[base]}")
            if hasattr(layer, "plain_plan"):
                write(layer, g)
                continue
            v = g.create_group("vars")
            for i, (var, _, _) in enumerate(layer.weight_spec()):
                v.create_dataset(str(i), data=layer.weights[var])

    with h5py.File(path, "w") as fh:
        write(model(name)._graph, fh)


@functools.lru_cache(maxsize=None)
def model_flops(name):
    """FLOPs of one sample through the model's convolution, pooling and Dense layers, counted
    with :mod:`fastconv.cost`'s conventions (elementwise layers, e.g. BatchNormalization and
    Add, are not counted); None when ``fastconv.cost`` is not importable or the model nests
    models."""
    try:
        from fastconv import cost
    except ImportError:
        return None
    m = model(name)
    graph = m._graph
    if any(hasattr(layer, "plain_plan") for layer in graph.layers):
        return None
    x = inputs(name, 1)
    names = [layer.name for layer in graph.layers if layer.name not in m.input_names]
    outs = dict(zip(names, m.predict(x, outputs=names)))
    outs.update({n: x for n in m.input_names})
    total = 0.0
    for node in graph.nodes:
        layer = node.layer
        if node.inputs is None or not isinstance(node.inputs, tuple):
            continue
        shape = outs[node.inputs[0]].shape
        cls = type(layer).__name__
        act = layer.activation if isinstance(getattr(layer, "activation", None), str) else None
        w = layer.weights
        n = getattr(layer, "nsp", None)
        common = dict(strides=getattr(layer, "strides", None), padding=getattr(layer, "padding", None),
                      data_format=getattr(layer, "fmt", "channels_last"))
        if cls == "Conv":
            c = getattr(cost, f"conv{n}d")(shape, w["kernel"].shape, use_bias=layer.use_bias,
                                           dilation_rate=layer.dilation, groups=layer.groups,
                                           activation=act, **common)
        elif cls == "ConvTranspose":
            c = getattr(cost, f"conv{n}d_transpose")(shape, w["kernel"].shape, use_bias=layer.use_bias,
                                                     output_padding=layer.output_padding,
                                                     dilation_rate=layer.dilation, activation=act, **common)
        elif cls == "DepthwiseConv":
            c = getattr(cost, f"depthwise_conv{n}d")(shape, w["kernel"].shape, use_bias=layer.use_bias,
                                                     dilation_rate=layer.dilation, activation=act, **common)
        elif cls == "SeparableConv":
            c = getattr(cost, f"separable_conv{n}d")(shape, w["depthwise_kernel"].shape,
                                                     w["pointwise_kernel"].shape, use_bias=layer.use_bias,
                                                     dilation_rate=layer.dilation, activation=act, **common)
        elif cls == "Pool":
            c = getattr(cost, f"{layer.kind}_pool{n}d")(shape, layer.pool, layer.strides, layer.padding,
                                                        data_format=layer.fmt)
        elif cls == "GlobalPool":
            c = getattr(cost, f"global_{layer.kind}_pool{n}d")(shape, keepdims=layer.keepdims,
                                                               data_format=layer.fmt)
        elif cls == "Dense":
            rows, (cin, units) = int(np.prod(shape[:-1])), w["kernel"].shape
            total += rows * units * (2.0 * cin + layer.use_bias + (act is not None))
            continue
        else:
            continue
        total += c.flops
    return total
