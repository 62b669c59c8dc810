"""load_model / Model.predict on bad, unsupported and hostile input."""

import copy
import json
import os
import zipfile

import h5py
import numpy as np
import pytest

import fastconv
from fastconv.errors import (BackendError, FastconvError, InvalidArgumentError, InvalidDTypeError,
                             InvalidShapeError, NotSupportedError)
from fastconv.models import ModelFormatError, UnsafeModelError, UnsupportedLayerError

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "models")


def fixture(name):
    return os.path.join(HERE, name)


def keras_config(name):
    with zipfile.ZipFile(fixture(f"{name}.keras")) as z:
        return json.loads(z.read("config.json"))


def write_keras(tmp_path, config, weights_from="mobilenet_like", fname="m.keras"):
    """A .keras archive with ``config`` and the weights of a fixture."""
    out = tmp_path / fname
    with zipfile.ZipFile(fixture(f"{weights_from}.keras")) as src, zipfile.ZipFile(out, "w") as dst:
        dst.writestr("config.json", json.dumps(config))
        dst.writestr("metadata.json", src.read("metadata.json"))
        dst.writestr("model.weights.h5", src.read("model.weights.h5"))
    return out


def layer_entry(config, name):
    return next(l for l in config["config"]["layers"] if l["name"] == name)


def test_errors_join_the_fastconv_hierarchy():
    assert issubclass(ModelFormatError, FastconvError) and issubclass(ModelFormatError, ValueError)
    assert issubclass(UnsafeModelError, ModelFormatError)
    assert issubclass(UnsupportedLayerError, NotSupportedError)
    assert fastconv.models.UnsupportedLayerError is UnsupportedLayerError


def test_unsupported_layer_is_reported_at_load_naming_layer_class_and_supported(tmp_path):
    cfg = keras_config("mobilenet_like")
    entry = layer_entry(cfg, "re_lu")
    entry["class_name"] = "LSTM"
    with pytest.raises(UnsupportedLayerError) as info:
        fastconv.load_model(write_keras(tmp_path, cfg))
    msg = str(info.value)
    assert "'re_lu'" in msg and "'LSTM'" in msg and "Conv2D" in msg and "BatchNormalization" in msg


def test_unsupported_layer_option(tmp_path):
    cfg = keras_config("encoder_decoder")
    layer_entry(cfg, "up_sampling2d_1")["config"]["interpolation"] = "lanczos5"
    with pytest.raises(UnsupportedLayerError, match="up_sampling2d_1.*lanczos5"):
        fastconv.load_model(write_keras(tmp_path, cfg, "encoder_decoder"))


def _lambda_entry(inbound):
    # What Keras 3 writes for Lambda(lambda x: x): the function as base64 marshalled bytecode.
    return {"module": "keras.layers", "class_name": "Lambda", "name": "evil",
            "config": {"name": "evil", "trainable": True,
                       "function": {"class_name": "__lambda__",
                                    "config": {"code": "4wEAAAAAAAAAAAAAAAEAAAAB", "defaults": None,
                                               "closure": None}},
                       "arguments": {}},
            "registered_name": None, "inbound_nodes": inbound}


def test_lambda_layer_is_refused_saying_why(tmp_path):
    cfg = keras_config("mobilenet_like")
    layers = cfg["config"]["layers"]
    relu = layer_entry(cfg, "re_lu")
    layers.insert(layers.index(relu), _lambda_entry(copy.deepcopy(relu["inbound_nodes"])))
    with pytest.raises(UnsafeModelError) as info:
        fastconv.load_model(write_keras(tmp_path, cfg))
    msg = str(info.value)
    assert "evil" in msg and "Lambda" in msg and "never executes" in msg


def test_lambda_in_legacy_keras2_form_is_refused(tmp_path):
    cfg = keras_config("mobilenet_like")
    relu = layer_entry(cfg, "re_lu")
    relu["class_name"] = "Lambda"
    relu["config"] = {"name": "re_lu", "function": ["4wEAAAAA", None, None], "function_type": "lambda",
                      "module": "__main__", "output_shape": None}
    with pytest.raises(UnsafeModelError, match="re_lu"):
        fastconv.load_model(write_keras(tmp_path, cfg))


def test_serialized_function_anywhere_is_refused(tmp_path):
    cfg = keras_config("mobilenet_like")
    layer_entry(cfg, "conv2d")["config"]["activation"] = {
        "module": "builtins", "class_name": "__lambda__", "config": {"code": "AAAA"},
        "registered_name": None}
    with pytest.raises(UnsafeModelError, match="serialized Python function"):
        fastconv.load_model(write_keras(tmp_path, cfg))


def test_custom_registered_layer_is_not_taken_for_a_builtin(tmp_path):
    cfg = keras_config("mobilenet_like")
    entry = layer_entry(cfg, "re_lu")
    entry["module"] = "my_package.layers"
    entry["registered_name"] = "my_package>ReLU"
    with pytest.raises(UnsupportedLayerError, match="custom"):
        fastconv.load_model(write_keras(tmp_path, cfg))


def test_custom_activation_object_is_refused(tmp_path):
    cfg = keras_config("mobilenet_like")
    layer_entry(cfg, "conv2d")["config"]["activation"] = {
        "module": "my_package", "class_name": "MyAct", "config": {}, "registered_name": "my>MyAct"}
    with pytest.raises(UnsupportedLayerError, match="activation"):
        fastconv.load_model(write_keras(tmp_path, cfg))


