"""Bad input: one error hierarchy, messages naming the argument, expectation and value."""

import numpy as np
import pytest

import fastconv
from fastconv import errors

X2 = np.zeros((1, 6, 6, 4), np.float32)
K2 = np.zeros((3, 3, 4, 8), np.float32)


@pytest.mark.parametrize("call, cls, pattern", [
    # wrong rank
    (lambda: fastconv.conv2d(np.zeros((6, 6, 4)), K2), errors.InvalidShapeError,
     r"`x` must be a 4-D array \(batch, height, width, channels\); got shape \(6, 6, 4\)"),
    (lambda: fastconv.conv2d(X2, np.zeros((3, 3, 4))), errors.InvalidShapeError,
     r"`kernel` must be a 4-D array"),
    (lambda: fastconv.conv1d(np.zeros((1, 2, 3, 4)), np.zeros((3, 4, 2))), errors.InvalidShapeError,
     r"conv1d: argument `x` must be a 3-D array"),
    (lambda: fastconv.max_pool3d(X2), errors.InvalidShapeError, r"`x` must be a 5-D array"),
    (lambda: fastconv.conv2d(np.zeros((1, 6, 6, 4)), K2, data_format="channels_first"),
     errors.InvalidShapeError, r"kernel expects 4 input channels.*x has 6 channels"),
    # channels
    (lambda: fastconv.conv2d(X2, np.zeros((3, 3, 3, 8))), errors.InvalidShapeError,
     r"kernel expects 3 input channels.*x has 4 channels"),
    (lambda: fastconv.depthwise_conv2d(X2, np.zeros((3, 3, 3, 1))), errors.InvalidShapeError,
     r"`kernel` expects 3 input channels.*x has 4 channels"),
    (lambda: fastconv.conv2d_transpose(X2, np.zeros((3, 3, 8, 3))), errors.InvalidShapeError,
     r"kernel expects 3 input channels"),
    (lambda: fastconv.separable_conv2d(X2, np.zeros((3, 3, 4, 1)), np.zeros((1, 1, 5, 2))),
     errors.InvalidShapeError, r"`pointwise_kernel` must have shape \(1, 1, 4, '<filters>'\)"),
    (lambda: fastconv.conv2d(X2, K2, np.zeros(7)), errors.InvalidShapeError,
     r"`bias` must have shape \(8,\).*got shape \(7,\)"),
    # groups
    (lambda: fastconv.conv2d(X2, np.zeros((3, 3, 1, 8)), groups=3), errors.InvalidArgumentError,
     r"`groups` \(3\) must divide the input channels; x has 4 channels"),
    (lambda: fastconv.conv2d(X2, np.zeros((3, 3, 2, 7)), groups=2), errors.InvalidArgumentError,
     r"`groups` \(2\) must divide the filters; kernel has 7 filters"),
    (lambda: fastconv.conv2d(X2, K2, groups=0), errors.InvalidArgumentError, r"`groups` must be a positive"),
    # strides, dilation, pool sizes
    (lambda: fastconv.conv2d(X2, K2, strides=0), errors.InvalidArgumentError,
     r"`strides` must be a positive integer or a tuple of 2 positive integers; got 0"),
    (lambda: fastconv.conv2d(X2, K2, strides=(1, -1)), errors.InvalidArgumentError, r"`strides`.*\(1, -1\)"),
    (lambda: fastconv.conv2d(X2, K2, strides=(1, 1, 1)), errors.InvalidArgumentError, r"tuple of 2"),
    (lambda: fastconv.conv2d(X2, K2, strides=1.5), errors.InvalidArgumentError, r"`strides`.*1.5"),
    (lambda: fastconv.conv2d(X2, K2, dilation_rate=0), errors.InvalidArgumentError, r"`dilation_rate`"),
    (lambda: fastconv.conv2d(X2, K2, dilation_rate=10 ** 30, padding="same"), errors.InvalidArgumentError,
     r"`dilation_rate` must be below 2\*\*31"),
    (lambda: fastconv.max_pool2d(X2, pool_size=0), errors.InvalidArgumentError, r"`pool_size`"),
    (lambda: fastconv.avg_pool1d(np.zeros((1, 5, 2)), 2, strides=-1), errors.InvalidArgumentError,
     r"avg_pool1d: argument `strides`"),
    (lambda: fastconv.conv2d(X2, K2, strides=2, dilation_rate=2), errors.InvalidArgumentError,
     r"`strides > 1` is not supported together with `dilation_rate > 1`"),
    (lambda: fastconv.conv1d_transpose(np.zeros((1, 5, 2)), np.zeros((3, 2, 2)), strides=2,
                                       dilation_rate=2), errors.InvalidArgumentError, r"dilation_rate > 1"),
    (lambda: fastconv.conv2d_transpose(X2, np.zeros((3, 3, 2, 4)), strides=2, output_padding=2),
     errors.InvalidArgumentError, r"`output_padding` must be strictly less than the matching stride"),
    # kernel larger than the (padded) input; empty output
    (lambda: fastconv.conv2d(X2, np.zeros((7, 3, 4, 8))), errors.InvalidShapeError,
     r"kernel \(size 7, dilated to 7\) is larger than the input \(size 6\) along spatial axis 0"),
    (lambda: fastconv.conv1d(np.zeros((1, 6, 4)), np.zeros((3, 4, 2)), dilation_rate=3),
     errors.InvalidShapeError, r"size 3, dilated to 7"),
    (lambda: fastconv.max_pool2d(X2, pool_size=(2, 7)), errors.InvalidShapeError,
     r"pool window \(size 7.*larger than the input \(size 6\) along spatial axis 1"),
    (lambda: fastconv.conv1d_transpose(np.zeros((1, 1, 2)), np.zeros((2, 2, 2)), padding="same",
                                       output_padding=0), errors.InvalidShapeError, r"output would be empty"),
    (lambda: fastconv.conv2d(np.zeros((1, 0, 6, 4)), K2, padding="same"), errors.InvalidShapeError,
     r"size 0 along spatial axis 0"),
    (lambda: fastconv.conv2d(X2, np.zeros((0, 3, 4, 8))), errors.InvalidShapeError, r"zero-size"),
    # unknown names
    (lambda: fastconv.conv2d(X2, K2, padding="full"), errors.InvalidArgumentError,
     r"`padding` must be one of 'valid', 'same', or 2 \(before, after\) pairs .*; got 'full'"),
    (lambda: fastconv.conv2d(X2, K2, padding=((1, 1), (1,))), errors.InvalidArgumentError,
     r"`padding` must be .* 2 \(before, after\) pairs"),
    (lambda: fastconv.conv2d(X2, K2, padding=((1, 1), (1, -1))), errors.InvalidArgumentError, r"`padding`"),
    (lambda: fastconv.conv2d(X2, np.zeros((9, 3, 4, 8)), padding=((1, 1), (0, 0))), errors.InvalidShapeError,
     r"larger than the padded input \(size 6 \+ 1 \+ 1\)"),
    (lambda: fastconv.conv2d_transpose(X2, np.zeros((3, 3, 2, 4)), padding=((1, 1), (1, 1))),
     errors.InvalidArgumentError, r"`padding` must be one of 'valid', 'same'; got"),
    (lambda: fastconv.conv2d(X2, K2, padding="causal"), errors.InvalidArgumentError, r"got 'causal'"),
    (lambda: fastconv.conv2d(X2, K2, data_format="NHWC"), errors.InvalidArgumentError,
     r"`data_format` must be 'channels_last' or 'channels_first'; got 'NHWC'"),
    (lambda: fastconv.conv2d(X2, K2, activation="rleu"), errors.InvalidArgumentError,
     r"unknown activation 'rleu'; expected one of .*relu"),
    (lambda: fastconv.conv2d(X2, K2, activation=3), errors.InvalidArgumentError, r"`activation` must be"),
    (lambda: fastconv.conv2d(X2, K2, backend="tensorflow"), errors.BackendError,
     r"`backend` must be 'auto' or one of .*'reference'.*got 'tensorflow'"),
    (lambda: fastconv.max_pool2d(X2, backend=None or "gpu"), errors.BackendError, r"got 'gpu'"),
    (lambda: fastconv.global_avg_pool2d(X2, keepdims="yes"), errors.InvalidArgumentError, r"`keepdims`"),
    # dtypes
    (lambda: fastconv.conv2d(X2.astype(complex), K2), errors.InvalidDTypeError,
     r"`x` must be a real numeric array.*got dtype complex128"),
    (lambda: fastconv.conv2d(X2, K2.astype(object)), errors.InvalidDTypeError, r"`kernel`.*dtype object"),
    (lambda: fastconv.max_pool1d(np.array([[["a"]]])), errors.InvalidDTypeError, r"dtype <U1"),
    (lambda: fastconv.conv1d([[[1.0], [2.0, 3.0]]], np.zeros((1, 1, 1))), errors.InvalidDTypeError,
     r"`x` cannot be read as a numeric array"),
])
def test_bad_input_is_named(call, cls, pattern):
    with pytest.raises(cls, match=pattern):
        call()


