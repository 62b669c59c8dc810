"""Model-level accounting: Model.count_params / param_counts / cost / summary / profile.

Parameter counts are checked against Keras's own, read from
tests/fixtures/models/param_counts.json (written by
tests/fixtures/make_param_counts.py from the committed .keras fixtures, with
TensorFlow; these tests never import it). MACs and FLOPs are checked against
hand counts, and at 224x224 against the published totals of VGG16, ResNet50
and MobileNetV2 (architectures only, with random weights).
"""

import functools
import json
import os

import numpy as np
import pytest

import fastconv
from fastconv import cost as C
from fastconv.errors import InvalidArgumentError
from fastconv.models import accounting

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "models")
BENCH = os.path.join(os.path.dirname(__file__), "..", "bench", "models")
MODELS = ["sign_mnist", "cifar10", "residual_two_io", "mobilenet_like", "tcn_1d", "cnn_3d",
          "encoder_decoder", "misc_layers"]


def path(name, ext):
    return os.path.join(HERE, f"{name}.{ext}")


@functools.lru_cache(maxsize=None)
def load(name, form="keras"):
    if form == "weights":
        return fastconv.load_model(path(name, "json"), weights=path(name, "weights.h5"))
    return fastconv.load_model(path(name, form))


@functools.lru_cache(maxsize=None)
def keras_counts():
    with open(path("param_counts", "json")) as fh:
        return json.load(fh)["models"]


def assert_counts_equal(ours, theirs, where):
    assert (ours.total, ours.trainable, ours.non_trainable) == \
        (theirs["total"], theirs["trainable"], theirs["non_trainable"]), where
    if "layers" in theirs:
        assert list(ours.layers) == list(theirs["layers"]) or set(ours.layers) == set(theirs["layers"]), where
        for name, sub in theirs["layers"].items():
            assert_counts_equal(ours.layers[name], sub, f"{where}/{name}")


# ---------------------------------------------------------------------- parameters

@pytest.mark.parametrize("form", ["keras", "h5", "weights"])
@pytest.mark.parametrize("name", MODELS)
def test_param_counts_match_keras(name, form):
    model = load(name, form)
    theirs = keras_counts()[name]
    ours = model.param_counts()
    assert_counts_equal(ours, theirs, name)
    assert model.count_params() == theirs["total"]
    assert ours.total == ours.trainable + ours.non_trainable


@pytest.mark.parametrize("variant", [k for k in json.load(open(path("param_counts", "json")))["models"]
                                     if ":frozen=" in k])
def test_frozen_layers_are_non_trainable_as_in_keras(variant, tmp_path):
    name, frozen = variant.split(":frozen=")
    frozen = frozen.split(",")
    with open(path(name, "json")) as fh:
        cfg = json.load(fh)
    hit = []
    for entry in cfg["config"]["layers"]:
        if entry["config"].get("name") in frozen:
            entry["config"]["trainable"] = False
            hit.append(entry["config"]["name"])
    assert sorted(hit) == sorted(frozen)
    arch = tmp_path / "frozen.json"
    arch.write_text(json.dumps(cfg))
    model = fastconv.load_model(str(arch), weights=path(name, "weights.h5"))
    assert_counts_equal(model.param_counts(), keras_counts()[variant], variant)


def test_sign_mnist_fixture_is_the_seed_model():
    counts = load("sign_mnist").param_counts()
    assert (counts.total, counts.trainable, counts.non_trainable) == (264049, 263749, 300)
    assert counts.layers["batch_normalization"].non_trainable == 150   # moving mean + variance of 75


def test_counts_are_from_the_unfolded_layers():
    # mobilenet_like folds its BatchNormalizations into convolutions when optimised
    folded = load("mobilenet_like")
    plain = fastconv.load_model(path("mobilenet_like", "keras"), optimize=False)
    assert len(folded._graph.plan) < len(plain._graph.plan)
    assert folded.param_counts() == plain.param_counts()
    assert folded.cost().total == plain.cost().total


# ---------------------------------------------------------------------- MACs and FLOPs

def test_sign_mnist_macs_by_hand():
    c = load("sign_mnist").cost()
    macs = {r.name: r.macs for r in c.records}
    assert macs == {
        "conv2d": 28 * 28 * 75 * 3 * 3 * 1, "batch_normalization": 0, "max_pooling2d": 0,
        "conv2d_1": 14 * 14 * 50 * 3 * 3 * 75, "dropout": 0, "batch_normalization_1": 0,
        "max_pooling2d_1": 0, "conv2d_2": 7 * 7 * 25 * 3 * 3 * 50, "batch_normalization_2": 0,
        "max_pooling2d_2": 0, "flatten": 0, "dense": 400 * 512, "dropout_1": 0, "dense_1": 512 * 24}
    assert c.total.macs == 7_912_538
    # the convolutions' records are fastconv.cost's, unchanged
    assert c.records[0].cost == C.conv2d((1, 28, 28, 1), (3, 3, 1, 75), use_bias=True, padding="same",
                                         activation="relu")
    # BatchNormalization: 2 FLOPs per element; Dense: 2 per MAC + bias + activation
    flops = {r.name: r.flops for r in c.records}
    assert flops["batch_normalization"] == 2 * 28 * 28 * 75
    assert flops["dense"] == 2 * 400 * 512 + 512 + 512
    assert [r.output_shape for r in c.records][-1] == (1, 24)


