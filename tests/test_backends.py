"""Backend registry, dispatch and threads."""

import numpy as np
import pytest

import fastconv
from fastconv import backends, errors


def test_reference_is_always_available():
    assert "reference" in fastconv.available_backends()
    assert backends.backend_ops("reference") == backends.reference.OPS


def test_compiled_cython_backend_is_built():
    # pip install builds the Cython/OpenMP extension from source; a broken build fails here.
    assert "cython" in fastconv.available_backends(), backends._failed.get("cython")


def _auto_backend(op, args):
    return fastconv.explain(op, *args).calls[-1].backend


def test_auto_follows_its_rule_and_skips_missing_backends(monkeypatch):
    from fastconv.backends import _auto, cython
    x, w = np.ones((1, 12, 12, 16)), np.ones((3, 3, 16, 8))
    for first in ("numba", "cython"):
        monkeypatch.setitem(_auto.RULE, "conv/dense", (first, "numba" if first == "cython" else "cython"))
        assert _auto_backend("conv2d", (x, w)) == first
    monkeypatch.setitem(_auto.RULE, "max_pool", ("cython", "numba"))
    assert _auto_backend("max_pool2d", (x,)) == "cython"
    # a backend that is not available is skipped
    monkeypatch.setitem(backends._failed, "cython", ImportError("not compiled"))
    monkeypatch.delitem(backends._loaded, "cython")
    assert _auto_backend("max_pool2d", (x,)) == "numba"
    assert _auto_backend("conv2d", (x, w)) == "numba"
    # an op no compiled backend has comes from the reference
    monkeypatch.setitem(backends._failed, "numba", ImportError("no numba"))
    monkeypatch.delitem(backends._loaded, "numba")
    assert _auto_backend("conv2d", (x, w)) == "reference"
    # the dispatcher runs what it chose
    np.testing.assert_allclose(fastconv.conv2d(x, w), fastconv.conv2d(x, w, backend="reference"))


def test_auto_shape_classes():
    from fastconv.backends import _auto
    cases = [("conv2d", (np.ones((1, 8, 8, 16)), np.ones((1, 1, 16, 8))), {}, "conv/pointwise"),
             ("conv2d", (np.ones((1, 8, 8, 3)), np.ones((3, 3, 3, 8))), {}, "conv/few_channels"),
             ("conv2d", (np.ones((1, 8, 8, 16)), np.ones((3, 3, 4, 8))), {"groups": 4}, "conv/grouped"),
             ("conv2d", (np.ones((1, 12, 12, 16)), np.ones((3, 3, 16, 8))), {}, "conv/dense"),
             ("conv2d", (np.ones((1, 9, 9, 16)), np.ones((3, 3, 16, 8))), {}, "conv/few_pixels"),
             ("conv1d", (np.ones((1, 4000, 1)), np.ones((255, 1, 1))), {"padding": "same"}, "conv/large_kernel"),
             ("depthwise_conv2d", (np.ones((1, 8, 8, 16)), np.ones((3, 3, 16, 1))), {}, "depthwise_conv/small"),
             ("depthwise_conv2d", (np.ones((1, 66, 66, 64)), np.ones((3, 3, 64, 1))), {}, "depthwise_conv/large"),
             ("conv2d_transpose", (np.ones((1, 8, 8, 16)), np.ones((3, 3, 8, 16))), {}, "conv_transpose"),
             ("global_avg_pool2d", (np.ones((1, 8, 8, 16)),), {}, "global_avg_pool")]
    for op, args, kw, cls in cases:
        calls = fastconv.explain(op, *args, **kw).calls
        assert calls[-1].chosen_by == f"auto rule for {cls!r}", (op, calls)
        assert calls[-1].backend == _auto.RULE[cls][0]


def test_backend_without_the_op_says_so(monkeypatch):
    from fastconv.backends import cython
    monkeypatch.setattr(cython, "OPS", cython.OPS - {"conv"})
    with pytest.raises(errors.NotSupportedError, match="backend 'cython' does not implement 'conv' yet"):
        fastconv.conv2d(np.ones((1, 3, 3, 1)), np.ones((1, 1, 1, 1)), backend="cython")


