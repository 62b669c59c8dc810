"""fastconv.load_model against real Keras: every fixture model, every file format, every backend.

The fixtures (tests/fixtures/models/) are made by tests/fixtures/make_keras_models.py
with TensorFlow + Keras 3; these tests never import either.
"""

import functools
import os

import numpy as np
import pytest

import fastconv
from fastconv.models import Model

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "models")
MODELS = ["sign_mnist", "cifar10", "residual_two_io", "mobilenet_like", "tcn_1d", "cnn_3d",
          "encoder_decoder", "misc_layers"]
FORMATS = ["keras", "h5", "weights"]
BACKENDS = ["auto"] + fastconv.available_backends()


def path(name, ext):
    return os.path.join(HERE, f"{name}.{ext}")


@functools.lru_cache(maxsize=None)
def load(name, form):
    if form == "weights":
        return fastconv.load_model(path(name, "json"), weights=path(name, "weights.h5"))
    return fastconv.load_model(path(name, form))


@functools.lru_cache(maxsize=None)
def data(name):
    z = np.load(path(name, "npz"))
    xkeys = [k for k in z.files if k.startswith("x_")]
    if all(k[2:].isdigit() for k in xkeys):
        xs = [z[f"x_{i}"] for i in range(len(xkeys))]
        x = xs[0] if len(xs) == 1 else xs
    else:
        x = {k[2:]: z[k] for k in xkeys}
    ys = [z[f"y_{i}"] for i in range(sum(k.startswith("y_") for k in z.files))]
    mids = {k[4:]: z[k] for k in z.files if k.startswith("mid_")}
    return x, ys, mids


def as_list(y):
    if isinstance(y, dict):
        return [y[k] for k in sorted(y)]
    return list(y) if isinstance(y, list) else [y]


