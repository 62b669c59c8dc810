"""fastconv.load_model on the classic Keras Applications, against Keras itself (slow; needs TensorFlow).

Runs tests/fixtures/check_keras_applications.py, which builds VGG16, ResNet50,
ResNet50V2, MobileNet, MobileNetV2, MobileNetV3Small/Large, DenseNet121,
EfficientNetB0, Xception, InceptionV3 and NASNetMobile with random weights and
randomised BatchNormalization statistics, saves each as .keras in a temporary
directory and compares fastconv's logits with Keras's. TensorFlow runs in a
child process (a Python that has it: this one, or $FASTCONV_TF_PYTHON); this
process and the fastconv worker never import it.

Run it with ``python -m pytest -m slow tests/test_keras_applications.py``
(the default run excludes slow tests). It takes a few minutes.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "fixtures", "check_keras_applications.py")


def _tf_python():
    """A Python interpreter that can import TensorFlow and Keras 3, or None."""
    cand = os.environ.get("FASTCONV_TF_PYTHON")
    if cand:
        return cand
    if importlib.util.find_spec("tensorflow") is not None and importlib.util.find_spec("keras") is not None:
        return sys.executable
    return None


@pytest.mark.slow
def test_keras_applications_match_keras(tmp_path):
    py = _tf_python()
    if py is None:
        pytest.skip("TensorFlow is not importable here: the Keras Applications check needs it to build "
                    "the reference models (set FASTCONV_TF_PYTHON to a Python with tensorflow and keras 3)")
    out = tmp_path / "results.json"
    proc = subprocess.run([py, SCRIPT, "--fastconv-python", sys.executable, "--json", str(out)],
                          capture_output=True, text=True, timeout=3600)
    print(proc.stdout)
    if not out.exists():
        if "No module named" in proc.stderr and ("tensorflow" in proc.stderr or "keras" in proc.stderr):
            pytest.skip(f"{py} cannot import TensorFlow/Keras: {proc.stderr.strip().splitlines()[-1]}")
        pytest.fail(f"the check did not run:\n{proc.stderr[-3000:]}")
    results = json.loads(out.read_text())
    assert len(results) == 12
    bad = [r for r in results if not r["ok"]]
    assert not bad, "\n".join(
        f"{r['model']}: {r.get('error') or 'rel diff %.3g, same argmax %s' % (r['max_rel_diff'], r['same_argmax'])}"
        for r in bad)
    assert proc.returncode == 0


# ---------------------------------------------------------------------- fast checks of what the applications need

def _op_entry(name, cls, args):
    return {"module": "keras.src.ops.numpy", "class_name": cls, "config": {"name": name},
            "registered_name": cls, "name": name, "inbound_nodes": [{"args": args, "kwargs": {}}]}


def _tensor(layer):
    return {"class_name": "__keras_tensor__", "config": {"shape": [None, 10], "dtype": "float32",
                                                         "keras_history": [layer, 0, 0]}}


def test_keras_ops_calls_with_constants(tmp_path):
    """What MobileNetV3's hard_sigmoid saves: ``x + 3.0`` and ``x * (1/6)`` as keras.ops nodes
    (module keras.src.ops.numpy, a tensor and a constant), and ops on two tensors."""
    import json
    import zipfile

    import numpy as np

    import fastconv

    here = os.path.join(os.path.dirname(__file__), "fixtures", "models")
    with zipfile.ZipFile(os.path.join(here, "mobilenet_like.keras")) as z:
        cfg = json.loads(z.read("config.json"))
        members = {n: z.read(n) for n in z.namelist()}
    layers = cfg["config"]["layers"]
    softmax = next(l for l in layers if l["name"] == "softmax")
    ops = [_op_entry("add_op", "Add", [_tensor("flatten"), 3.0]),
           _op_entry("mul_op", "Multiply", [1 / 6, _tensor("add_op")]),
           _op_entry("sub_op", "Subtract", [_tensor("mul_op"), _tensor("flatten")]),
           _op_entry("div_op", "TrueDivide", [_tensor("sub_op"), [2.0] * 10]),
           _op_entry("max_op", "Maximum", [_tensor("div_op"), 0.0]),
           _op_entry("neg_op", "Negative", [_tensor("max_op")])]
    i = layers.index(softmax)
    layers[i:i] = ops
    softmax["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = ["neg_op", 0, 0]
    path = tmp_path / "ops.keras"
    with zipfile.ZipFile(path, "w") as z:
        for n, d in members.items():
            z.writestr(n, json.dumps(cfg) if n == "config.json" else d)
    m = fastconv.load_model(path)
    x = np.random.default_rng(1).random((3, 16, 16, 3), np.float32)
    f = m.predict(x, outputs="flatten", backend="reference")
    want = -np.maximum(((f + np.float32(3)) * np.float32(1 / 6) - f) / np.float32(2), 0)
    got = m.predict(x, outputs="neg_op", backend="reference")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    e = np.exp(want - want.max(-1, keepdims=True))
    np.testing.assert_allclose(m.predict(x, backend="reference"), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_numpy_constants_padding_tuples_reshape_minus_one(tmp_path):
    """Rescaling with per-channel arrays (saved by Keras 3 as ``__numpy__`` objects), ZeroPadding2D /
    Cropping2D with per-side tuples, Reshape with -1 and hard_silu, as Keras 3.15 saves them."""
    import json
    import zipfile

    import h5py
    import numpy as np

    import fastconv

    def kt(layer, shape):
        return {"class_name": "__keras_tensor__",
                "config": {"shape": shape, "dtype": "float32", "keras_history": [layer, 0, 0]}}

    def entry(cls, name, cfg, src, shape):
        return {"module": "keras.layers", "class_name": cls, "registered_name": None, "name": name,
                "config": {"name": name, "trainable": True, **cfg},
                "inbound_nodes": [{"args": [kt(src, shape)], "kwargs": {}}]}

    npy = lambda v: {"class_name": "__numpy__", "config": {"value": v, "dtype": "float32"}}  # noqa: E731
    layers = [
        {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None, "name": "x",
         "config": {"batch_shape": [None, 4, 4, 3], "dtype": "float32", "name": "x"}, "inbound_nodes": []},
        entry("Rescaling", "rescaling", {"scale": npy([1 / 255, 2 / 255, 3 / 255]), "offset": npy([-1.0, 0.0, 1.0])},
              "x", [None, 4, 4, 3]),
        entry("ZeroPadding2D", "pad", {"padding": [[1, 2], [0, 1]], "data_format": "channels_last"},
              "rescaling", [None, 4, 4, 3]),
        entry("Cropping2D", "crop", {"cropping": [[1, 0], [0, 1]], "data_format": "channels_last"},
              "pad", [None, 7, 5, 3]),
        entry("Reshape", "reshape", {"target_shape": [-1, 3]}, "crop", [None, 6, 4, 3]),
        entry("Activation", "act", {"activation": "hard_silu"}, "reshape", [None, 24, 3]),
    ]
    cfg = {"module": "keras", "class_name": "Functional", "registered_name": "Functional",
           "config": {"name": "m", "trainable": True, "layers": layers,
                      "input_layers": [["x", 0, 0]], "output_layers": [["act", 0, 0]]}}
    weights = tmp_path / "w.h5"
    with h5py.File(weights, "w") as f:
        f.create_group("layers")
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(cfg))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("model.weights.h5", weights.read_bytes())
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    y = x * np.array([1 / 255, 2 / 255, 3 / 255], np.float32) + np.array([-1, 0, 1], np.float32)
    y = np.pad(y, ((0, 0), (1, 2), (0, 1), (0, 0)))[:, 1:, :-1].reshape(2, -1, 3)
    y = y * np.clip(y + 3, 0, 6) / 6
    np.testing.assert_allclose(fastconv.load_model(path).predict(x, backend="reference"), y, rtol=1e-6, atol=1e-6)