def test_unavailable_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(backends._failed, "cython", ImportError("not compiled"))
    monkeypatch.delitem(backends._loaded, "cython", raising=False)
    assert "cython" not in fastconv.available_backends()
    with pytest.raises(errors.BackendUnavailableError, match="'cython' is not available.*not compiled"):
        fastconv.max_pool2d(np.ones((1, 2, 2, 1)), backend="cython")
    # auto falls back to the next backend that has the op
    assert fastconv.max_pool2d(np.ones((1, 2, 2, 1)))[0, 0, 0, 0] == 1


@pytest.mark.parametrize("n", [1, 2])
def test_thread_count_does_not_change_results(n):
    x = np.random.default_rng(0).standard_normal((3, 17, 13, 5)).astype(np.float32)
    expected = fastconv.avg_pool2d(x, 3, 1, "same", backend="cython")
    fastconv.set_num_threads(n)
    try:
        assert fastconv.get_num_threads() == n
        np.testing.assert_array_equal(fastconv.avg_pool2d(x, 3, 1, "same", backend="cython"), expected)
    finally:
        fastconv.set_num_threads(None)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(errors.InvalidArgumentError, match="`n` must be a positive integer"):
        fastconv.set_num_threads(bad)


def test_num_threads_follows_environment(monkeypatch):
    from fastconv import _threads
    monkeypatch.setenv("NUMBA_NUM_THREADS", "3")
    _threads._default.cache_clear()  # read once per process, like Numba does
    try:
        assert fastconv.get_num_threads() == 3
    finally:
        _threads._default.cache_clear()


def test_max_pool_propagates_nan_on_every_backend():
    x = np.zeros((1, 4, 4, 2), np.float32)
    x[0, 1, 1, 0] = np.nan
    for backend in fastconv.available_backends():
        y = fastconv.max_pool2d(x, backend=backend)
        assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 0, 1]), backend
        assert not np.isnan(y[0, 1, 1, 0])


# every path the benchmark shapes reach, at small sizes: a batch computed whole must equal the
# same images computed in uneven sub-batches, bit for bit (a model's outputs then never depend on
# batch_size, and fastconv.dask's chunks give exactly what an in-process predict gives)
_SPLIT_CASES = [
    ("conv2d", (12, 12, 1), (3, 3, 1, 75), dict(padding="same", activation="relu")),
    ("conv2d", (12, 12, 3), (3, 3, 3, 32), dict(padding="same", strides=2)),
    ("conv2d", (12, 12, 64), (3, 3, 64, 64), dict(padding="same")),
    ("conv2d", (12, 12, 64), (3, 3, 64, 75), dict(padding="valid", activation="relu")),
    ("conv2d", (12, 12, 256), (1, 1, 256, 64), {}),
    ("conv2d", (7, 7, 128), (3, 3, 128, 96), dict(padding="same")),
    ("conv2d", (12, 12, 128), (3, 3, 4, 128), dict(padding="same", groups=32)),
    ("conv2d", (12, 12, 64), (3, 3, 16, 64), dict(padding="same", groups=4)),
    ("conv1d", (40, 16), (5, 16, 24), dict(padding="causal", dilation_rate=2)),
    ("conv3d", (6, 8, 8, 1), (3, 3, 3, 1, 16), {}),
    ("depthwise_conv2d", (12, 12, 32), (3, 3, 32, 1), dict(padding="same")),
    ("depthwise_conv2d", (13, 13, 32), (3, 3, 32, 2), dict(padding="same", strides=2)),
    ("conv2d_transpose", (6, 6, 32), (3, 3, 64, 32), dict(padding="same", strides=2)),
    ("conv2d_transpose", (6, 6, 8), (4, 4, 16, 8), dict(padding="valid", strides=2)),
    ("max_pool2d", (12, 12, 32), None, dict(pool_size=3, strides=2)),
    ("avg_pool2d", (12, 12, 32), None, dict(pool_size=3, strides=1, padding="same")),
    ("global_avg_pool2d", (12, 12, 32), None, {}),
    ("global_max_pool2d", (12, 12, 32), None, {}),
]