def test_residual_two_io_by_hand():
    """Two inputs, a grouped conv, a shared Dense called twice, merges and activation layers."""
    c = load("residual_two_io").cost()
    by_call = {(r.name, r.call): (r.macs, r.flops) for r in c.records}
    px = 12 * 12 * 8  # elements of the 12x12x8 maps
    expect = {
        ("stem", 0): (144 * 8 * 27, 2 * 144 * 8 * 27 + px),
        ("stem_bn", 0): (0, 2 * px),
        ("stem_relu", 0): (0, px),
        ("res_a", 0): (144 * 8 * 72, 2 * 144 * 8 * 72 + 2 * px),
        ("res_b", 0): (144 * 8 * 36, 2 * 144 * 8 * 36 + px),          # groups=2
        ("res_bn", 0): (0, 2 * px),
        ("res_add", 0): (0, px),
        ("res_relu", 0): (0, px),
        ("pool", 0): (0, px),
        ("seg", 0): (36 * 8, 2 * 36 * 8 + 36 + 36),
        ("gap", 0): (0, 288), ("gmp", 0): (0, 288), ("gpools", 0): (0, 0),
        ("shared_dense", 0): (56, 2 * 56 + 16), ("shared_dense", 1): (56, 2 * 56 + 16),
        ("meta_proj", 0): (49, 2 * 49 + 7),
        ("cat", 0): (0, 0),
        ("cls", 0): (32 * 5, 2 * 160 + 10),
    }
    assert by_call == expect
    assert c.total.macs == 156_129
    assert c.total.flops == 326_779
    # the shared layer's parameters are counted once
    assert [r.params for r in c.records if r.name == "shared_dense"] == [64, 0]
    assert c.total.params == load("residual_two_io").count_params()


def test_batch_size_scales_the_counts():
    m = load("residual_two_io")
    one, four = m.cost(), m.cost(batch_size=4)
    assert four.total.macs == 4 * one.total.macs and four.total.flops == 4 * one.total.flops
    assert four.total.params == one.total.params
    assert four.records[0].output_shape == (4, 12, 12, 8)


@pytest.mark.parametrize("name", MODELS)
def test_cost_records_cover_every_call(name):
    model = load(name)
    c = model.cost()
    assert c.total.params == model.count_params()
    assert c.total.macs == sum(r.macs for r in c.records) and c.total.macs > 0
    assert sum(cst.macs for cst in c.by_layer().values()) == c.total.macs
    # output shapes are those the model really produces
    x = [np.zeros((1,) + s[1:], np.float32) for s in model.input_shapes]
    ys = model.predict(x if len(x) > 1 else x[0])
    ys = [ys[k] for k in sorted(ys)] if isinstance(ys, dict) else (ys if isinstance(ys, list) else [ys])
    shapes = {r.name: r.output_shape for r in c.records}
    names = model.output_names
    if isinstance(model._graph.outputs_struct, dict):
        names = [model._graph.outputs_struct[k][0] for k in sorted(model._graph.outputs_struct)]
    for n, y in zip(names, ys):
        assert shapes[n] == y.shape


def test_transpose_and_nested_models():
    c = load("encoder_decoder").cost()
    rec = {r.name: r for r in c.records}
    # 2x2x12 input pixels, each scattering a 3x3x10x12 kernel
    assert rec["conv2d_transpose"].macs == 2 * 2 * 3 * 3 * 10 * 12
    m = load("misc_layers").cost()
    names = [r.name for r in m.records]
    assert "inner_seq/dense_1" in names and "inner_fn/dense_3" in names
    assert m.by_layer()["inner_seq"].params == keras_counts()["misc_layers"]["layers"]["inner_seq"]["total"]


def test_input_shapes_for_free_axes():
    m = load("sign_mnist")
    assert m.cost(input_shapes=(None, 28, 28, 1)).total == m.cost().total
    with pytest.raises(InvalidArgumentError, match="input_shapes"):
        m.cost(input_shapes=(None, 28, 28))
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        m.cost(batch_size=0)


# ---------------------------------------------------------------------- summary

