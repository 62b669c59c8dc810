"""Single layers of the model engine, and details of the file readers."""

import os

import h5py
import numpy as np
import pytest

import fastconv
from fastconv.models import layers as L
from test_models import as_list, assert_keras_close, data

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "models")
RNG = np.random.default_rng(7)


def make(cls_name, **config):
    return L.LAYERS[cls_name]("t", cls_name, {"name": "t", **config})


def test_leaky_relu_layer_default_slope_is_keras_layer_default():
    x = np.array([[-2.0, 3.0]], np.float32)
    np.testing.assert_allclose(make("LeakyReLU").call(x, "auto"), [[-0.6, 3.0]], rtol=1e-6)
    np.testing.assert_allclose(make("LeakyReLU", alpha=0.1).call(x, "auto"), [[-0.2, 3.0]], rtol=1e-6)
    np.testing.assert_allclose(make("LeakyReLU", negative_slope=0.5).call(x, "auto"), [[-1.0, 3.0]])


def test_relu_layer_options():
    x = np.array([[-2.0, 0.05, 0.5, 9.0]], np.float32)
    y = make("ReLU", max_value=6.0, threshold=0.1, negative_slope=0.5).call(x, "auto")
    np.testing.assert_allclose(y, [[-1.05, -0.025, 0.5, 6.0]], rtol=1e-6)


@pytest.mark.parametrize("cls_name, config", [
    ("Activation", {"activation": "relu"}), ("Activation", {"activation": "relu6"}),
    ("Activation", {"activation": "sigmoid"}), ("ReLU", {}), ("ELU", {}), ("Softmax", {}),
    ("LeakyReLU", {}), ("Flatten", {}), ("Rescaling", {"scale": 2.0, "offset": 1.0}),
    ("Permute", {"dims": [2, 1]}), ("Dropout", {"rate": 0.5}),
])
def test_layers_do_not_modify_their_input(cls_name, config):
    x = RNG.normal(size=(3, 4, 5)).astype(np.float32)
    before = x.copy()
    make(cls_name, **config).call(x, "auto")
    np.testing.assert_array_equal(x, before)


def test_flatten_channels_first_is_row_major_over_channels_last():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)  # N, C, H, W
    y = make("Flatten", data_format="channels_first").call(x, "auto")
    np.testing.assert_array_equal(y, np.moveaxis(x, 1, -1).reshape(2, -1))
    np.testing.assert_array_equal(make("Flatten").call(x, "auto"), x.reshape(2, -1))


def test_batchnorm_without_scale_and_center_on_axis_1():
    bn = make("BatchNormalization", axis=1, scale=False, center=False, epsilon=0.01)
    mean, var = np.array([1.0, -1.0], np.float32), np.array([4.0, 0.25], np.float32)
    bn.set_weights([mean, var])
    x = RNG.normal(size=(2, 2, 3)).astype(np.float32)
    ref = (x - mean[None, :, None]) / np.sqrt(var[None, :, None] + 0.01)
    np.testing.assert_allclose(bn.call(x, "auto"), ref, rtol=1e-5, atol=1e-6)


def test_bilinear_upsampling_half_pixel_rule():
    x = np.array([0.0, 1.0, 4.0], np.float32).reshape(1, 1, 3, 1)
    y = make("UpSampling2D", size=[1, 2], interpolation="bilinear").call(x, "auto")
    # output j samples input position (j + 0.5) / 2 - 0.5, clamped at the edges
    np.testing.assert_allclose(y.ravel(), [0.0, 0.25, 0.75, 1.75, 3.25, 4.0], rtol=1e-6)


def test_keras_file_without_name_attributes_uses_object_paths(tmp_path):
    # Keras 3 before 3.x wrote no "name" attribute on the vars groups: the weights are then
    # found by the snake_case class-name paths alone
    src = os.path.join(HERE, "misc_layers.weights.h5")
    dst = tmp_path / "w.weights.h5"
    dst.write_bytes(open(src, "rb").read())
    with h5py.File(dst, "r+") as f:
        def strip(name, obj):
            if "name" in obj.attrs:
                del obj.attrs["name"]
        f.visititems(strip)
    model = fastconv.load_model(os.path.join(HERE, "misc_layers.json"), weights=dst)
    x, ys, _ = data("misc_layers")
    for a, b in zip(as_list(model.predict(x)), ys):
        assert_keras_close(a, b, "misc_layers without name attributes")


def test_snake_case_matches_keras_object_names():
    from fastconv.models._io import snake_case
    assert snake_case("Conv2DTranspose") == "conv2d_transpose"
    assert snake_case("PReLU") == "p_re_lu"
    assert snake_case("BatchNormalization") == "batch_normalization"
    assert snake_case("GlobalAveragePooling2D") == "global_average_pooling2d"


def test_weights_argument_overrides_the_file_weights():
    x, ys, _ = data("tcn_1d")
    for base in ("tcn_1d.keras", "tcn_1d.h5"):
        m = fastconv.load_model(os.path.join(HERE, base), weights=os.path.join(HERE, "tcn_1d.weights.h5"))
        assert_keras_close(m.predict(x), ys[0], f"{base} with weights=")


def test_links_to_other_files_are_refused(tmp_path):
    dst = tmp_path / "w.weights.h5"
    dst.write_bytes(open(os.path.join(HERE, "tcn_1d.weights.h5"), "rb").read())
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.zeros((3, 4, 8), np.float32)
    with h5py.File(dst, "r+") as f:
        del f["layers/conv1d/vars/0"]
        f["layers/conv1d/vars/0"] = h5py.ExternalLink(str(other), "/data")
    with pytest.raises(fastconv.models.ModelFormatError, match="ExternalLink"):
        fastconv.load_model(os.path.join(HERE, "tcn_1d.json"), weights=dst)


def test_sequential_without_input_shape(tmp_path):
    import json
    cfg = json.load(open(os.path.join(HERE, "sign_mnist.json")))
    cfg["config"]["layers"] = [l for l in cfg["config"]["layers"] if l["class_name"] != "InputLayer"]
    cfg["config"].pop("build_input_shape", None)
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(cfg))
    m = fastconv.load_model(arch, weights=os.path.join(HERE, "sign_mnist.weights.h5"))
    assert m.input_shapes == [None]
    x, ys, _ = data("sign_mnist")
    assert_keras_close(m.predict(x), ys[0], "unbuilt Sequential")
    with pytest.raises(fastconv.InvalidShapeError):  # the first op still checks what it gets
        m.predict(np.zeros((1, 28, 28, 3), np.float32))
