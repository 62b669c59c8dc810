"""Legacy HDF5 files as tf.keras / Keras 2 writes them.

Only Keras 3 is available to make fixtures, so these tests rewrite the Keras 3
legacy ``.h5`` fixtures into the Keras 2 layout documented in Keras's
``legacy_h5_format.py`` and tf.keras 2.x: a Keras 2 ``model_config``
(``batch_input_shape``, ``inbound_nodes`` as ``[[layer, node, tensor, kwargs]]``
lists, lists of ``[layer, node, tensor]`` for inputs/outputs, plain dtype
strings, ``alpha`` for LeakyReLU), weight names ending in ``:0``,
``depthwise_kernel`` for depthwise convolutions, and a nested model's weights
saved as one layer, trainable ones first.
"""

import json
import os

import h5py
import numpy as np
import pytest

import fastconv
from test_models import as_list, assert_keras_close, data

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "models")


def _flat_history(struct):
    if isinstance(struct, dict) and struct.get("class_name") == "__keras_tensor__":
        return [struct["config"]["keras_history"]]
    if isinstance(struct, list):
        return [h for s in struct for h in _flat_history(s)]
    if isinstance(struct, dict):
        return [h for k in struct for h in _flat_history(struct[k])]
    raise AssertionError(struct)


def _io_list(v):
    if isinstance(v, dict):
        return [list(t) for t in v.values()]
    if v and isinstance(v[0], str):
        return [list(v)]
    return [list(t) for t in v]


def to_keras2_config(obj):
    """A Keras 3 layer/model entry -> the Keras 2 form."""
    obj = {k: v for k, v in obj.items() if k not in ("module", "registered_name", "build_config")}
    cls = obj["class_name"]
    cfg = dict(obj["config"])
    if isinstance(cfg.get("dtype"), dict):
        cfg["dtype"] = "float32"
    if cls == "InputLayer":
        cfg["batch_input_shape"] = cfg.pop("batch_shape")
    if cls == "LeakyReLU":
        cfg["alpha"] = cfg.pop("negative_slope")
    if cls in ("Sequential", "Functional"):
        cfg["layers"] = [to_keras2_config(l) for l in cfg["layers"]]
        if cls == "Sequential" and cfg["layers"][0]["class_name"] == "InputLayer":
            # tf.keras 2 often wrote no InputLayer: the first layer carries batch_input_shape
            first = cfg["layers"].pop(0)
            cfg["layers"][0]["config"]["batch_input_shape"] = first["config"]["batch_input_shape"]
        if cls == "Functional":
            cfg["input_layers"] = _io_list(cfg["input_layers"])
            cfg["output_layers"] = _io_list(cfg["output_layers"])
    obj["config"] = cfg
    if "inbound_nodes" in obj:
        obj["inbound_nodes"] = [[[h[0], h[1], h[2], {}] for h in _flat_history(n["args"][0])]
                                for n in obj["inbound_nodes"]]
    return obj


def _k2_name(keras3_name, depthwise):
    parts = keras3_name.split("/")
    var = parts[-1]
    if depthwise and var == "kernel":
        var = "depthwise_kernel"
    return f"{parts[-2]}/{var}:0"


def write_keras2_h5(name, out, rename_nested=False, chunk_names=False):
    with h5py.File(os.path.join(HERE, f"{name}.h5"), "r") as src, h5py.File(out, "w") as dst:
        cfg = json.loads(src.attrs["model_config"])
        classes = {l["config"]["name"]: l["class_name"] for l in cfg["config"]["layers"]}
        dst.attrs["model_config"] = json.dumps(to_keras2_config(cfg)).encode()
        dst.attrs["keras_version"] = b"2.15.0"
        dst.attrs["backend"] = b"tensorflow"
        mw = dst.create_group("model_weights")
        sw = src["model_weights"]
        mw.attrs["layer_names"] = sw.attrs["layer_names"]
        mw.attrs["backend"] = b"tensorflow"
        mw.attrs["keras_version"] = b"2.15.0"
        for layer in sw:
            g = mw.create_group(layer)
            names = [n.decode() if isinstance(n, bytes) else n for n in sw[layer].attrs["weight_names"]]
            nested = classes.get(layer) in ("Sequential", "Functional")
            new = []
            for i, n in enumerate(names):
                k2 = _k2_name(n, classes.get(layer, "").startswith("DepthwiseConv"))
                if nested and rename_nested:
                    k2 = f"renamed_{i}/{k2.split('/')[-1]}"
                g.create_dataset(k2, data=sw[layer][n][()])
                new.append(k2.encode())
            if chunk_names and len(new) > 1:  # how Keras splits attributes over HDF5's 64 KiB limit
                g.attrs["weight_names0"] = np.array(new[:1], dtype="S")
                g.attrs["weight_names1"] = np.array(new[1:], dtype="S")
            else:
                g.attrs["weight_names"] = np.array(new, dtype="S") if new else np.zeros(0)
    return out


