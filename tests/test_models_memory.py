"""The engine's memory plan: activations freed after their last use, elementwise layers
written over dead inputs, never over the caller's arrays, requested outputs or layer state."""

import os

import numpy as np
import pytest

import fastconv
from fastconv.models import Layer
from fastconv.models import model as engine
from test_models_security import _with_layer, layer_entry, write_keras

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "models")
NAMES = sorted(f[:-6] for f in os.listdir(HERE) if f.endswith(".keras"))


def _inputs(name):
    with np.load(os.path.join(HERE, f"{name}.npz")) as d:
        return [d[k] for k in sorted(d) if k.startswith("x_")]


def _run(model, xs, keys=None, stats=None):
    g = model._graph
    feeds = {l.name: x for l, x in zip(g.input_layers, xs)}
    keys = keys or engine._flatten(g.outputs_struct)
    return g.run(feeds, keys, "auto", stats=stats), keys


@pytest.fixture
def no_donation(monkeypatch):
    def off():
        monkeypatch.setattr(engine._LiveSet, "sole_owner", lambda self, v: False)
    return off


@pytest.mark.parametrize("name", NAMES)
def test_in_place_steps_give_the_same_bits_and_leave_inputs_alone(name, no_donation):
    model = fastconv.load_model(os.path.join(HERE, f"{name}.keras"))
    xs = [x.astype(np.float32) for x in _inputs(name)]
    copies = [x.copy() for x in xs]
    stats = {}
    got, keys = _run(model, xs, stats=stats)
    for x, c in zip(xs, copies):
        np.testing.assert_array_equal(x, c)           # the caller's arrays are never written
    # every layer's output requested at once: kept values are never written over either
    names = [l.name for l in model.layers if not isinstance(l, fastconv.models.layers.InputLayer)]
    every = model.predict(xs if len(xs) > 1 else xs[0], outputs=names)
    no_donation()
    plain_stats = {}
    want, _ = _run(model, xs, stats=plain_stats)
    for k in keys:
        np.testing.assert_array_equal(got[k], want[k])
    assert plain_stats["donated"] == 0
    assert stats["peak_bytes"] <= plain_stats["peak_bytes"]
    every_plain = model.predict(xs if len(xs) > 1 else xs[0], outputs=names)
    for n, a, b in zip(names, every, every_plain):
        np.testing.assert_array_equal(a, b, err_msg=n)


def test_elementwise_layers_reuse_dead_inputs():
    # misc_layers and residual_two_io have standalone activations, BatchNormalization and merges
    for name, at_least in (("misc_layers", 2), ("residual_two_io", 1)):
        model = fastconv.load_model(os.path.join(HERE, f"{name}.keras"))
        stats = {}
        _run(model, [x.astype(np.float32) for x in _inputs(name)], stats=stats)
        assert stats["donated"] >= at_least, (name, stats)


def test_peak_is_the_largest_live_set_not_the_sum():
    model = fastconv.load_model(os.path.join(HERE, "mobilenet_like.keras"))
    x = np.random.default_rng(0).random((8, 16, 16, 3), np.float32)
    stats, sizes = {}, []
    g = model._graph
    _run(model, [x], stats=stats)
    keys = [k for st in g.plan if st.inputs is not None for k in st.outputs]
    every, _ = _run(model, [x], keys=keys)          # every activation kept: their sum
    total = sum(v.nbytes for v in {id(engine._root(v)): engine._root(v) for v in every.values()}.values())
    largest = max(v.nbytes for v in every.values())
    assert largest <= stats["peak_bytes"] < total / 2
    prof = model.profile(x, repeat=1)
    assert prof.peak_activation_bytes == stats["peak_bytes"] and prof.peak_step == stats["peak_step"]
    assert prof.weight_bytes == 4 * model.count_params()
    assert "peak live activations" in str(prof)


class Table(Layer):
    """A registered layer that returns an array it keeps (the engine must not write over it)."""

    def parse(self, config):
        self.table = None

    def call(self, x, backend):
        if self.table is None:
            self.table = np.linspace(-1, 1, x.size, dtype=np.float32).reshape(x.shape)
        return self.table


def test_registered_layer_outputs_are_not_donated(tmp_path):
    def entry(ib):
        return {"module": "my_package.layers", "class_name": "Table", "name": "table",
                "registered_name": "my_package>Table", "config": {"name": "table"}, "inbound_nodes": ib}
    cfg = _with_layer("table", entry, before="re_lu")
    layer_entry(cfg, "re_lu")["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = ["table", 0, 0]
    path = write_keras(tmp_path, cfg)
    try:
        fastconv.models.register_layer("my_package>Table", Table)
        m = fastconv.load_model(path)
        x = np.random.default_rng(0).random((1, 16, 16, 3), np.float32)
        first = m.predict(x)
        kept = m.get_layer("table").table.copy()
        assert (kept < 0).any()                       # a ReLU over it in place would zero these
        np.testing.assert_array_equal(m.predict(x), first)
        np.testing.assert_array_equal(m.get_layer("table").table, kept)
    finally:
        fastconv.models.unregister_layer("my_package>Table")


def _functional(layers, outputs):
    """A Keras 3 functional config from [(name, class, config, [input names])]."""
    def tensor(n):
        return {"class_name": "__keras_tensor__", "config": {"keras_history": [n, 0, 0]}}
    entries = [{"module": "keras.layers", "class_name": "InputLayer", "name": "x", "inbound_nodes": [],
                "config": {"name": "x", "batch_shape": [None, 4, 4, 2], "dtype": "float32"}}]
    for name, cls, cfg, ins in layers:
        args = [tensor(ins[0])] if len(ins) == 1 else [[tensor(i) for i in ins]]
        entries.append({"module": "keras.layers", "class_name": cls, "name": name, "registered_name": None,
                        "config": {"name": name, **cfg}, "inbound_nodes": [{"args": args, "kwargs": {}}]})
    return {"module": "keras", "class_name": "Functional",
            "config": {"name": "m", "layers": entries, "input_layers": [["x", 0, 0]],
                       "output_layers": [[o, 0, 0] for o in outputs]}}


def test_memory_shared_with_a_live_view_is_not_written():
    # `shift` dies at `relu` while `flat`, a view of its memory, is still needed by `cat`:
    # a ReLU written over `shift` would change `flat` too
    cfg = _functional([
        ("shift", "Rescaling", {"scale": 1.0, "offset": -0.5}, ["x"]),
        ("flat", "Flatten", {}, ["shift"]),
        ("relu", "ReLU", {}, ["shift"]),
        ("flat2", "Flatten", {}, ["relu"]),
        ("cat", "Concatenate", {"axis": -1}, ["flat", "flat2"]),
    ], ["cat"])
    m = fastconv.models.from_config(cfg)
    x = np.random.default_rng(0).random((2, 4, 4, 2), np.float32)
    y = m.predict(x)
    shifted = (x - np.float32(0.5)).reshape(2, -1)
    np.testing.assert_array_equal(y, np.concatenate([shifted, np.maximum(shifted, 0)], axis=1))
    # and where nothing else holds the memory, the ReLU does run in place
    cfg2 = _functional([("shift", "Rescaling", {"scale": 1.0, "offset": -0.5}, ["x"]),
                        ("relu", "ReLU", {}, ["shift"])], ["relu"])
    m2 = fastconv.models.from_config(cfg2)
    stats = {}
    out, _ = _run(m2, [x], stats=stats)
    assert stats["donated"] == 1
    np.testing.assert_array_equal(next(iter(out.values())), np.maximum(x - np.float32(0.5), 0))