@pytest.mark.parametrize("call, cls, pattern", [
    # the same shapes and values as a good call, so that a remembered geometry would match if
    # the key ignored the arguments' types
    (lambda: fastconv.conv2d(X2, K2, strides=True), errors.InvalidArgumentError, r"`strides`.*True"),
    (lambda: fastconv.conv2d(X2, K2, strides=(1, True)), errors.InvalidArgumentError, r"`strides`"),
    (lambda: fastconv.max_pool2d(X2, pool_size=(2, True)), errors.InvalidArgumentError, r"`pool_size`"),
    (lambda: fastconv.global_max_pool2d(X2, keepdims=1), errors.InvalidArgumentError, r"`keepdims`"),
    (lambda: fastconv.conv2d(X2.astype(np.complex64), K2), errors.InvalidDTypeError, r"`x`.*complex64"),
])
def test_remembered_geometry_never_skips_a_check(call, cls, pattern):
    # good calls of these shapes first: their checked geometry is remembered (ops._args.remembered)
    fastconv.conv2d(X2, K2, strides=1)
    fastconv.conv2d(X2, K2, strides=(1, 1))
    fastconv.max_pool2d(X2, pool_size=(2, 1))
    fastconv.global_max_pool2d(X2, keepdims=False)
    with pytest.raises(cls, match=pattern):
        call()


