"""The cuda backend's tests, run by ``tests/test_cuda.py`` in a subprocess.

On a machine with a GPU they run on it; elsewhere under Numba's CUDA simulator,
with ``NUMBA_ENABLE_CUDASIM=1 FASTCONV_CUDA_SIMULATOR=1`` set before Numba is
imported (which is why this file runs in its own process, and why its name
keeps the main test run from collecting it).  By hand::

    NUMBA_ENABLE_CUDASIM=1 FASTCONV_CUDA_SIMULATOR=1 python -m pytest tests/cuda_suite.py

The simulator runs each CUDA thread as a Python thread, so every shape here is
tiny; the Keras fixtures are a subset, chosen to cover every op and every value
of every argument the fixtures use.
"""

import json
import os

import numpy as np
import pytest

import fastconv
from fastconv import activations, backends
from fastconv.backends import reference
from conftest import assert_close

# Imported only when this file is collected, i.e. run on purpose: unavailable -> an error.
CU = backends._module("cuda") if os.environ.get("FASTCONV_CUDA_SUITE") == "1" else None

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "keras_ops.npz")
_data = np.load(FIXTURES)
CASES = json.loads(str(_data["index"]))
_MAX_PER_OP = 3


def _subset():
    """Per op, the smallest cases (by array size) that together cover every value each
    keyword argument takes in that op's fixtures, at most ``_MAX_PER_OP`` of them."""
    by_op = {}
    for i, c in enumerate(CASES):
        if not c["op"].startswith("activations."):
            size = _data[f"{i}/x"].size + _data[f"{i}/y"].size
            by_op.setdefault(c["op"], []).append((size, i))
    chosen = []
    for op, items in sorted(by_op.items()):
        items.sort()
        seen, picked = set(), []
        for _, i in items:
            values = {(k, json.dumps(v)) for k, v in CASES[i]["kwargs"].items()}
            if not picked or values - seen:
                picked.append(i)
                seen |= values
            if len(picked) == _MAX_PER_OP:
                break
        chosen += picked
    return chosen


def _case_id(i):
    c = CASES[i]
    kw = ",".join(f"{k}={v}" for k, v in c["kwargs"].items() if v is not None)
    return f"{i}-{c['op']}-{kw}".replace(" ", "")


def _rng(seed=0):
    return np.random.default_rng(seed)


def _dev(a):
    return CU.cuda.to_device(np.ascontiguousarray(a))


def _is_dev(a):
    return CU.is_device_array(a) and not isinstance(a, np.ndarray)


# ----------------------------------------------------------------------------- Keras fixtures

@pytest.mark.parametrize("i", _subset(), ids=_case_id)
def test_op_matches_keras(i, dtype):
    case = CASES[i]
    x = _data[f"{i}/x"].astype(dtype)
    weights = [_data[f"{i}/w{j}"].astype(dtype) for j in range(case["weights"])]
    before = [a.copy() for a in [x] + weights]
    y = getattr(fastconv, case["op"])(x, *weights, backend="cuda", **case["kwargs"])
    assert isinstance(y, np.ndarray) and y.dtype == dtype
    assert_close(y, _data[f"{i}/y"])
    for a, b in zip([x] + weights, before):  # inputs are never modified
        np.testing.assert_array_equal(a, b)


def test_subset_covers_every_public_op():
    assert {CASES[i]["op"] for i in _subset()} == set(backends.OP_KERNELS)


# ----------------------------------------------------------------------------- activations

# Values on both sides of every activation's breakpoints (0, +-0.5, +-1, +-3, 6).
_ACT_X = np.array([-7.0, -3.5, -2.0, -1.0, -0.75, -0.5, -0.25, 0.0, 0.3, 0.5, 0.9, 1.0, 2.5, 3.0,
                   5.0, 6.5])


@pytest.mark.parametrize("name", sorted(activations.ELEMENTWISE | {"softmax", "log_softmax"}))
def test_every_activation_is_fused(name, dtype):
    # A 1x1 convolution with an identity kernel and a bias hands the activation _ACT_X + bias.
    x = _ACT_X.reshape(1, 2, 8, 1).astype(dtype)
    k = np.ones((1, 1, 1, 2), dtype)
    b = np.array([0.0, 0.125], dtype)
    y = fastconv.conv2d(x, k, b, activation=name, backend="cuda")
    assert y.dtype == dtype
    assert_close(y, fastconv.conv2d(x, k, b, activation=name, backend="reference"), rtol=1e-5, atol=1e-6)


