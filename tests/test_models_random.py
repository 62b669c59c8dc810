"""fastconv.models.from_config: models from an architecture alone, with seeded random weights."""

import copy
import json
import os

import numpy as np
import pytest

import fastconv
from fastconv.errors import InvalidArgumentError
from fastconv.models import ModelFormatError, UnsafeModelError, from_config
from fastconv.models.model import Graph

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "models")
FIXTURES = ["sign_mnist", "cifar10", "mobilenet_like", "residual_two_io", "misc_layers", "cnn_3d",
            "encoder_decoder", "tcn_1d"]


def _leaves(graph):
    for layer in graph.layers:
        if isinstance(layer, Graph):
            yield from _leaves(layer)
        else:
            yield layer


def _weights(model):
    return {l.name: l.weights for l in _leaves(model._graph)}


def _config(name):
    with open(os.path.join(HERE, f"{name}.json")) as fh:
        return json.load(fh)


def _inputs(model, batch=2, seed=3):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((batch,) + tuple(s[1:])).astype(np.float32) for s in model.input_shapes]
    return xs[0] if len(xs) == 1 else xs


@pytest.mark.parametrize("name", FIXTURES)
def test_shapes_are_keras_shapes(name):
    """Every layer gets exactly the variables, of exactly the shapes, Keras gave it."""
    random = from_config(os.path.join(HERE, f"{name}.json"))
    keras = fastconv.load_model(os.path.join(HERE, f"{name}.keras"))
    got = {n: {k: v.shape for k, v in w.items()} for n, w in _weights(random).items()}
    want = {n: {k: v.shape for k, v in w.items()} for n, w in _weights(keras).items()}
    assert got == want
    for w in _weights(random).values():
        for k, v in w.items():
            assert v.dtype == np.float32 and np.isfinite(v).all(), k
            if k in ("moving_variance", "variance"):
                assert (v > 0).all()
    ys = random.predict(_inputs(random))
    ys = list(ys.values()) if isinstance(ys, dict) else ys if isinstance(ys, list) else [ys]
    for y in ys:
        assert np.isfinite(y).all()


def test_seed_decides_the_weights():
    a, b = from_config(_config("sign_mnist"), seed=7), from_config(_config("sign_mnist"), seed=7)
    c = from_config(_config("sign_mnist"), seed=8)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    for name in wa:
        for k in wa[name]:
            np.testing.assert_array_equal(wa[name][k], wb[name][k])
            assert not np.array_equal(wa[name][k], wc[name][k])
    x = _inputs(a)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


def test_config_as_dict_text_or_path():
    path = os.path.join(HERE, "cifar10.json")
    with open(path) as fh:
        text = fh.read()
    models = [from_config(path, seed=1), from_config(text, seed=1), from_config(json.loads(text), seed=1),
              from_config(text.encode(), seed=1)]
    x = _inputs(models[0])
    y = models[0].predict(x)
    for m in models[1:]:
        np.testing.assert_array_equal(m.predict(x), y)


def test_outputs_not_saturated_and_fold_exact():
    """BatchNormalization statistics follow the data: the softmax is not one-hot, and the
    folded (optimized) model computes what the plain one does."""
    fused = from_config(_config("mobilenet_like"), seed=2)
    plain = from_config(_config("mobilenet_like"), seed=2, optimize=False)
    x = _inputs(fused, batch=4)
    y = fused.predict(x)
    assert y.max() < 0.99
    assert np.abs(y - y[:1]).max() > 1e-3  # depends on the input
    np.testing.assert_allclose(y, plain.predict(x), rtol=1e-4, atol=1e-6)


def test_bad_arguments():
    cfg = _config("sign_mnist")
    with pytest.raises(InvalidArgumentError, match="seed"):
        from_config(cfg, seed=-1)
    with pytest.raises(InvalidArgumentError, match="seed"):
        from_config(cfg, seed=1.5)
    with pytest.raises(InvalidArgumentError, match="config"):
        from_config(42)
    with pytest.raises(ModelFormatError, match="no such file"):
        from_config(os.path.join(HERE, "no_such_model.json"))
    with pytest.raises(ModelFormatError, match="class_name"):
        from_config({"layers": []})
    with pytest.raises(InvalidArgumentError, match="max_layers"):
        from_config(cfg, max_layers=0)
    with pytest.raises(ModelFormatError, match="max_weight_bytes"):
        from_config(cfg, max_weight_bytes=1000)


def test_unknown_input_axes_refused():
    cfg = copy.deepcopy(_config("sign_mnist"))
    first = cfg["config"]["layers"][0]
    assert first["class_name"] == "InputLayer"
    first["config"]["batch_shape"] = [None, None, None, 1]
    with pytest.raises(InvalidArgumentError, match="every axis"):
        from_config(cfg)


def test_code_refused_as_load_model_refuses_it():
    cfg = copy.deepcopy(_config("sign_mnist"))
    cfg["config"]["layers"].insert(1, {"module": "keras.layers", "class_name": "Lambda",
                                       "config": {"name": "evil", "function": "os.system"}})
    with pytest.raises(UnsafeModelError):
        from_config(cfg)
