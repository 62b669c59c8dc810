"""The worked examples and shapes from the seed documents (shared/seeds), exactly."""

import numpy as np
import pytest

import fastconv
from conftest import backends_for

IMAGE = np.array([[1, 0, -2, 1], [-1, 0, 1, 2], [0, 2, 1, 0], [1, 0, 0, 1]], np.float32)
KERNEL = np.array([[0, 1], [-1, 2]], np.float32)
SOBEL = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)


@pytest.mark.parametrize("backend", backends_for("conv2d"))
def test_4x4_image_2x2_kernel_is_cross_correlation(backend):
    y = fastconv.conv2d(IMAGE[None, :, :, None], KERNEL[:, :, None, None], backend=backend)[0, :, :, 0]
    # The seed's steps give the first row 1, 0, 4 and the second row starting 4, 1.
    assert y[0].tolist() == [1, 0, 4]
    assert y[1, :2].tolist() == [4, 1]
    # Every entry is the un-flipped window dot product (Keras cross-correlates).
    expected = [[np.sum(IMAGE[i:i + 2, j:j + 2] * KERNEL) for j in range(3)] for i in range(3)]
    assert y.tolist() == expected
    flipped = [[np.sum(IMAGE[i:i + 2, j:j + 2] * KERNEL[::-1, ::-1]) for j in range(3)] for i in range(3)]
    assert y.tolist() != flipped


@pytest.mark.parametrize("backend", backends_for("conv2d_transpose"))
def test_transposed_convolution_stride_1(backend):
    x = np.array([[0, 1], [2, 3]], np.float32)[None, :, :, None]
    k = np.array([[4, 1], [2, 3]], np.float32)[:, :, None, None]
    y = fastconv.conv2d_transpose(x, k, strides=1, backend=backend)[0, :, :, 0]
    assert y.tolist() == [[0, 4, 1], [8, 16, 6], [4, 12, 9]]


@pytest.mark.parametrize("backend", backends_for("conv2d_transpose"))
def test_transposed_convolution_stride_2(backend):
    x = np.array([[0, 1], [2, 3]], np.float32)[None, :, :, None]
    k = np.array([[1, 4], [2, 3]], np.float32)[:, :, None, None]
    y = fastconv.conv2d_transpose(x, k, strides=2, backend=backend)[0, :, :, 0]
    assert y.tolist() == [[0, 0, 1, 4], [0, 0, 2, 3], [2, 8, 3, 12], [4, 6, 6, 9]]


def test_sobel_factorisation():
    column, row = fastconv.factor_separable_kernel(SOBEL)
    assert column.tolist() == [1, 2, 1]
    assert row.tolist() == [-1, 0, 1]
    assert np.array_equal(np.outer(column, row), SOBEL)


def test_factorisation_refuses_rank_two_kernel():
    with pytest.raises(fastconv.InvalidArgumentError, match="rank 2, not 1"):
        fastconv.factor_separable_kernel([[1, 0], [0, 1]])


@pytest.mark.parametrize("backend", backends_for("spatially_separable_conv2d"))
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_sobel_separable_equals_full_convolution(backend, padding):
    rng = np.random.default_rng(0)
    img = rng.integers(-5, 6, size=(2, 5, 5, 3)).astype(np.float32)
    column, row = fastconv.factor_separable_kernel(SOBEL)
    sep = fastconv.spatially_separable_conv2d(img, column, row, padding=padding, backend=backend)
    full = fastconv.depthwise_conv2d(img, np.broadcast_to(SOBEL[:, :, None, None], (3, 3, 3, 1)),
                                     padding=padding, backend=backend)
    assert np.array_equal(sep, full)  # small integers: exact in float32
    # 5x5 image, valid: the seed's 15 column positions then 9 row positions.
    if padding == "valid":
        assert sep.shape == (2, 3, 3, 3)


@pytest.mark.parametrize("call, expected", [
    (lambda: fastconv.conv1d(np.zeros((4, 100, 1)), np.zeros((3, 1, 5))), (4, 98, 5)),
    (lambda: fastconv.conv2d(np.zeros((4, 32, 32, 3)), np.zeros((3, 3, 3, 16))), (4, 30, 30, 16)),
    (lambda: fastconv.conv3d(np.zeros((4, 32, 32, 32, 1)), np.zeros((3, 3, 3, 1, 16))), (4, 30, 30, 30, 16)),
    (lambda: fastconv.depthwise_conv2d(np.zeros((4, 32, 32, 3)), np.zeros((3, 3, 3, 1))), (4, 30, 30, 3)),
    (lambda: fastconv.conv2d_transpose(np.zeros((1, 16, 16, 32)), np.zeros((3, 3, 64, 32)), strides=2,
                                       padding="same"), (1, 32, 32, 64)),
    (lambda: fastconv.conv1d(np.zeros((1, 10, 32)), np.zeros((3, 32, 64)), dilation_rate=2), (1, 6, 64)),
], ids=["conv1d", "conv2d", "conv3d", "depthwise2d", "conv2d_transpose", "dilated_conv1d"])
def test_notebook_shapes(call, expected):
    assert call().shape == expected