def test_activation_codes_cover_every_elementwise_name():
    # the ops hand backends canonical names (None for linear)
    assert {activations.canonical(n) for n in activations.ELEMENTWISE} <= set(CU.K.ACT_CODES)


def test_callable_activation_runs_on_the_result():
    x = _rng().standard_normal((1, 4, 4, 2))
    k = _rng(1).standard_normal((3, 3, 2, 3))
    y = fastconv.conv2d(x, k, activation=lambda v: np.abs(v) * 2, backend="cuda")
    assert_close(y, 2 * np.abs(fastconv.conv2d(x, k, backend="reference")))


# ----------------------------------------------------------------------------- geometry

GEOMETRY = [
    # (op, x shape, weight shapes, kwargs): what the fixture subset may miss
    ("conv2d", (2, 5, 6, 6), [(3, 2, 2, 6), (6,)], dict(groups=3, strides=(2, 1), padding="same")),
    ("conv2d", (1, 6, 5, 3), [(2, 3, 3, 5)], dict(padding=((2, 0), (1, 3)), activation="relu6")),
    ("conv1d", (2, 9, 3), [(3, 3, 4), (4,)], dict(dilation_rate=3, padding="causal")),
    ("conv3d", (1, 3, 4, 5, 2), [(2, 2, 3, 2, 3), (3,)], dict(strides=(1, 2, 2), padding="same")),
    ("conv2d", (1, 4, 4, 8), [(1, 1, 8, 20), (20,)], dict(activation="silu")),  # wide tiles on a GPU
    ("conv2d_transpose", (1, 3, 4, 3), [(3, 3, 2, 3), (2,)], dict(strides=2, padding="same")),
    ("conv2d_transpose", (2, 3, 3, 2), [(3, 2, 3, 2)], dict(dilation_rate=2, output_padding=None)),
    ("conv1d_transpose", (1, 4, 2), [(4, 3, 2)], dict(strides=3, output_padding=2, padding="valid")),
    ("conv3d_transpose", (1, 2, 2, 3, 2), [(2, 3, 2, 2, 2), (2,)], dict(strides=(2, 1, 2), padding="same")),
    ("depthwise_conv2d", (1, 6, 7, 3), [(3, 2, 3, 2), (6,)],
     dict(strides=2, dilation_rate=2, padding="same", activation="elu")),
    ("separable_conv1d", (2, 7, 3), [(3, 3, 2), (1, 6, 4), (4,)], dict(padding="same", strides=2)),
    ("spatially_separable_conv2d", (1, 5, 6, 2), [(3,), (3,)], dict(padding="same")),
    ("max_pool2d", (1, 5, 7, 2), [], dict(pool_size=(3, 2), strides=(2, 3), padding="same")),
    ("avg_pool3d", (1, 3, 5, 4, 2), [], dict(pool_size=2, strides=1, padding="same")),
    ("avg_pool1d", (2, 7, 3), [], dict(pool_size=3, strides=2, padding="same",
                                       data_format="channels_first")),
    ("global_max_pool3d", (2, 2, 3, 2, 5), [], dict(keepdims=True)),
    ("global_avg_pool2d", (2, 3, 4, 5), [], dict(data_format="channels_first")),
]


def _geometry_args(i, dtype):
    op, xs, ws, kw = GEOMETRY[i]
    rng = _rng(i)
    return op, [rng.standard_normal(xs).astype(dtype)] + [rng.standard_normal(s).astype(dtype) for s in ws], kw


@pytest.mark.parametrize("i", range(len(GEOMETRY)), ids=lambda i: f"{GEOMETRY[i][0]}-{i}")
def test_geometry_matches_reference(i, dtype):
    op, args, kw = _geometry_args(i, dtype)
    y = getattr(fastconv, op)(*args, backend="cuda", **kw)
    assert isinstance(y, np.ndarray) and y.dtype == dtype
    assert_close(y, getattr(fastconv, op)(*args, backend="reference", **kw), rtol=1e-5, atol=1e-6)


