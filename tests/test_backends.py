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


def test_auto_takes_each_op_from_the_first_backend_that_has_it(monkeypatch):
    from fastconv.backends import cython, numba
    assert backends.resolve("auto", "max_pool") is numba.max_pool
    assert backends.resolve("auto", "conv") is numba.conv
    monkeypatch.setitem(backends._failed, "numba", ImportError("no numba"))
    monkeypatch.delitem(backends._loaded, "numba")
    assert backends.resolve("auto", "max_pool") is cython.max_pool
    assert backends.resolve("auto", "conv") is cython.conv
    # an op neither compiled backend has comes from the reference
    monkeypatch.setattr(cython, "OPS", cython.OPS - {"conv"})
    assert backends.resolve("auto", "conv") is backends.reference.conv


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