def test_remembered_geometry_gives_the_same_results():
    from fastconv.ops import _args
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 9, 8, 4)), rng.standard_normal((3, 3, 4, 5)), rng.standard_normal(5)
    calls = [
        lambda: fastconv.conv2d(x, w, b, padding="same", activation="relu"),
        lambda: fastconv.conv2d(x.astype(np.float32), w, b, strides=2),
        lambda: fastconv.conv2d(np.moveaxis(x, -1, 1), w, data_format="channels_first", padding=((1, 0), (2, 1))),
        lambda: fastconv.conv2d(x[:, ::2], w),                  # a strided view, not contiguous
        lambda: fastconv.conv2d(x.tolist(), w.tolist()),        # lists: checked every time
        lambda: fastconv.depthwise_conv2d(x, w[..., :2], None, padding="same"),
        lambda: fastconv.separable_conv2d(x, w[..., :1], w[:1, :1, :, :3], padding="same"),
        lambda: fastconv.conv2d_transpose(x, np.swapaxes(w, 2, 3), strides=2, padding="same"),
        lambda: fastconv.max_pool2d(x, 3, 2, padding="same"),
        lambda: fastconv.avg_pool2d(x.astype(np.int32), 2),
        lambda: fastconv.global_avg_pool2d(x, keepdims=True),
    ]
    _args._MEMO.clear()
    first = [c() for c in calls]
    assert _args._MEMO                                           # remembered...
    for got, want in zip([c() for c in calls], first):          # ...and used: the same results
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_error_classes_are_builtin_subclasses():
    assert issubclass(errors.InvalidArgumentError, ValueError)
    assert issubclass(errors.InvalidShapeError, ValueError)
    assert issubclass(errors.InvalidDTypeError, TypeError)
    assert issubclass(errors.BackendError, ValueError)
    for cls in (errors.InvalidArgumentError, errors.InvalidDTypeError, errors.BackendError,
                errors.NotSupportedError):
        assert issubclass(cls, errors.FastconvError)