@pytest.mark.parametrize("backend", ["numba", "cython", "reference"])
@pytest.mark.parametrize("op, x_shape, w_shape, kwargs", _SPLIT_CASES,
                         ids=[f"{c[0]}-{'x'.join(map(str, c[1]))}-{i}" for i, c in enumerate(_SPLIT_CASES)])
def test_results_do_not_depend_on_the_batch_split(backend, op, x_shape, w_shape, kwargs):
    rng = np.random.default_rng(0)
    x = rng.random((23,) + x_shape, np.float32) - 0.5
    args = [x] + ([rng.random(w_shape, np.float32) - 0.5] if w_shape else [])
    f = getattr(fastconv, op)
    whole = f(*args, backend=backend, **kwargs)
    parts = np.concatenate([f(x[i:i + 5], *args[1:], backend=backend, **kwargs) for i in range(0, 23, 5)])
    np.testing.assert_array_equal(whole, parts)


@pytest.mark.parametrize("backend", ["numba", "cython", "reference"])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_separable_does_not_depend_on_the_batch_split(backend, multiplier):
    # numba's fused kernel cuts the rows of the whole batch into tasks
    rng = np.random.default_rng(0)
    x = rng.random((23, 20, 20, 64), np.float32) - 0.5
    dk = rng.random((3, 3, 64, multiplier), np.float32) - 0.5
    pk = rng.random((1, 1, 64 * multiplier, 48), np.float32) - 0.5
    kw = dict(padding="same", activation="relu", backend=backend)
    whole = fastconv.separable_conv2d(x, dk, pk, np.ones(48, np.float32), **kw)
    parts = np.concatenate([fastconv.separable_conv2d(x[i:i + 5], dk, pk, np.ones(48, np.float32), **kw)
                            for i in range(0, 23, 5)])
    np.testing.assert_array_equal(whole, parts)


# empty operands (no channels, filters or multiplier) give the reference's result on every
# backend: an empty output, or the bias alone where no input channel contributes
_EMPTY_CASES = [
    ("conv2d", [(1, 5, 5, 0), (3, 3, 0, 4), (4,)], {}),
    ("conv2d", [(1, 5, 5, 3), (3, 3, 3, 0)], {}),
    ("conv2d", [(1, 5, 5, 4), (3, 3, 2, 0)], dict(groups=2)),
    ("depthwise_conv2d", [(1, 5, 5, 0), (3, 3, 0, 1)], {}),
    ("depthwise_conv2d", [(1, 5, 5, 3), (3, 3, 3, 0)], {}),
    ("separable_conv2d", [(1, 5, 5, 0), (3, 3, 0, 1), (1, 1, 0, 4), (4,)], {}),
    ("separable_conv2d", [(1, 5, 5, 3), (3, 3, 3, 1), (1, 1, 3, 0)], {}),
    ("conv2d_transpose", [(1, 5, 5, 0), (3, 3, 4, 0), (4,)], dict(strides=2)),
    ("conv2d_transpose", [(1, 5, 5, 3), (3, 3, 0, 3)], dict(strides=2)),
    ("max_pool2d", [(1, 4, 4, 0)], {}),
    ("global_avg_pool2d", [(1, 4, 4, 0)], {}),
    ("global_max_pool2d", [(2, 4, 4, 0)], {}),
]


@pytest.mark.parametrize("backend", ["numba", "cython", "auto"])
@pytest.mark.parametrize("op, shapes, kwargs", _EMPTY_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(_EMPTY_CASES)])
def test_empty_operands_match_the_reference(backend, op, shapes, kwargs):
    rng = np.random.default_rng(0)
    args = [rng.random(s, np.float32) + 0.5 for s in shapes]
    f = getattr(fastconv, op)
    if "pool" not in op:
        kwargs = dict(kwargs, activation="relu")
    expected = f(*args, backend="reference", **kwargs)
    got = f(*args, backend=backend, **kwargs)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