@pytest.mark.parametrize("name", ["mobilenet_like", "residual_two_io", "misc_layers", "sign_mnist",
                                  "tcn_1d", "cnn_3d"])
def test_keras2_legacy_h5(tmp_path, name):
    path = write_keras2_h5(name, tmp_path / f"{name}_k2.h5")
    with h5py.File(path, "r") as f:  # really the Keras 2 layout
        text = f.attrs["model_config"]
        text = text.decode() if isinstance(text, bytes) else text
        assert "batch_input_shape" in text and "__keras_tensor__" not in text
        assert ('"InputLayer"' in text) == (name != "sign_mnist")
    model = fastconv.load_model(path)
    x, ys, _ = data(name)
    if isinstance(x, dict):
        x = [x[n] for n in model.input_names]
    got = as_list(model.predict(x))
    assert len(got) == len(ys)
    for i, (a, b) in enumerate(zip(got, ys)):
        assert_keras_close(a, b, f"{name} (Keras 2 layout) output {i}")


def test_keras2_nested_model_weights_by_order(tmp_path):
    # weight names that don't name the sublayers: the legacy order decides
    path = write_keras2_h5("misc_layers", tmp_path / "m.h5", rename_nested=True)
    model = fastconv.load_model(path)
    x, ys, _ = data("misc_layers")
    got = as_list(model.predict([x[n] for n in model.input_names]))
    for a, b in zip(got, ys):
        assert_keras_close(a, b, "misc_layers, nested weights by order")


def test_legacy_weights_only_file(tmp_path):
    # save_weights("x.h5") in Keras 2: the model_weights layout at the file's root
    src = write_keras2_h5("mobilenet_like", tmp_path / "full.h5")
    w = tmp_path / "w.h5"
    with h5py.File(src, "r") as f, h5py.File(w, "w") as g:
        for k, v in f["model_weights"].attrs.items():
            g.attrs[k] = v
        for layer in f["model_weights"]:
            f.copy(f["model_weights"][layer], g, name=layer)
    model = fastconv.load_model(os.path.join(HERE, "mobilenet_like.json"), weights=w)
    x, ys, _ = data("mobilenet_like")
    assert_keras_close(model.predict(x), ys[0], "legacy weights-only")


def test_keras2_hard_sigmoid_keeps_its_keras2_definition(tmp_path):
    # encoder_decoder's conv2d_transpose_2 uses "hard_sigmoid": relu6(p + 3) / 6 in Keras 3,
    # clip(0.2 p + 0.5, 0, 1) in Keras 2
    k3 = fastconv.load_model(os.path.join(HERE, "encoder_decoder.h5"))
    k2 = fastconv.load_model(write_keras2_h5("encoder_decoder", tmp_path / "k2.h5"))
    x, _, _ = data("encoder_decoder")
    a3 = k3.predict(x, outputs="conv2d_transpose_2").astype(np.float64)
    a2 = k2.predict(x, outputs="conv2d_transpose_2").astype(np.float64)
    inside = (a3 > 0.01) & (a3 < 0.99)
    assert inside.mean() > 0.5
    pre = (a3[inside] - 0.5) * 6.0
    np.testing.assert_allclose(a2[inside], np.clip(0.2 * pre + 0.5, 0, 1), rtol=1e-4, atol=1e-5)
    assert not np.allclose(a2, a3, atol=1e-3)


def test_chunked_weight_names_attribute(tmp_path):
    model = fastconv.load_model(write_keras2_h5("mobilenet_like", tmp_path / "c.h5", chunk_names=True))
    x, ys, _ = data("mobilenet_like")
    assert_keras_close(model.predict(x), ys[0], "chunked weight_names")
