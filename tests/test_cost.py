"""fastconv.cost: output shapes equal the ops' (run on the reference backend), hand-counted MACs,
parameters and FLOPs, the ops' own errors for bad arguments, and the Cost record."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import cost, errors

OPS = sorted(set(cost.__all__) - {"Cost", "total"})
POOLS = {op for op in OPS if "pool" in op}


def test_every_op_of_the_functional_api_has_a_cost_function():
    assert "cost" in fastconv.__all__ and fastconv.cost is cost
    assert set(OPS) == set(fastconv.ops.__all__) - {"factor_separable_kernel"}
    for op in OPS:
        f = getattr(cost, op)
        assert f.__name__ == op and f.__doc__ and ">>>" in f.__doc__


# --------------------------------------------------------------------------- shapes, params, bytes

# (op, array shapes, bias length or None, keywords shared by the op and its cost function)
CASES = [
    ("conv1d", [(2, 9, 3), (3, 3, 4)], 4, {}),
    ("conv1d", [(1, 9, 4), (3, 2, 6)], None, dict(padding="causal", dilation_rate=2, groups=2)),
    ("conv1d", [(1, 4, 9), (2, 4, 3)], None, dict(strides=2, padding="same", data_format="channels_first")),
    ("conv2d", [(2, 7, 6, 3), (3, 2, 3, 5)], 5, dict(padding="same", activation="relu")),
    ("conv2d", [(1, 8, 7, 4), (3, 3, 2, 6)], None, dict(strides=(2, 3), groups=2)),
    ("conv2d", [(1, 4, 9, 8), (3, 3, 4, 2)], 2, dict(dilation_rate=2, data_format="channels_first")),
    ("conv2d", [(1, 5, 5, 3), (1, 1, 3, 7)], None, dict(activation="softmax")),
    ("conv3d", [(1, 5, 4, 6, 2), (2, 3, 2, 2, 3)], 3, dict(strides=2, padding="same")),
    ("conv3d", [(1, 2, 5, 4, 6), (3, 2, 2, 2, 2)], None, dict(data_format="channels_first")),
    ("conv1d_transpose", [(1, 5, 3), (3, 4, 3)], 4, dict(strides=2)),
    ("conv1d_transpose", [(2, 4, 2), (4, 3, 2)], None, dict(strides=3, padding="same", output_padding=1)),
    ("conv1d_transpose", [(1, 6, 2), (3, 2, 2)], None, dict(dilation_rate=2, padding="same")),
    ("conv2d_transpose", [(1, 4, 5, 3), (3, 3, 2, 3)], 2, dict(strides=2, padding="same", activation="tanh")),
    ("conv2d_transpose", [(1, 3, 4, 5), (2, 3, 4, 3)], None,
     dict(strides=(2, 1), output_padding=(1, 0), data_format="channels_first")),
    ("conv3d_transpose", [(1, 2, 3, 2, 2), (2, 2, 3, 3, 2)], 3, dict(strides=2)),
    ("conv3d_transpose", [(1, 2, 3, 2, 2), (3, 3, 3, 1, 2)], None, dict(strides=(1, 2, 2), padding="same")),
    ("depthwise_conv1d", [(2, 9, 3), (3, 3, 2)], 6, dict(strides=2, dilation_rate=2)),
    ("depthwise_conv1d", [(1, 3, 8), (2, 3, 1)], None, dict(padding="same", data_format="channels_first")),
    ("depthwise_conv2d", [(1, 7, 6, 3), (3, 3, 3, 2)], 6, dict(padding="same", strides=2, activation="relu")),
    ("depthwise_conv2d", [(2, 3, 6, 7), (2, 3, 3, 1)], None, dict(data_format="channels_first")),
    ("separable_conv1d", [(1, 10, 4), (3, 4, 2), (1, 8, 6)], 6, dict(padding="same")),
    ("separable_conv1d", [(1, 10, 3), (3, 3, 1), (1, 3, 5)], None, dict(strides=3, dilation_rate=2)),
    ("separable_conv2d", [(1, 6, 7, 4), (3, 3, 4, 2), (1, 1, 8, 5)], 5, dict(strides=2, activation="relu")),
    ("separable_conv2d", [(1, 3, 6, 6), (2, 2, 3, 1), (1, 1, 3, 4)], None,
     dict(padding="same", data_format="channels_first")),
    ("spatially_separable_conv2d", [(1, 7, 6, 2), (3,), (2,)], 2, dict(padding="same", activation="relu")),
    ("spatially_separable_conv2d", [(1, 7, 6, 2), (3, 1, 2, 4), (1, 3, 4, 5)], 5, dict(strides=2)),
    ("spatially_separable_conv2d", [(1, 7, 6, 2), (3,), (1, 2, 2, 3)], None, dict(dilation_rate=(2, 1))),
    ("spatially_separable_conv2d", [(1, 2, 7, 6), (3, 1, 2, 3), (2,)], 3,
     dict(data_format="channels_first", padding="same")),
    *[(f"{k}_pool1d", [(2, 9, 3)], None, kw) for k in ("max", "avg")
      for kw in ({}, dict(pool_size=3, strides=2, padding="same"), dict(pool_size=4, strides=1))],
    *[(f"{k}_pool2d", [(1, 7, 5, 2)], None, kw) for k in ("max", "avg")
      for kw in ({}, dict(pool_size=(3, 2), strides=(2, 1), padding="same"),
                 dict(pool_size=2, data_format="channels_first"))],
    *[(f"{k}_pool3d", [(1, 5, 4, 3, 2)], None, kw) for k in ("max", "avg")
      for kw in ({}, dict(pool_size=3, strides=2, padding="same"))],
    *[(f"global_{k}_pool{n}d", [(2,) + (3,) * n + (4,)], None, kw) for k in ("max", "avg") for n in (1, 2, 3)
      for kw in ({}, dict(keepdims=True), dict(keepdims=True, data_format="channels_first"))],
]


def test_the_cases_cover_every_op():
    assert {case[0] for case in CASES} == set(OPS)


def _run(op, shapes, bias_len, kw, dtype=np.float32):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    bias = [] if bias_len is None else [rng.standard_normal(bias_len).astype(dtype)]
    return getattr(fastconv, op)(*arrays, *bias, **kw, backend="reference"), arrays, bias


def _cost(op, shapes, bias_len, kw, **extra):
    if op not in POOLS:
        extra["use_bias"] = bias_len is not None
    return getattr(cost, op)(*shapes, **kw, **extra)


@pytest.mark.parametrize("op, shapes, bias_len, kw", CASES)
def test_output_shape_params_and_bytes_match_the_op(op, shapes, bias_len, kw):
    y, arrays, bias = _run(op, shapes, bias_len, kw)
    c = _cost(op, shapes, bias_len, kw)
    assert isinstance(c, cost.Cost) and c.op == op
    assert c.output_shape == y.shape
    # params: every weight the op was given (a vector kernel counts its own length) plus the bias
    weights = sum(a.size for a in arrays[1:]) + sum(b.size for b in bias)
    assert c.params == weights
    assert c.bytes_read == (arrays[0].size + weights) * 4
    assert c.bytes_written == y.size * 4
    assert c.arithmetic_intensity == pytest.approx(c.flops / (c.bytes_read + c.bytes_written))
    assert all(type(v) is int for v in (c.params, c.macs, c.flops, c.bytes_read, c.bytes_written))
    assert all(type(d) is int for d in c.output_shape)


@pytest.mark.parametrize("dtype, size", [("float64", 8), (np.float16, 2), ("int8", 1), (np.dtype("uint32"), 4)])
def test_dtype_sets_the_itemsize(dtype, size):
    c32 = cost.conv2d((1, 6, 6, 3), (3, 3, 3, 4), use_bias=True)
    c = cost.conv2d((1, 6, 6, 3), (3, 3, 3, 4), use_bias=True, dtype=dtype)
    assert (c.bytes_read, c.bytes_written) == (c32.bytes_read // 4 * size, c32.bytes_written // 4 * size)
    assert (c.macs, c.flops, c.params) == (c32.macs, c32.flops, c32.params)


def test_shape_math_only_no_array_is_made():
    # 64 x 4096 x 4096 x 256 float32 is 1 TiB: only shapes are involved.
    c = cost.conv2d((64, 4096, 4096, 256), (3, 3, 256, 256), padding="same")
    assert c.output_shape == (64, 4096, 4096, 256)
    assert c.macs == 64 * 4096 * 4096 * 9 * 256 * 256
    assert cost.global_avg_pool3d((8, 1024, 1024, 1024, 16)).flops == 8 * 1024 ** 3 * 16


# --------------------------------------------------------------------------- hand counts

def test_conv2d_3x3_same_56x56x64():
    c = cost.conv2d((1, 56, 56, 64), (3, 3, 64, 64), padding="same")
    assert c.macs == 56 * 56 * 9 * 64 * 64 == 115_605_504
    assert c.flops == 2 * c.macs
    assert c.params == 3 * 3 * 64 * 64
    b = cost.conv2d((1, 56, 56, 64), (3, 3, 64, 64), padding="same", use_bias=True, activation="relu")
    assert b.flops == 2 * c.macs + 2 * 56 * 56 * 64
    assert b.params == 3 * 3 * 64 * 64 + 64


def test_batch_strides_dilation_groups():
    # output pixels x prod(kernel) x in_channels / groups x filters
    assert cost.conv2d((8, 32, 32, 16), (3, 3, 16, 32), strides=2, padding="same").macs == 8 * 16 * 16 * 9 * 16 * 32
    assert cost.conv2d((1, 32, 32, 16), (3, 3, 16, 32), dilation_rate=2).macs == 28 * 28 * 9 * 16 * 32
    assert cost.conv2d((1, 32, 32, 16), (3, 3, 4, 32), groups=4, padding="same").macs == 32 * 32 * 9 * 4 * 32
    assert cost.conv1d((2, 100, 8), (5, 8, 4), padding="causal").macs == 2 * 100 * 5 * 8 * 4
    assert cost.conv3d((1, 8, 8, 8, 2), (3, 3, 3, 2, 4)).macs == 6 ** 3 * 27 * 2 * 4


def test_sign_mnist_cnn_from_the_seeds():
    # Conv2D(75|50|25, 3x3, same, relu) + MaxPool2D(2, 2, same); the seed's model.summary().
    layers, shape = [], (1, 28, 28, 1)
    for filters, params, pooled in ((75, 750, (1, 14, 14, 75)), (50, 33800, (1, 7, 7, 50)),
                                    (25, 11275, (1, 4, 4, 25))):
        conv = cost.conv2d(shape, (3, 3, shape[-1], filters), use_bias=True, padding="same", activation="relu")
        assert conv.params == params
        assert conv.output_shape == shape[:3] + (filters,)
        assert conv.macs == shape[1] * shape[2] * 9 * shape[-1] * filters
        pool = cost.max_pool2d(conv.output_shape, (2, 2), strides=2, padding="same")
        assert pool.output_shape == pooled
        layers += [conv, pool]
        shape = pooled
    t = cost.total(layers)
    assert t.params == 750 + 33800 + 11275
    assert t.macs == 28 * 28 * 9 * 75 + 14 * 14 * 9 * 75 * 50 + 7 * 7 * 9 * 50 * 25 == 7_695_450
    assert t.output_shape == (1, 4, 4, 25)
    # each 2x2 stride-2 "same" window reads real elements only: every input element once
    assert layers[-1].flops == 7 * 7 * 25


def test_cifar10_cnn_from_the_seeds():
    # Conv2D(32, 32, 64, 64, 128, 128; 3x3, same, relu) with a MaxPool2D(2) after each pair.
    expected_params = [896, 9248, 18496, 36928, 73856, 147584]
    shape, records = (1, 32, 32, 3), []
    for i, filters in enumerate((32, 32, 64, 64, 128, 128)):
        c = cost.conv2d(shape, (3, 3, shape[-1], filters), use_bias=True, padding="same", activation="relu")
        assert c.params == expected_params[i]
        assert c.macs == shape[1] * shape[2] * 9 * shape[-1] * filters
        records.append(c)
        shape = c.output_shape
        if i % 2:
            records.append(cost.max_pool2d(shape))
            shape = records[-1].output_shape
    assert shape == (1, 4, 4, 128)
    assert [r.macs for r in records if r.macs] == [884736, 9437184, 4718592, 9437184, 4718592, 9437184]
    assert cost.total(records).params == sum(expected_params) == 287008


def test_transposed_conv_counts_input_pixels_times_the_whole_kernel():
    # Every input pixel scatters the whole kernel, even the products "same" crops away.
    c = cost.conv2d_transpose((1, 16, 16, 32), (3, 3, 64, 32), strides=2, padding="same")
    assert c.output_shape == (1, 32, 32, 64)
    assert c.macs == 16 * 16 * 9 * 64 * 32
    valid = cost.conv2d_transpose((1, 16, 16, 32), (3, 3, 64, 32), strides=2)
    assert valid.output_shape == (1, 33, 33, 64) and valid.macs == c.macs
    # it is the adjoint of the forward convolution with the same geometry: same MACs
    assert cost.conv1d_transpose((1, 9, 4), (3, 4, 4)).macs == cost.conv1d((1, 11, 4), (3, 4, 4)).macs


def test_depthwise_separable_and_spatially_separable():
    dw = cost.depthwise_conv2d((1, 32, 32, 16), (3, 3, 16, 2), padding="same")
    assert dw.macs == 32 * 32 * 9 * 16 * 2 and dw.output_shape == (1, 32, 32, 32)
    # the seeds' example: 32 -> 64 channels, 3x3: 2336 parameters instead of 18432
    sep = cost.separable_conv2d((1, 38, 38, 32), (3, 3, 32, 1), (1, 1, 32, 64), padding="same")
    assert sep.params == 288 + 2048 == 2336
    assert cost.conv2d((1, 38, 38, 32), (3, 3, 32, 64), padding="same").params == 18432
    assert sep.macs == 38 * 38 * 9 * 32 + 38 * 38 * 32 * 64
    # separable = its depthwise pass + a 1x1 conv on the depthwise output
    d = cost.depthwise_conv2d((1, 9, 9, 4), (3, 3, 4, 2), strides=2)
    p = cost.conv2d(d.output_shape, (1, 1, 8, 5), use_bias=True, activation="relu")
    s = cost.separable_conv2d((1, 9, 9, 4), (3, 3, 4, 2), (1, 1, 8, 5), strides=2, use_bias=True,
                              activation="relu")
    assert (s.macs, s.flops, s.params) == (d.macs + p.macs, d.flops + p.flops, d.params + p.params)
    assert (s.bytes_read, s.bytes_written) == (d.bytes_read + p.bytes_read - d.bytes_written, p.bytes_written)
    # spatially separable, vectors: 3 + 3 MACs per channel and position of each pass (6 params, not 9)
    v = cost.spatially_separable_conv2d((1, 5, 5, 2), (3,), (3,))
    assert v.output_shape == (1, 3, 3, 2) and v.params == 6
    assert v.macs == 3 * 5 * 3 * 2 + 3 * 3 * 3 * 2
    # and with Keras kernels: Conv2D((3, 1)) then Conv2D((1, 3))
    k = cost.spatially_separable_conv2d((1, 8, 8, 4), (3, 1, 4, 6), (1, 3, 6, 5), padding="same", use_bias=True)
    assert k.params == 3 * 4 * 6 + 3 * 6 * 5 + 5
    assert k.macs == 64 * 3 * 4 * 6 + 64 * 3 * 6 * 5
    assert k.flops == 2 * k.macs + 64 * 5


def test_flop_conventions_for_bias_and_activations():
    base = cost.conv2d((1, 6, 6, 3), (3, 3, 3, 4))
    n_out = math.prod(base.output_shape)
    assert base.flops == 2 * base.macs
    assert cost.conv2d((1, 6, 6, 3), (3, 3, 3, 4), activation="linear").flops == base.flops
    for act in ("relu", "gelu", "softmax", np.tanh):
        assert cost.conv2d((1, 6, 6, 3), (3, 3, 3, 4), activation=act).flops == base.flops + n_out
    assert cost.conv2d((1, 6, 6, 3), (3, 3, 3, 4), use_bias=True, activation="relu").flops == base.flops + 2 * n_out


@pytest.mark.parametrize("nsp, pool, strides, padding", [
    (1, 3, 2, "same"), (1, 2, None, "valid"), (2, (3, 2), (2, 1), "same"), (2, 3, 1, "same"),
    (2, (2, 3), None, "valid"), (3, 2, 2, "same"), (3, 3, (1, 2, 3), "same")])
def test_pooling_flops_count_real_window_elements(nsp, pool, strides, padding):
    # Brute force: a depthwise convolution of ones with a ones kernel counts each window's real elements.
    shape = (2,) + (7, 6, 5)[:nsp] + (3,)
    pool_t = (pool,) * nsp if isinstance(pool, int) else pool
    s = pool_t if strides is None else strides
    ones = np.ones(shape, np.float32)
    if nsp == 3:
        counts = fastconv.conv3d(ones[..., :1], np.ones(pool_t + (1, 1), np.float32), strides=s,
                                 padding=padding, backend="reference")
    else:
        counts = getattr(fastconv, f"depthwise_conv{nsp}d")(
            ones[..., :1], np.ones(pool_t + (1, 1), np.float32), strides=s, padding=padding, backend="reference")
    reads = int(round(counts.sum())) * shape[-1]
    mx = getattr(cost, f"max_pool{nsp}d")(shape, pool, strides, padding)
    av = getattr(cost, f"avg_pool{nsp}d")(shape, pool, strides, padding)
    assert (mx.macs, mx.params, av.macs, av.params) == (0, 0, 0, 0)
    assert mx.flops == reads
    assert av.flops == reads + math.prod(av.output_shape)


def test_global_pooling_counts_input_elements():
    for kind in ("max", "avg"):
        c = getattr(cost, f"global_{kind}_pool2d")((4, 7, 7, 512))
        assert c.flops == 4 * 7 * 7 * 512 and c.output_shape == (4, 512) and c.macs == 0
        assert c.bytes_written == 4 * 512 * 4


# --------------------------------------------------------------------------- same errors as the op

X2, K2 = (1, 6, 6, 4), (3, 3, 4, 8)

# (op, array shapes, keywords): each call is bad, and the op and its cost function must agree on why.
BAD = [
    ("conv2d", [(6, 6, 4), K2], {}),
    ("conv2d", [X2, (3, 3, 4)], {}),
    ("conv1d", [(1, 2, 3, 4), (3, 4, 2)], {}),
    ("max_pool3d", [X2], {}),
    ("global_avg_pool1d", [X2], {}),
    ("conv2d", [X2, K2], dict(data_format="channels_first")),
    ("conv2d", [X2, (3, 3, 3, 8)], {}),
    ("depthwise_conv2d", [X2, (3, 3, 3, 1)], {}),
    ("depthwise_conv1d", [(1, 6, 4), (3, 3, 1, 1)], {}),
    ("conv2d_transpose", [X2, (3, 3, 8, 3)], {}),
    ("separable_conv2d", [X2, (3, 3, 4, 1), (1, 1, 5, 2)], {}),
    ("separable_conv2d", [X2, (3, 3, 4, 1), (2, 1, 4, 2)], {}),
    ("separable_conv1d", [(1, 6, 4), (3, 3, 1), (1, 3, 2)], {}),
    ("conv2d", [X2, (3, 3, 1, 8)], dict(groups=3)),
    ("conv2d", [X2, (3, 3, 2, 7)], dict(groups=2)),
    ("conv2d", [X2, K2], dict(groups=0)),
    ("conv2d", [X2, K2], dict(groups=True)),
    ("conv2d", [X2, K2], dict(strides=0)),
    ("conv2d", [X2, K2], dict(strides=(1, -1))),
    ("conv2d", [X2, K2], dict(strides=(1, 1, 1))),
    ("conv2d", [X2, K2], dict(strides=1.5)),
    ("conv2d", [X2, K2], dict(dilation_rate=0)),
    ("max_pool2d", [X2], dict(pool_size=0)),
    ("avg_pool1d", [(1, 5, 2)], dict(pool_size=2, strides=-1)),
    ("max_pool2d", [X2], dict(pool_size=(2, 7))),
    ("avg_pool2d", [X2], dict(padding="causal")),
    ("conv2d", [X2, K2], dict(strides=2, dilation_rate=2)),
    ("conv1d_transpose", [(1, 5, 2), (3, 2, 2)], dict(strides=2, dilation_rate=2)),
    ("conv2d_transpose", [X2, (3, 3, 2, 4)], dict(strides=2, output_padding=2)),
    ("conv3d_transpose", [(1, 3, 3, 3, 2), (3, 3, 3, 2, 2)], dict(output_padding=-1)),
    ("conv1d_transpose", [(1, 1, 2), (2, 2, 2)], dict(padding="same", output_padding=0)),
    ("conv2d", [X2, (7, 3, 4, 8)], {}),
    ("conv1d", [(1, 6, 4), (3, 4, 2)], dict(dilation_rate=3)),
    ("conv2d", [(1, 0, 6, 4), K2], dict(padding="same")),
    ("conv2d", [X2, (0, 3, 4, 8)], {}),
    ("conv2d_transpose", [(1, 6, 0, 4), (3, 3, 2, 4)], {}),
    ("global_max_pool2d", [(1, 0, 6, 4)], {}),
    ("global_avg_pool2d", [X2], dict(keepdims="yes")),
    ("conv2d", [X2, K2], dict(padding="full")),
    ("conv2d", [X2, K2], dict(padding="causal")),
    ("depthwise_conv1d", [(1, 6, 4), (3, 4, 1)], dict(padding="causal")),
    ("conv2d", [X2, K2], dict(padding=None)),
    ("conv2d", [X2, K2], dict(data_format="NHWC")),
    ("max_pool1d", [(1, 6, 4)], dict(data_format="NWC")),
    ("conv2d", [X2, K2], dict(activation="rleu")),
    ("conv2d", [X2, K2], dict(activation=3)),
    ("separable_conv2d", [X2, (3, 3, 4, 1), (1, 1, 4, 2)], dict(activation="nope")),
    ("spatially_separable_conv2d", [X2, (0,), (3,)], {}),
    ("spatially_separable_conv2d", [X2, (3, 3, 4, 1), (3,)], {}),
    ("spatially_separable_conv2d", [X2, (3,), (3, 1, 4, 4)], {}),
    ("spatially_separable_conv2d", [X2, (3, 1, 5, 4), (3,)], {}),
    ("spatially_separable_conv2d", [X2, (3, 1, 4, 4), (1, 3, 3, 4)], {}),
    ("spatially_separable_conv2d", [(6, 6, 4), (3,), (3,)], {}),
    ("spatially_separable_conv2d", [X2, (3,), (7,)], {}),
    ("spatially_separable_conv2d", [X2, (3, 1, 4, 4), (1, 3, 4, 4)], dict(strides=(1, 2), dilation_rate=2)),
    ("spatially_separable_conv2d", [X2, (3,), (3,)], dict(strides=0)),
    ("spatially_separable_conv2d", [X2, (3,), (3,)], dict(data_format="NHWC")),
    ("spatially_separable_conv2d", [X2, (3, 1, 4, 2), (3,)], dict(data_format="NHWC")),
    ("spatially_separable_conv2d", [X2, (3,), (3,)], dict(padding="causal", activation="relu")),
]


def _error(call):
    with pytest.raises(errors.FastconvError) as info:
        call()
    return info.value


def test_the_bad_cases_cover_every_op_family():
    families = {op.rstrip("123d").rstrip("_") for op, _, _ in BAD}
    assert {"conv", "conv1d_transpose", "conv2d_transpose", "conv3d_transpose", "depthwise_conv",
            "separable_conv", "spatially_separable_conv2d", "max_pool", "avg_pool", "global_max_pool",
            "global_avg_pool"} <= families | {op for op, _, _ in BAD}


@pytest.mark.parametrize("op, shapes, kw", BAD)
def test_bad_arguments_raise_the_ops_error(op, shapes, kw):
    expected = _error(lambda: getattr(fastconv, op)(*[np.zeros(s, np.float32) for s in shapes], **kw,
                                                    backend="reference"))
    got = _error(lambda: getattr(cost, op)(*shapes, **kw))
    assert type(got) is type(expected)
    assert str(got) == str(expected)


def test_dtype_errors_are_the_ops_class():
    expected = _error(lambda: fastconv.conv2d(np.zeros(X2, complex), np.zeros(K2)))
    for dtype in ("complex64", object, "U1", "nonsense", None):
        got = _error(lambda: cost.conv2d(X2, K2, dtype=dtype))
        assert type(got) is type(expected) is errors.InvalidDTypeError
        assert "`dtype`" in str(got)


@pytest.mark.parametrize("call, cls, pattern", [
    (lambda: cost.conv2d(X2, K2, use_bias=1), errors.InvalidArgumentError, r"conv2d: argument `use_bias` must be"),
    (lambda: cost.depthwise_conv2d(X2, (3, 3, 4, 1), use_bias=None), errors.InvalidArgumentError, r"`use_bias`"),
    (lambda: cost.conv2d((1, 6, -6, 4), K2), errors.InvalidShapeError,
     r"conv2d: argument `input_shape` must be a tuple of non-negative integers; got \(1, 6, -6, 4\)"),
    (lambda: cost.conv2d(X2, (3, 3.0, 4, 8)), errors.InvalidShapeError, r"`kernel_shape`"),
    (lambda: cost.max_pool1d(6), errors.InvalidShapeError, r"max_pool1d: argument `input_shape`.*got 6"),
    (lambda: cost.separable_conv1d((1, 6, 4), (3, 4, 1), "1x1"), errors.InvalidShapeError,
     r"`pointwise_kernel_shape`"),
    (lambda: cost.spatially_separable_conv2d(X2, (3,), (True,)), errors.InvalidShapeError, r"`row_kernel_shape`"),
    (lambda: cost.conv2d((2 ** 40,) * 4, (1, 1, 2 ** 40, 1)), errors.InvalidShapeError, r"too many elements"),
    (lambda: cost.total([]), errors.InvalidArgumentError, r"`records` is empty"),
    (lambda: cost.total([cost.max_pool1d((1, 4, 1)), 3]), errors.InvalidArgumentError, r"hold Cost records"),
    (lambda: cost.total(5), errors.InvalidArgumentError, r"iterable of Cost"),
])
def test_cost_only_arguments_are_checked(call, cls, pattern):
    with pytest.raises(cls, match=pattern):
        call()


def test_numpy_shapes_and_integers_are_accepted():
    x = np.zeros((1, 8, 8, 3))
    c = cost.conv2d(x.shape, np.array([3, 3, 3, 4]), strides=np.int64(2), padding="same")
    assert c == cost.conv2d((1, 8, 8, 3), (3, 3, 3, 4), strides=2, padding="same")
    assert all(type(d) is int for d in c.output_shape)


# --------------------------------------------------------------------------- property: op and cost agree

@st.composite
def _calls(draw):
    """A random, often invalid, call of a convolution or pooling op: (op, array shapes, keywords)."""
    family = draw(st.sampled_from(["conv", "transpose", "depthwise", "separable", "pool", "spatial"]))
    nsp = draw(st.integers(1, 3 if family in ("conv", "transpose", "pool") else 2))
    if family == "spatial":
        nsp = 2
    fmt = draw(st.sampled_from(["channels_last", "channels_first"]))
    spatial = tuple(draw(st.integers(1, 6)) for _ in range(nsp))
    c = draw(st.integers(1, 4))
    x = (1,) + (spatial + (c,) if fmt == "channels_last" else (c,) + spatial)
    ks = tuple(draw(st.integers(1, 4)) for _ in range(nsp))
    small = st.integers(1, 3)
    kw = dict(data_format=fmt, padding=draw(st.sampled_from(["valid", "same", "causal"] if nsp == 1
                                                            else ["valid", "same"])))
    strides = draw(st.one_of(small, st.tuples(*[small] * nsp)))
    if family == "pool":
        kind = draw(st.sampled_from(["max", "avg"]))
        kw.update(pool_size=ks, strides=draw(st.one_of(st.none(), st.just(strides))))
        return f"{kind}_pool{nsp}d", [x], kw
    dilation = st.integers(1, 2)
    kw.update(strides=strides, dilation_rate=draw(st.one_of(dilation, st.tuples(*[dilation] * nsp))))
    cin = draw(st.sampled_from([c, 1, 2]))
    m = draw(st.integers(1, 3))
    if family == "conv":
        g = draw(st.integers(1, 2))
        kw.update(groups=g)
        cin = draw(st.sampled_from([max(c // g, 1), cin]))
        return f"conv{nsp}d", [x, ks + (cin, m * g)], kw
    if family == "transpose":
        kw.update(output_padding=draw(st.one_of(st.none(), st.integers(0, 2))))
        if kw["padding"] == "causal":
            kw["padding"] = "same"
        return f"conv{nsp}d_transpose", [x, ks + (m, cin)], kw
    if kw["padding"] == "causal":
        kw["padding"] = "valid"
    if family == "depthwise":
        return f"depthwise_conv{nsp}d", [x, ks + (cin, m)], kw
    if family == "separable":
        mid = draw(st.sampled_from([cin * m, 3]))
        return f"separable_conv{nsp}d", [x, ks + (cin, m), (1,) * nsp + (mid, 2)], kw
    col = draw(st.sampled_from([(ks[0],), (ks[0], 1, cin, m)]))
    row = draw(st.sampled_from([(ks[1],), (1, ks[1], m if len(col) > 1 else c, 2)]))
    return "spatially_separable_conv2d", [x, col, row], kw


@settings(max_examples=300, deadline=None)
@given(_calls(), st.booleans())
def test_cost_agrees_with_the_op_on_random_calls(call, with_bias):
    op, shapes, kw = call
    arrays = [np.ones(s, np.float32) for s in shapes]
    try:
        y = getattr(fastconv, op)(*arrays, **kw, backend="reference")
    except errors.FastconvError as expected:
        got = _error(lambda: getattr(cost, op)(*shapes, **kw))
        assert (type(got), str(got)) == (type(expected), str(expected))
        return
    extra = {} if op in POOLS else dict(use_bias=with_bias)
    c = getattr(cost, op)(*shapes, **kw, **extra)
    assert c.output_shape == y.shape
    assert c.bytes_written == y.size * 4
    bias = y.shape[-1 if kw["data_format"] == "channels_last" else 1] if with_bias and op not in POOLS else 0
    assert c.params == sum(a.size for a in arrays[1:]) + bias
    if op in POOLS:  # brute force: a convolution of ones with a ones kernel counts each window's real elements
        nsp, fmt = len(shapes[0]) - 2, kw["data_format"]
        channels = shapes[0][-1 if fmt == "channels_last" else 1]
        one = arrays[0][..., :1] if fmt == "channels_last" else arrays[0][:, :1]
        counts = getattr(fastconv, f"conv{nsp}d")(
            one, np.ones(kw["pool_size"] + (1, 1), np.float32), strides=kw["strides"] or kw["pool_size"],
            padding=kw["padding"], data_format=fmt, backend="reference")
        assert c.flops == round(counts.sum()) * channels + (y.size if op.startswith("avg") else 0)


# --------------------------------------------------------------------------- the record

def test_records_add_up():
    a = cost.conv2d((1, 8, 8, 3), (3, 3, 3, 4), padding="same", use_bias=True)
    b = cost.max_pool2d(a.output_shape)
    s = a + b
    assert s.op == "total" and s.output_shape == b.output_shape
    for field in ("params", "macs", "flops", "bytes_read", "bytes_written"):
        assert getattr(s, field) == getattr(a, field) + getattr(b, field)
    assert s.arithmetic_intensity == pytest.approx(s.flops / s.bytes_moved)
    assert sum([a, b]) == s == cost.total([a, b]) == cost.total(iter([a, b]))
    assert cost.total([a]) == dataclasses.replace(a, op="total")
    with pytest.raises(TypeError):
        a + 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.macs = 0


def test_record_prints_on_one_short_line():
    c = cost.conv2d((1, 56, 56, 64), (3, 3, 64, 64), padding="same")
    text = str(c)
    assert "\n" not in text and len(text) < 130
    assert text.startswith("conv2d -> (1, 56, 56, 64): ")
    assert "115.6M MACs" in text and "231.2M FLOPs" in text and "36.9k params" in text
    assert "0 params" in str(cost.max_pool2d((1, 4, 4, 1)))
    assert "Cost(op='conv2d'" in repr(c)


def test_zero_bytes_give_zero_intensity():
    c = cost.Cost("empty", (0, 3), 0, 0, 0, 0, 0)
    assert c.arithmetic_intensity == 0.0 and "0.0 FLOP/B" in str(c)


def test_pooling_over_a_huge_axis_is_instant():
    # "same" pads one element after: 10**9 real reads, plus the division per output for avg.
    c = cost.avg_pool1d((1, 10 ** 9 + 1, 1), 2, padding="same")
    assert c.output_shape == (1, 5 * 10 ** 8 + 1, 1)
    assert c.flops == 10 ** 9 + 1 + c.output_shape[1]