def test_subclassed_model_is_refused(tmp_path):
    cfg = keras_config("mobilenet_like")
    cfg["class_name"] = "MyModel"
    with pytest.raises(UnsupportedLayerError, match="MyModel"):
        fastconv.load_model(write_keras(tmp_path, cfg))


def test_input_shape_mismatch_names_input_expected_and_received():
    m = fastconv.load_model(fixture("residual_two_io.keras"))
    x = [np.zeros((2, 12, 12, 3), np.float32), np.zeros((2, 8), np.float32)]
    with pytest.raises(InvalidShapeError) as info:
        m.predict(x)
    msg = str(info.value)
    assert "'meta'" in msg and "(None, 7)" in msg and "(2, 8)" in msg
    with pytest.raises(InvalidShapeError, match=r"'image'.*\(None, 12, 12, 3\).*\(12, 12, 3\)"):
        m.predict([np.zeros((12, 12, 3)), np.zeros((1, 7))])
    with pytest.raises(InvalidShapeError, match="batch size"):
        m.predict([np.zeros((2, 12, 12, 3)), np.zeros((3, 7))])


def test_bad_input_dtype_and_structure():
    m = fastconv.load_model(fixture("residual_two_io.h5"))
    with pytest.raises(InvalidDTypeError, match="'image'.*dtype"):
        m.predict([np.full((1, 12, 12, 3), "a"), np.zeros((1, 7))])
    with pytest.raises(InvalidArgumentError, match="2 inputs"):
        m.predict(np.zeros((1, 12, 12, 3)))
    with pytest.raises(InvalidArgumentError, match=r"keys \['image', 'meta'\]"):
        m.predict({"image": np.zeros((1, 12, 12, 3)), "other": np.zeros((1, 7))})


def test_bad_predict_arguments():
    m = fastconv.load_model(fixture("mobilenet_like.keras"))
    x = np.zeros((1, 16, 16, 3), np.float32)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        m.predict(x, batch_size=0)
    with pytest.raises(BackendError, match="backend"):
        m.predict(x, backend="tpu")
    with pytest.raises(InvalidArgumentError, match="no layer 'nope'"):
        m.predict(x, outputs=["nope"])
    with pytest.raises(InvalidArgumentError, match="no layer"):
        m.get_layer("nope")


def test_weights_only_file_as_model_says_what_to_do():
    with pytest.raises(ModelFormatError, match="weights="):
        fastconv.load_model(fixture("mobilenet_like.weights.h5"))


def test_architecture_without_weights_says_what_to_do():
    with pytest.raises(ModelFormatError, match="weights="):
        fastconv.load_model(fixture("mobilenet_like.json"))


def test_not_a_model_file(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("hello")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        fastconv.load_model(p)
    p.write_text('{"a": 1}')
    with pytest.raises(ModelFormatError, match="class_name"):
        fastconv.load_model(p)
    with pytest.raises(ModelFormatError, match="no such file"):
        fastconv.load_model(tmp_path / "missing.keras")
    with pytest.raises(ModelFormatError, match="directory"):
        fastconv.load_model(tmp_path)
    with pytest.raises(ModelFormatError, match="path"):
        fastconv.load_model(42)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    # the architecture of one model with the weights of another
    with pytest.raises(ModelFormatError):
        fastconv.load_model(fixture("mobilenet_like.json"), weights=fixture("tcn_1d.weights.h5"))


def test_wrong_number_of_variables_is_reported(tmp_path):
    src = fixture("mobilenet_like.weights.h5")
    dst = tmp_path / "w.weights.h5"
    dst.write_bytes(open(src, "rb").read())
    with h5py.File(dst, "r+") as f:
        del f["layers/batch_normalization/vars/3"]
    with pytest.raises(ModelFormatError, match="batch_normalization.*4 weight arrays"):
        fastconv.load_model(fixture("mobilenet_like.json"), weights=dst)


def test_limits_are_enforced():
    with pytest.raises(ModelFormatError, match="max_config_bytes"):
        fastconv.load_model(fixture("mobilenet_like.keras"), max_config_bytes=100)
    with pytest.raises(ModelFormatError, match="max_layers"):
        fastconv.load_model(fixture("misc_layers.keras"), max_layers=10)
    with pytest.raises(ModelFormatError, match="max_nesting"):
        fastconv.load_model(fixture("misc_layers.keras"), max_nesting=0)
    with pytest.raises(ModelFormatError, match="over"):
        fastconv.load_model(fixture("sign_mnist.h5"), max_weight_bytes=1000)
    with pytest.raises(InvalidArgumentError, match="max_layers.*>= 1"):
        fastconv.load_model(fixture("sign_mnist.h5"), max_layers=0)


def test_graph_referring_to_a_missing_layer(tmp_path):
    cfg = keras_config("mobilenet_like")
    entry = layer_entry(cfg, "re_lu")
    entry["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = ["ghost", 0, 0]
    with pytest.raises(ModelFormatError, match="ghost"):
        fastconv.load_model(write_keras(tmp_path, cfg))


@pytest.mark.parametrize("module, registered", [("keras_hub.layers", None),
                                                ("keras.layers", "keras_hub>ReLU")])
def test_layers_of_other_packages_sharing_a_keras_name_are_refused(tmp_path, module, registered):
    cfg = keras_config("mobilenet_like")
    entry = layer_entry(cfg, "re_lu")
    entry["module"] = module
    entry["registered_name"] = registered
    with pytest.raises(UnsupportedLayerError, match="re_lu"):
        fastconv.load_model(write_keras(tmp_path, cfg))