def test_gpu_launch_configurations(monkeypatch):
    """The tile shapes and thread counts used on a real GPU (the simulator defaults to small
    ones, being slow per thread), on one wide, one narrow and one direct case."""
    monkeypatch.setattr(CU, "_TILES", {"wide": (64, 64, 16, 4, 4), "narrow": (128, 16, 16, 4, 2)})
    monkeypatch.setattr(CU, "_THREADS", 256)
    monkeypatch.setattr(CU, "_GLOBAL", (32, 8))
    for i in (1, 4, 5, 12, 16):  # narrow conv, wide conv, transposed conv, max pool, global
        op, args, kw = _geometry_args(i, np.float32)
        assert_close(getattr(fastconv, op)(*args, backend="cuda", **kw),
                     getattr(fastconv, op)(*args, backend="reference", **kw), rtol=1e-5, atol=1e-6)


def test_max_pooling_propagates_nan():
    x = np.zeros((1, 4, 4, 2), np.float32)
    x[0, 1, 1, 0] = np.nan
    y = fastconv.max_pool2d(x, backend="cuda")
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 0, 1]) and not np.isnan(y[0, 1, 1, 0])
    g = fastconv.global_max_pool2d(x, backend="cuda")
    assert np.isnan(g[0, 0]) and g[0, 1] == 0


def test_empty_batch():
    x = np.zeros((0, 4, 4, 2), np.float32)
    assert fastconv.conv2d(x, np.ones((3, 3, 2, 3), np.float32), backend="cuda").shape == (0, 2, 2, 3)
    assert fastconv.max_pool2d(x, backend="cuda").shape == (0, 2, 2, 2)
    assert fastconv.global_avg_pool2d(x, backend="cuda").shape == (0, 2)


# ----------------------------------------------------------------------------- device arrays