def test_sign_mnist_summary():
    printed = []
    text = load("sign_mnist").summary(print_fn=printed.append)
    assert printed == [text]
    lines = text.splitlines()
    for line in ("Total params: 264,049", "Trainable params: 263,749", "Non-trainable params: 300"):
        assert line in lines
    assert lines[0] == 'Model: "sign_mnist"'
    row = next(l for l in lines if l.startswith("conv2d_1 (Conv2D)"))
    assert row.split()[2:] == ["(None,", "14,", "14,", "50)", "33,800", "6,615,000", "83.6%"]
    assert any(l.startswith("Total MACs: 7,912,538") for l in lines)


@pytest.mark.parametrize("name", ["misc_layers", "residual_two_io"])
def test_summary_of_functional_models(name):
    model = load(name)
    text = model.summary(print_fn=None)
    counts = keras_counts()[name]
    assert f"Total params: {counts['total']:,}" in text.splitlines()
    for layer in model.layers:
        assert any(l.startswith(f"{layer.name} (") for l in text.splitlines()), layer.name


# ---------------------------------------------------------------------- profile

@pytest.mark.parametrize("name", ["sign_mnist", "mobilenet_like", "misc_layers"])
def test_profile(name):
    model = load(name)
    x = [np.random.default_rng(0).standard_normal((2,) + s[1:]).astype(np.float32) for s in model.input_shapes]
    if isinstance(model._graph.inputs_struct, dict):
        x = dict(zip(model.input_names, x))
    elif len(x) == 1:
        x = x[0]
    p = model.profile(x, repeat=2)
    steps = [s for s in model._graph.plan if s.inputs is not None]
    assert len(p.records) == len(steps)
    assert all(r.seconds > 0 for r in p.records)
    assert abs(sum(r.share for r in p.records) - 1) < 1e-9
    # every Keras layer call is run by exactly one step, and the FLOPs add up to the Keras graph's
    absorbed = [n for r in p.records for n in r.layers]
    assert len(absorbed) == len(set(absorbed)) or name == "misc_layers"   # misc has a shared layer
    cost = model.cost(batch_size=2)
    assert sorted(absorbed) == sorted(c[0] for c in cost.by_call())
    assert p.flops == cost.total.flops and p.macs == cost.total.macs
    assert str(p).splitlines()[-1].startswith("total")


def test_profile_names_fused_steps_after_the_layers_they_absorb():
    p = load("mobilenet_like").profile(np.zeros((1, 16, 16, 3), np.float32), repeat=1, warmup=0)
    names = [r.name for r in p.records]
    assert "conv2d (+batch_normalization, re_lu)" in names
    rec = next(r for r in p.records if r.layers[0] == "conv2d")
    assert rec.layers == ("conv2d", "batch_normalization", "re_lu")
    assert rec.gflops == pytest.approx(rec.flops / rec.seconds / 1e9)


def test_profile_checks_its_arguments():
    m = load("sign_mnist")
    with pytest.raises(InvalidArgumentError, match="repeat"):
        m.profile(np.zeros((1, 28, 28, 1), np.float32), repeat=0)
    with pytest.raises(fastconv.FastconvError):
        m.profile(np.zeros((1, 27, 28, 1), np.float32))


# ---------------------------------------------------------------------- published totals at 224x224

PUBLISHED = {
    # name: (architecture file, published MACs, Keras's count_params())
    "vgg16": (path("vgg16", "json"), 15.5e9, 138_357_544),
    "resnet50": (os.path.join(BENCH, "resnet50.json"), 3.9e9, 25_636_712),
    "mobilenet_v2": (os.path.join(BENCH, "mobilenet_v2.json"), 0.30e9, 3_538_984),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_totals_at_224(name):
    arch, macs, params = PUBLISHED[name]
    if not os.path.exists(arch):
        pytest.skip(f"{arch} is not there")
    from_config = pytest.importorskip("fastconv.models._random").from_config
    model = from_config(arch, seed=0)
    assert model.input_shapes == [(None, 224, 224, 3)]
    assert model.count_params() == params
    total = model.cost().total.macs
    assert abs(total - macs) <= 0.02 * macs, f"{name}: {total:,} MACs, published ~{macs:,.0f}"


def test_free_input_axes_need_input_shapes(tmp_path):
    with open(path("sign_mnist", "json")) as fh:
        cfg = json.load(fh)
    first = cfg["config"]["layers"][0]["config"]
    first["batch_shape"] = [None, None, None, 1]
    cfg["config"].pop("build_input_shape", None)
    arch = tmp_path / "free.json"
    arch.write_text(json.dumps(cfg))
    model = fastconv.load_model(str(arch), weights=path("sign_mnist", "weights.h5"))
    with pytest.raises(InvalidArgumentError, match="input_shapes"):
        model.cost()
    text = model.summary(print_fn=None)
    assert "Total params: 264,049" in text.splitlines() and "Total MACs: unknown" in text
    full = model.summary(print_fn=None, input_shapes=(None, 28, 28, 1))
    assert full.splitlines()[-2].startswith("Total MACs: 7,912,538")
    assert model.cost(input_shapes=[(None, 28, 28, 1)]).total == load("sign_mnist").cost().total
