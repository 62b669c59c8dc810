"""Property tests (hypothesis): backends agree with the reference, and the reference
obeys the algebra that ties the ops together (adjoints, layouts, groupings)."""

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv
from conftest import KERNELS, assert_close, backends_for

# derandomize: CI sees the same examples every run (a failure reproduces); widen locally with
# HYPOTHESIS_PROFILE-style edits to max_examples when hunting.
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
FORMATS = st.sampled_from(["channels_last", "channels_first"])


def _nsp(op):
    return int(re.search(r"(\d)d", op).group(1))


@st.composite
def cases(draw, op):
    """A random valid call of ``op``: (args, kwargs)."""
    nsp = _nsp(op)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    fmt = draw(FORMATS)
    n = draw(st.integers(1, 2))
    spatial = tuple(draw(st.integers(1, 9 if nsp < 3 else 5)) for _ in range(nsp))
    kw = {"data_format": fmt}

    def x_of(c):
        shape = (n,) + spatial + (c,) if fmt == "channels_last" else (n, c) + spatial
        return rng.standard_normal(shape).astype(np.float32)

    def window(limit=4):
        return tuple(draw(st.integers(1, limit)) for _ in range(nsp))

    padding = draw(st.sampled_from(["valid", "same"] + (["causal"] if op == "conv1d" else [])))
    strides = window(3)
    kw.update(padding=padding)
    if "pool" in op and not op.startswith("global"):
        pool = window(3)
        assume(padding == "same" or all(p <= s for p, s in zip(pool, spatial)))
        kw.update(pool_size=pool, strides=draw(st.sampled_from([None, strides])))
        return (x_of(draw(st.integers(1, 5))),), kw
    if op.startswith("global"):
        return (x_of(draw(st.integers(1, 5))),), {"data_format": fmt,
                                                  "keepdims": draw(st.booleans())}
    k = window(3)
    dilation = window(2)
    if op.startswith("conv") and max(strides) > 1 and max(dilation) > 1:
        dilation = (1,) * nsp
    keff = [(ki - 1) * d + 1 for ki, d in zip(k, dilation)]
    if not op.endswith("transpose"):
        assume(padding != "valid" or all(e <= s for e, s in zip(keff, spatial)))
    act = draw(st.sampled_from([None, "relu", "tanh", "gelu", "softmax"]))
    kw.update(strides=strides, dilation_rate=dilation, activation=act)
    use_bias = draw(st.booleans())
    if op.endswith("transpose"):
        cin, f = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        if draw(st.booleans()):
            kw["output_padding"] = tuple(draw(st.integers(0, s - 1)) for s in strides)
            assume(padding == "valid" or all((i - 1) * s + e % 2 + p > 0 for i, s, e, p in zip(
                spatial, strides, keff, kw["output_padding"])))
        w = [rng.standard_normal(k + (f, cin)).astype(np.float32)]
    elif op.startswith("conv"):
        groups = draw(st.sampled_from([1, 2, 3]))
        cin, f = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
        kw["groups"] = groups
        w = [rng.standard_normal(k + (cin // groups, f)).astype(np.float32)]
    else:  # depthwise / separable
        cin, m = draw(st.integers(1, 4)), draw(st.integers(1, 3))
        w = [rng.standard_normal(k + (cin, m)).astype(np.float32)]
        f = cin * m
        if op.startswith("separable"):
            f = draw(st.integers(1, 4))
            w.append(rng.standard_normal((1,) * nsp + (cin * m, f)).astype(np.float32))
    if use_bias:
        w.append(rng.standard_normal(f).astype(np.float32))
    return (x_of(cin), *w), kw


OPS = sorted(op for op in KERNELS if op != "spatially_separable_conv2d")
PAIRS = [(op, b) for op in OPS for b in backends_for(op) if b not in ("auto", "reference")]


@pytest.mark.parametrize("op, backend", PAIRS, ids=[f"{o}-{b}" for o, b in PAIRS])
@SETTINGS
@given(data=st.data())
def test_backend_agrees_with_reference(op, backend, data):
    args, kw = data.draw(cases(op))
    f = getattr(fastconv, op)
    assert_close(f(*args, backend=backend, **kw), f(*args, backend="reference", **kw), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", OPS)
@SETTINGS
@given(data=st.data())
def test_channels_first_is_channels_last_transposed(op, data):
    args, kw = data.draw(cases(op))
    if kw.get("activation") == "softmax":
        kw["activation"] = "relu"  # softmax acts on the last axis, which differs between formats
    f = getattr(fastconv, op)
    x = args[0]
    if kw["data_format"] == "channels_first":
        x = np.moveaxis(x, 1, -1)
    last = f(x, *args[1:], **{**kw, "data_format": "channels_last"})
    first = f(np.ascontiguousarray(np.moveaxis(x, -1, 1)), *args[1:], **{**kw, "data_format": "channels_first"})
    if first.ndim > 2:
        first = np.moveaxis(first, 1, -1)
    assert_close(first, last)


@pytest.mark.parametrize("nsp", [1, 2, 3])
@SETTINGS
@given(data=st.data())
def test_transpose_is_adjoint_of_convolution(nsp, data):
    """<conv(z), x> == <z, conv_transpose(x)> with one kernel array, dilation included."""
    args, kw = data.draw(cases(f"conv{nsp}d_transpose"))
    x, w = args[0].astype(np.float64), args[1].astype(np.float64)
    if kw["data_format"] == "channels_first":
        x = np.moveaxis(x, 1, -1)
    kw.update(activation=None, data_format="channels_last")
    x = np.ascontiguousarray(x)
    t = getattr(fastconv, f"conv{nsp}d_transpose")(x, w, **kw)
    z = np.random.default_rng(1).standard_normal(t.shape)
    fkw = {k: v for k, v in kw.items() if k not in ("output_padding",)}
    forward = getattr(fastconv, f"conv{nsp}d")(z, w, **fkw)
    assume(forward.shape == x.shape)  # Keras's shapes pair up unless output_padding breaks it
    assert np.isclose(np.vdot(forward, x), np.vdot(z, t), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("nsp", [1, 2])
@SETTINGS
@given(data=st.data())
def test_depthwise_is_grouped_convolution(nsp, data):
    args, kw = data.draw(cases(f"depthwise_conv{nsp}d"))
    x, w = args[0], args[1]
    assume(max(kw["strides"]) == 1 or max(kw["dilation_rate"]) == 1)
    if kw["padding"] == "causal":
        kw["padding"] = "same"
    c, m = w.shape[-2], w.shape[-1]
    grouped = fastconv.ops.conv.__dict__[f"conv{nsp}d"](
        x, w.reshape(w.shape[:-2] + (1, c * m)), *args[2:], groups=c, **kw)
    assert_close(getattr(fastconv, f"depthwise_conv{nsp}d")(*args, **kw), grouped)


@pytest.mark.parametrize("nsp", [1, 2])
@SETTINGS
@given(data=st.data())
def test_separable_is_depthwise_then_pointwise(nsp, data):
    args, kw = data.draw(cases(f"separable_conv{nsp}d"))
    x, dk, pk = args[:3]
    bias = args[3] if len(args) > 3 else None
    act = kw.pop("activation")
    mid = getattr(fastconv, f"depthwise_conv{nsp}d")(x, dk, **kw)
    expected = getattr(fastconv, f"conv{nsp}d")(mid, pk, bias, activation=act,
                                               data_format=kw["data_format"])
    assert_close(getattr(fastconv, f"separable_conv{nsp}d")(*args, activation=act, **kw), expected)


@SETTINGS
@given(data=st.data())
def test_spatially_separable_equals_conv2d_with_outer_product(data):
    args, kw = data.draw(cases("conv2d"))
    kw.update(groups=1)
    x = args[0]
    cin = x.shape[-1] if kw["data_format"] == "channels_last" else x.shape[1]
    rng = np.random.default_rng(2)
    kh, kw_ = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    assume(max(kw["strides"]) == 1 or max(kw["dilation_rate"]) == 1)
    sp = x.shape[1:3] if kw["data_format"] == "channels_last" else x.shape[2:]
    keff = ((kh - 1) * kw["dilation_rate"][0] + 1, (kw_ - 1) * kw["dilation_rate"][1] + 1)
    assume(kw["padding"] != "valid" or (keff[0] <= sp[0] and keff[1] <= sp[1]))
    col, row = rng.standard_normal(kh), rng.standard_normal(kw_)
    full = np.broadcast_to(np.outer(col, row)[:, :, None, None], (kh, kw_, cin, 1))
    expected = fastconv.depthwise_conv2d(x, full, **{k: v for k, v in kw.items() if k != "groups"})
    got = fastconv.spatially_separable_conv2d(x, col, row, **{k: v for k, v in kw.items() if k != "groups"})
    assert_close(got, expected)
