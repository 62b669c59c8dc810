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
    monkeypatch.setenv("NUMBA_NUM_THREADS", "3")
    assert fastconv.get_num_threads() == 3


def test_max_pool_propagates_nan_on_every_backend():
    x = np.zeros((1, 4, 4, 2), np.float32)
    x[0, 1, 1, 0] = np.nan
    for backend in fastconv.available_backends():
        y = fastconv.max_pool2d(x, backend=backend)
        assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 0, 1]), backend
        assert not np.isnan(y[0, 1, 1, 0])
