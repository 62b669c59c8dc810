"""Activations: names, errors, use as ``activation=``, and Keras's axis for softmax."""

import numpy as np
import pytest

import fastconv
from fastconv import activations, errors

REQUIRED = ["linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "sigmoid", "hard_sigmoid",
            "silu", "swish", "hard_silu", "hard_swish", "tanh", "softmax", "softplus", "softsign",
            "exponential"]


def test_required_names_exist():
    assert set(REQUIRED) <= set(activations.names())


@pytest.mark.parametrize("name", activations.names())
def test_activation_keeps_dtype_and_does_not_modify_input(name):
    x = np.linspace(-3, 3, 13)
    before = x.copy()
    for dt in (np.float32, np.float64):
        y = activations.get(name)(x.astype(dt))
        assert y.dtype == dt and y.shape == x.shape
    np.testing.assert_array_equal(x, before)


def test_integer_input_becomes_float32():
    assert activations.relu(np.array([1, -1])).dtype == np.float32


def test_relu_options_follow_keras():
    x = np.array([-2.0, -0.5, 0.5, 2.0, 9.0])
    np.testing.assert_allclose(activations.relu(x, negative_slope=0.1, max_value=6.0, threshold=1.0),
                               [-0.3, -0.15, -0.05, 2.0, 6.0])


def test_gelu_approximate_differs_from_exact():
    x = np.array([1.5])
    assert abs(activations.gelu(x, approximate=True)[0] - activations.gelu(x)[0]) > 1e-5


@pytest.mark.parametrize("bad, pattern", [("rleu", "unknown activation 'rleu'"), (3, "must be None")])
def test_unknown_activation(bad, pattern):
    with pytest.raises(errors.InvalidArgumentError, match=pattern):
        activations.get(bad)


def test_callable_activation_is_applied_after():
    x = np.ones((1, 3, 3, 1), np.float32)
    y = fastconv.conv2d(x, np.ones((1, 1, 1, 1), np.float32), activation=lambda t: t * 10)
    assert np.all(y == 10)


def test_linear_and_none_are_the_identity():
    x = np.random.default_rng(0).standard_normal((1, 3, 3, 2))
    k = np.ones((1, 1, 2, 2))
    np.testing.assert_array_equal(fastconv.conv2d(x, k, activation="linear"), fastconv.conv2d(x, k))


def test_softmax_acts_on_the_last_axis_even_channels_first():
    # Keras applies a layer's activation to its output as laid out: with
    # channels_first, softmax normalises the last (width) axis, not the channels.
    x = np.random.default_rng(1).standard_normal((1, 2, 3, 4))
    y = fastconv.conv2d(x, np.ones((1, 1, 2, 5)), activation="softmax", data_format="channels_first")
    np.testing.assert_allclose(y.sum(axis=-1), 1.0)
    assert not np.allclose(y.sum(axis=1), 1.0)