def test_depthwise_accepts_strides_with_dilation_like_keras():
    y = fastconv.depthwise_conv2d(np.ones((1, 9, 9, 2)), np.ones((3, 3, 2, 1)), strides=2, dilation_rate=2)
    assert y.shape == (1, 3, 3, 2)
    assert np.all(y == 9)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.float16])
def test_integer_bool_and_half_inputs_compute_in_float32(dtype):
    x = np.ones((1, 4, 4, 2), dtype)
    y = fastconv.conv2d(x, np.ones((2, 2, 2, 3), dtype))
    assert y.dtype == np.float32
    assert np.all(y == 8)
    assert fastconv.max_pool2d(x).dtype == np.float32


def test_float64_is_kept_and_promotes():
    x64 = np.ones((1, 4, 4, 2))
    assert fastconv.conv2d(x64, np.ones((2, 2, 2, 3), np.float32)).dtype == np.float64
    assert fastconv.conv2d(x64.astype(np.float32), np.ones((2, 2, 2, 3))).dtype == np.float64
    assert fastconv.avg_pool2d(x64).dtype == np.float64


def test_float32_is_computed_in_float32():
    # 1 + 1e-8 is 1 in float32: a float64 computation would leak through.
    x = np.full((1, 1, 2, 1), 1.0, np.float32)
    k = np.array([1.0, 1e-8], np.float32).reshape(1, 2, 1, 1)
    assert fastconv.conv2d(x, k)[0, 0, 0, 0] == np.float32(1.0)


def _operands():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 7, 6, 4)).astype(np.float32)
    k = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)
    return x, k


@pytest.mark.parametrize("backend", fastconv.available_backends())
def test_non_contiguous_and_fortran_inputs(backend):
    x, k = _operands()
    ops = [(fastconv.conv2d, (k,), {"padding": "same"}), (fastconv.max_pool2d, (), {"padding": "same"}),
           (fastconv.avg_pool2d, (), {"pool_size": 3, "strides": 1, "padding": "same"})]
    for f, extra, kw in ops:
        if f is fastconv.conv2d and backend != "reference" and "conv" not in fastconv.backends.backend_ops(backend):
            continue
        expected = f(x, *extra, **kw, backend=backend)
        big = np.zeros((2, 14, 6, 8), np.float32)
        big[:, ::2, :, ::2] = x
        strided = big[:, ::2, :, ::2]
        assert not strided.flags.c_contiguous
        np.testing.assert_array_equal(f(strided, *extra, **kw, backend=backend), expected)
        fortran = np.asfortranarray(x)
        np.testing.assert_array_equal(f(fortran, *[np.asfortranarray(e) for e in extra], **kw, backend=backend),
                                      expected)


def test_inputs_are_never_modified():
    x, k = _operands()
    b = np.arange(5, dtype=np.float32)
    arrays = [x, k, b]
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False
    fastconv.conv2d(x, k, b, padding="same", activation="relu")
    fastconv.conv2d(np.moveaxis(x, -1, 1), k, b, activation="softmax", data_format="channels_first")
    fastconv.conv2d_transpose(x, np.ascontiguousarray(k.transpose(0, 1, 3, 2)), b, strides=2)
    fastconv.depthwise_conv2d(x, k[..., :1], activation="relu")
    fastconv.separable_conv2d(x, k[..., :1], np.ones((1, 1, 4, 5), np.float32), b, activation="relu")
    for backend in fastconv.available_backends():
        fastconv.max_pool2d(x, 3, 1, "same", backend=backend)
        fastconv.avg_pool2d(x, 3, 1, "same", backend=backend)
    fastconv.global_avg_pool2d(x)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)


def test_result_does_not_alias_input():
    x = np.ones((1, 3, 3, 2), np.float32)
    y = fastconv.conv2d(x, np.ones((1, 1, 2, 2), np.float32) / 2)
    assert not np.shares_memory(x, y)
    assert y.flags.c_contiguous


def test_empty_batch():
    y = fastconv.conv2d(np.zeros((0, 5, 5, 2)), np.ones((3, 3, 2, 4)), padding="same")
    assert y.shape == (0, 5, 5, 4)