def assert_keras_close(actual, expected, what):
    """Within 1e-4 of the output's magnitude, and the same argmax for class scores."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != Keras {expected.shape}"
    assert actual.dtype == np.float32
    scale = float(np.max(np.abs(expected)))
    err = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    assert err <= 1e-4 * scale, f"{what}: max |diff| {err:.3g} > 1e-4 * {scale:.3g}"
    if expected.ndim == 2 and expected.shape[1] > 1:
        np.testing.assert_array_equal(actual.argmax(-1), expected.argmax(-1), err_msg=what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", FORMATS)
@pytest.mark.parametrize("name", MODELS)
def test_matches_keras(name, form, backend):
    model = load(name, form)
    x, ys, _ = data(name)
    out = model.predict(x, backend=backend)
    got = as_list(out)
    assert len(got) == len(ys)
    for i, (a, b) in enumerate(zip(got, ys)):
        assert_keras_close(a, b, f"{name}.{form} on {backend}: output {i}")


def test_seed_classifier_shapes():
    m = load("sign_mnist", "keras")
    assert m.input_shapes == [(None, 28, 28, 1)]
    assert [l.class_name for l in m.layers][:3] == ["Conv2D", "BatchNormalization", "MaxPooling2D"]
    n_params = sum(w.size for l in m.layers for w in l.weights.values())
    assert n_params == 264049  # the seed's model.summary()
    c = load("cifar10", "h5")
    assert c.input_shapes == [(None, 32, 32, 3)] and c.output_names == ["dense_1"]


def test_output_structure_follows_keras():
    x, _, _ = data("residual_two_io")
    out = load("residual_two_io", "keras").predict(x)
    assert isinstance(out, list) and [o.shape for o in out] == [(5, 5), (5, 6, 6, 1)]
    x, _, _ = data("misc_layers")
    out = load("misc_layers", "keras").predict(x)
    assert isinstance(out, dict) and list(out) == ["head", "side"]
    x, _, _ = data("sign_mnist")
    assert isinstance(load("sign_mnist", "h5").predict(x), np.ndarray)


@pytest.mark.parametrize("name", [n for n in MODELS if data(n)[2]])
def test_intermediate_outputs(name):
    model = load(name, "keras")
    x, _, mids = data(name)
    names = sorted(mids)
    got = model.predict(x, outputs=names)
    assert isinstance(got, list) and len(got) == len(names)
    for layer_name, g in zip(names, got):
        assert_keras_close(g, mids[layer_name], f"{name}: output of {layer_name}")
    single = model.predict(x, outputs=names[0])
    np.testing.assert_array_equal(single, got[0])


def test_intermediate_output_of_a_shared_layer_and_a_nested_model():
    model = load("misc_layers", "h5")
    x, _, _ = data("misc_layers")
    shared, inner = model.predict(x, outputs=["shared", "inner_fn"])
    # first call of the shared Dense: selu(normalized aux @ W + b), the adapted statistics
    # of the Normalization layer coming from the file's variables
    norm = model.get_layer("aux_norm").weights
    a = (x["aux"] - norm["mean"]) / np.sqrt(norm["variance"])
    layer = model.get_layer("shared")
    ref = fastconv.activations.selu(a @ layer.weights["kernel"] + layer.weights["bias"])
    np.testing.assert_allclose(shared, ref, rtol=1e-5, atol=1e-6)
    assert isinstance(inner, list) and len(inner) == 2  # a nested model with two outputs


def test_multi_input_list_and_dict_agree():
    model = load("residual_two_io", "weights")
    x, ys, _ = data("residual_two_io")
    by_list = model.predict(x)
    by_tuple = model.predict(tuple(x))
    by_dict = model.predict({"meta": x[1], "image": x[0]})
    for a, b, c in zip(by_list, by_tuple, by_dict):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert model.input_names == ["image", "meta"]


def test_dict_inputs_model_accepts_list_in_input_order():
    model = load("misc_layers", "keras")
    x, _, _ = data("misc_layers")
    a = model.predict(x)
    b = model.predict([x[n] for n in model.input_names])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("name", ["sign_mnist", "residual_two_io", "tcn_1d"])
def test_batch_size_splitting_agrees(name):
    model = load(name, "keras")
    x, _, _ = data(name)
    full = as_list(model.predict(x, batch_size=1000, backend="reference"))
    for bs in (1, 2, 3):
        part = as_list(model.predict(x, batch_size=bs, backend="reference"))
        for a, b in zip(full, part):  # float32 BLAS may round differently for other row counts
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7 * float(np.abs(a).max()))
    for backend in BACKENDS:  # optimised kernels may round differently for other batch shapes
        for bs in (2, 4):
            for a, b in zip(full, as_list(model.predict(x, batch_size=bs, backend=backend))):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(a).max()))


def test_large_input_runs_in_batches():
    model = load("mobilenet_like", "keras")
    x = np.random.default_rng(0).normal(size=(70, 16, 16, 3)).astype(np.float32)
    y = model.predict(x)  # default batch 32: three chunks
    assert y.shape == (70, 10)
    np.testing.assert_allclose(y[65:], model.predict(x[65:]), rtol=1e-5, atol=1e-7)


def test_inputs_are_not_modified_and_integers_are_accepted():
    model = load("sign_mnist", "keras")
    x = np.random.default_rng(1).integers(0, 2, size=(3, 28, 28, 1))
    before = x.copy()
    y = model.predict(x)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(y, model.predict(x.astype(np.float32)))


def test_layers_and_get_layer():
    m = load("misc_layers", "keras")
    assert isinstance(m, Model) and isinstance(m, fastconv.Model)
    assert m.get_layer("conv_cf").class_name == "Conv2D"
    assert m.get_layer("conv_cf").config["data_format"] == "channels_first"
    assert m.get_layer("inner_seq").class_name == "Sequential"
    assert [l.name for l in m.layers if l.class_name == "InputLayer"] == ["pixels", "aux"]
    s = load("sign_mnist", "weights")
    assert len(s.layers) == 14 and s.layers[-1].name == "dense_1"
    assert "InputLayer" not in [l.class_name for l in s.layers]  # Sequential.layers, as in Keras


def test_batchnorm_uses_moving_statistics():
    m = load("sign_mnist", "keras")
    x, _, _ = data("sign_mnist")
    conv, bn = m.predict(x, outputs=["conv2d", "batch_normalization"])
    w = m.get_layer("batch_normalization").weights
    ref = w["gamma"] * (conv - w["moving_mean"]) / np.sqrt(w["moving_variance"] + 1e-3) + w["beta"]
    np.testing.assert_allclose(bn, ref, rtol=1e-5, atol=1e-5)
    assert np.abs(w["moving_mean"]).max() > 0.1  # the fixture's statistics are not trivial


def test_bilinear_upsampling_matches_keras_exactly_enough():
    # encoder_decoder's up_sampling2d_1 is bilinear (2, 3): compare that layer alone
    m = load("encoder_decoder", "keras")
    x, _, mids = data("encoder_decoder")
    before, after = m.predict(x, outputs=["conv2d_2", "up_sampling2d_1"])
    assert m.get_layer("up_sampling2d_1").config["interpolation"] == "bilinear"
    assert after.shape == (before.shape[0], before.shape[1] * 2, before.shape[2] * 3, before.shape[3])
    assert_keras_close(after, mids["up_sampling2d_1"], "bilinear up-sampling")


def test_supported_layers_lists_the_table():
    names = fastconv.models.supported_layers()
    for n in ("Conv2D", "Conv3DTranspose", "SeparableConv1D", "BatchNormalization", "UpSampling2D",
              "Sequential", "Functional", "PReLU", "Normalization", "GlobalMaxPooling3D"):
        assert n in names
    assert "Lambda" not in names


@functools.lru_cache(maxsize=None)
def load_plain(name):
    return fastconv.load_model(path(name, "keras"), optimize=False)


@pytest.mark.parametrize("name", MODELS)
def test_folding_and_fusion_change_only_rounding(name):
    x, ys, _ = data(name)
    plain = as_list(load_plain(name).predict(x, backend="reference"))
    fused = as_list(load(name, "keras").predict(x, backend="reference"))
    for a, b, y in zip(fused, plain, ys):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(y).max()))
        assert_keras_close(b, y, f"{name} unoptimised")


def test_folded_layers_keep_their_own_outputs():
    # mobilenet_like: conv2d (no bias) -> BatchNormalization -> ReLU(6) runs as one fused conv,
    # but asking for conv2d's output must still give the bare convolution
    model = load("mobilenet_like", "keras")
    assert len(model._graph.plan) < len(model._graph.plain_plan)  # something was fused
    x, ys, _ = data("mobilenet_like")
    conv = model.get_layer("conv2d")
    assert conv.use_bias is False and set(conv.weights) == {"kernel"}  # the original is untouched
    got_conv, got_bn, got_relu = model.predict(x, outputs=["conv2d", "batch_normalization", "re_lu"])
    ref = fastconv.conv2d(x, conv.weights["kernel"], strides=2, padding="same")
    np.testing.assert_allclose(got_conv, ref, rtol=1e-6, atol=1e-6)
    bn = model.get_layer("batch_normalization").weights
    ref_bn = bn["gamma"] * (ref - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-3) + bn["beta"]
    np.testing.assert_allclose(got_bn, ref_bn, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_relu, np.clip(ref_bn, 0, 6), rtol=1e-5, atol=1e-5)
    assert_keras_close(model.predict(x), ys[0], "after intermediate requests")


def test_empty_batch_predicts_empty_output():
    model = load("sign_mnist", "keras")
    assert model.predict(np.zeros((0, 28, 28, 1), np.float32)).shape == (0, 24)