def test_device_input_gives_device_output():
    rng = _rng()
    x = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
    k, b = rng.standard_normal((3, 3, 3, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    dx = _dev(x)
    for op, args, kw in (
            ("conv2d", (k, b), dict(padding="same", activation="gelu")),
            ("conv2d", (k, b), dict(activation="softmax")),
            ("conv2d_transpose", (k.transpose(0, 1, 3, 2), b), dict(strides=2)),
            ("depthwise_conv2d", (k[..., :1], b[:3]), dict(strides=2)),
            ("separable_conv2d", (k[..., :1], k[:1, :1, :, :], b), {}),
            ("avg_pool2d", (), dict(pool_size=3, strides=1, padding="same")),
            ("global_max_pool2d", (), dict(keepdims=True))):
        y = getattr(fastconv, op)(dx, *args, backend="cuda", **kw)
        assert _is_dev(y), op
        assert_close(y.copy_to_host(), getattr(fastconv, op)(x, *args, backend="reference", **kw))
    np.testing.assert_array_equal(dx.copy_to_host(), x)  # not modified


def test_device_channels_first_casts_and_strided_views():
    rng = _rng()
    x = rng.standard_normal((2, 3, 6, 5))  # channels_first
    k = rng.standard_normal((2, 2, 3, 2))
    want = fastconv.conv2d(x.astype(np.float32), k.astype(np.float32), data_format="channels_first",
                           backend="reference")
    # float32 input with a float32 kernel, channels first: transposed on the device both ways
    y = fastconv.conv2d(_dev(x.astype(np.float32)), k.astype(np.float32), data_format="channels_first",
                        backend="cuda")
    assert _is_dev(y) and y.dtype == np.float32
    assert_close(y.copy_to_host(), want)
    # float32 input, float64 kernel: computed in float64, the input cast on the device
    y = fastconv.conv2d(_dev(x.astype(np.float32)), k, data_format="channels_first", backend="cuda")
    assert y.dtype == np.float64
    assert_close(y.copy_to_host(), fastconv.conv2d(x.astype(np.float32), k, data_format="channels_first",
                                                   backend="reference"))
    # integer input -> float32, as Keras; and a non-contiguous device view
    xi = (x * 4).astype(np.int32)
    y = fastconv.max_pool2d(_dev(xi)[:, :, 1:, ::2], data_format="channels_first", backend="cuda")
    assert y.dtype == np.float32
    assert_close(y.copy_to_host(), fastconv.max_pool2d(xi[:, :, 1:, ::2], data_format="channels_first",
                                                       backend="reference"))


def test_device_array_needs_the_cuda_backend():
    dx = _dev(np.ones((1, 4, 4, 1), np.float32))
    for backend in ("auto", "reference"):
        with pytest.raises(fastconv.errors.BackendError, match="CUDA device array: pass backend='cuda'"):
            fastconv.max_pool2d(dx, backend=backend)
    with pytest.raises(fastconv.errors.InvalidArgumentError, match="`kernel` is a CUDA device array"):
        fastconv.conv2d(dx, _dev(np.ones((1, 1, 1, 1), np.float32)), backend="cuda")


def test_backend_functions_take_device_weights():
    """The kernel-contract functions with device weights (as the model engine would call them)."""
    rng = _rng(3)
    x = rng.standard_normal((1, 1, 4, 5, 3)).astype(np.float32)
    w, b = rng.standard_normal((1, 2, 2, 4, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    args = ((1, 2, 2), (1, 1, 1), (0, 1, 0), (1, 8, 10), "relu")
    y = CU.conv_transpose(_dev(x), _dev(w), _dev(b), *args)
    assert _is_dev(y)
    assert_close(y.copy_to_host(), reference.conv_transpose(x, w, b, *args))
    wc = rng.standard_normal((1, 2, 2, 3, 4)).astype(np.float32)
    args = ((1, 1, 1), (1, 1, 1), ((0, 0), (0, 1), (1, 0)), 1, (1, 4, 5), None)
    assert_close(CU.conv(x, _dev(wc), None, *args), reference.conv(x, wc, None, *args))


# ----------------------------------------------------------------------------- engine helpers

def test_engine_elementwise_helpers():
    rng = _rng(5)
    a = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    c = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    s, t = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    da, dc = _dev(a), _dev(c)
    close = dict(rtol=1e-6, atol=1e-6)
    assert_close(CU.bias_activation(da, t, "relu").copy_to_host(), np.maximum(a + t, 0), **close)
    assert_close(CU.affine(da, s, t).copy_to_host(), a * s + t, **close)
    assert_close(CU.affine(da, s, t, "tanh").copy_to_host(), np.tanh(a * s + t), rtol=1e-5, atol=1e-6)
    for op, f in (("add", np.add), ("subtract", np.subtract), ("multiply", np.multiply),
                  ("maximum", np.maximum), ("minimum", np.minimum)):
        assert_close(CU.merge(op, [da, dc]).copy_to_host(), f(a, c), **close)
    assert_close(CU.merge("average", [da, dc, da]).copy_to_host(), (2 * a + c) / 3, rtol=1e-5, atol=1e-6)
    for axis in (-1, 1, 0):
        assert_close(CU.concatenate([da, dc[:, :2]] if axis == 1 else [da, dc], axis).copy_to_host(),
                     np.concatenate([a, c[:, :2]] if axis == 1 else [a, c], axis), **close)
    assert_close(CU.activation(da, "softmax").copy_to_host(), activations.softmax(a), rtol=1e-5, atol=1e-6)
    assert_close(CU.activation(da, "log_softmax").copy_to_host(), activations.log_softmax(a),
                 rtol=1e-5, atol=1e-6)
    assert_close(CU.activation(da, "hard_silu").copy_to_host(), activations.hard_silu(a), **close)
    f = CU.flatten(da)
    assert f.shape == (2, 60)
    w, b = rng.standard_normal((60, 7)).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    assert_close(CU.dense(f, w, b, "sigmoid").copy_to_host(), activations.sigmoid(a.reshape(2, 60) @ w + b),
                 rtol=1e-5, atol=1e-6)
    assert CU.reshape(da, (6, 20)).shape == (6, 20)
    np.testing.assert_array_equal(da.copy_to_host(), a)  # inputs untouched
    np.testing.assert_array_equal(CU.to_host(CU.to_device(a)), a)
    # the reshaping layers' helpers: zero padding, cropping, nearest upsampling
    widths = [(0, 0), (1, 2), (0, 1), (0, 0)]
    np.testing.assert_array_equal(CU.pad(da, widths).copy_to_host(), np.pad(a, widths))
    np.testing.assert_array_equal(CU.crop(da, (slice(None), slice(1, 3), slice(0, 2))).copy_to_host(),
                                  a[:, 1:3, 0:2])
    for axis in (1, 2, 3):
        np.testing.assert_array_equal(CU.repeat(da, 3, axis).copy_to_host(), np.repeat(a, 3, axis))


# ----------------------------------------------------------------------------- models

_MODELS = os.path.join(os.path.dirname(__file__), "fixtures", "models")


@pytest.mark.parametrize("name", ["mobilenet_like", "tcn_1d", "residual_two_io", "misc_layers"])
def test_model_predict_matches_keras(name):
    """Model.predict(backend="cuda") on the first sample of the small model fixtures, against
    the predictions Keras saved (each op on the GPU; elementwise layers on the host for now)."""
    z = np.load(os.path.join(_MODELS, f"{name}.npz"))
    xkeys = sorted(k for k in z.files if k.startswith("x_"))
    if all(k[2:].isdigit() for k in xkeys):
        xs = [z[f"x_{i}"][:1] for i in range(len(xkeys))]
        x = xs[0] if len(xs) == 1 else xs
    else:
        x = {k[2:]: z[k][:1] for k in xkeys}
    model = fastconv.load_model(os.path.join(_MODELS, f"{name}.keras"))
    out = model.predict(x, backend="cuda")
    got = [out[k] for k in sorted(out)] if isinstance(out, dict) else out if isinstance(out, list) else [out]
    want = [z[f"y_{i}"][:1] for i in range(sum(k.startswith("y_") for k in z.files))]
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert isinstance(a, np.ndarray) and a.dtype == np.float32
        assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["mobilenet_like", "tcn_1d", "residual_two_io", "misc_layers"])
def test_model_stays_on_the_device(name, monkeypatch):
    """One copy in per input and one copy out per output: every layer of these models runs
    on the device (misc_layers' few host-only layers are counted as round trips), and the
    weights are copied to the device once, on the first predict."""
    z = np.load(os.path.join(_MODELS, f"{name}.npz"))
    xkeys = sorted(k for k in z.files if k.startswith("x_"))
    model = fastconv.load_model(os.path.join(_MODELS, f"{name}.keras"))
    feeds = [z[k][:1] for k in xkeys]
    x = feeds[0] if len(feeds) == 1 else ({k[2:]: f for k, f in zip(xkeys, feeds)}
                                          if not all(k[2:].isdigit() for k in xkeys) else feeds)
    first = model.predict(x, backend="cuda")
    copies = {"in": 0, "out": 0}
    to_device, to_host = CU.cuda.to_device, CU.to_host

    def counted_in(a, *args, **kw):
        copies["in"] += 1
        return to_device(a, *args, **kw)

    def counted_out(a):
        copies["out"] += int(CU.is_device_array(a))
        return to_host(a)

    monkeypatch.setattr(CU.cuda, "to_device", counted_in)
    monkeypatch.setattr(CU, "to_host", counted_out)
    stats = {}
    g = model._graph
    with model._device_weights("cuda"):
        ins = {l.name: CU.to_device(np.asarray(f, np.float32)) for l, f in zip(g.input_layers, feeds)} \
            if isinstance(x, list) or not isinstance(x, dict) else None
        if ins is None:
            ins = {l.name: CU.to_device(np.asarray(x[l.name], np.float32)) for l in g.input_layers}
        from fastconv.models.model import _flatten
        g.run(ins, _flatten(g.outputs_struct), "cuda", stats=stats)
    trips = stats.get("host_round_trips", 0)
    if name == "misc_layers":
        # its exotic layers (Permute, LayerNormalization, PReLU...) run on host copies; small
        # constants they use (a Rescaling's scale...) are copied per call
        assert trips > 0 and copies["out"] == trips and copies["in"] >= len(feeds) + trips
    else:
        assert trips == 0 and copies == {"in": len(feeds), "out": 0}, (copies, stats)
    copies.update(out=0, **{"in": 0})
    again = model.predict(x, backend="cuda")
    def arrays(r):
        return [r] if isinstance(r, np.ndarray) else [r[k] for k in sorted(r)] if isinstance(r, dict) else list(r)
    assert copies["out"] == len(arrays(again)) + trips
    if name != "misc_layers":
        assert copies["in"] == len(feeds)
    for a, b in zip(arrays(first), arrays(again)):
        np.testing.assert_array_equal(a, b)
