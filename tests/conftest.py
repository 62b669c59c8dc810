# The fixture makers need TensorFlow; the tests never import it.
collect_ignore_glob = ["fixtures/make_*.py"]

import numpy as np
import pytest

import fastconv
from fastconv import backends

#: The kernel-contract operations each public op needs (the package's own table).
KERNELS = backends.OP_KERNELS


def backends_for(op):
    """Available backends implementing everything ``op`` needs (``auto`` always)."""
    return ["auto"] + [b for b in fastconv.available_backends() if backends.supports(b, op)]


def assert_close(actual, expected, rtol=1e-4, atol=1e-5):
    """Keras-fixture tolerance: ``rtol`` elementwise plus ``atol`` of the output's magnitude."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * max(scale, 1e-30))


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param
