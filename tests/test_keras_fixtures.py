"""Every op and activation against outputs made by real Keras (tests/fixtures/make_keras_fixtures.py)."""

import json
import os

import numpy as np
import pytest

import fastconv
from conftest import assert_close, backends_for

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "keras_ops.npz")
_data = np.load(FIXTURES)
CASES = json.loads(str(_data["index"]))


def _case_id(i):
    c = CASES[i]
    kw = ",".join(f"{k}={v}" for k, v in c["kwargs"].items() if v is not None)
    return f"{i}-{c['op']}-{kw}".replace(" ", "")


def _params():
    for i, case in enumerate(CASES):
        if case["op"].startswith("activations."):
            continue
        for backend in backends_for(case["op"]):
            yield pytest.param(i, backend, id=f"{_case_id(i)}-{backend}")


@pytest.mark.parametrize("i, backend", list(_params()))
def test_op_matches_keras(i, backend, dtype):
    case = CASES[i]
    x = _data[f"{i}/x"].astype(dtype)
    weights = [_data[f"{i}/w{j}"].astype(dtype) for j in range(case["weights"])]
    y = getattr(fastconv, case["op"])(x, *weights, backend=backend, **case["kwargs"])
    assert y.dtype == dtype
    assert_close(y, _data[f"{i}/y"])


@pytest.mark.parametrize("i", [i for i, c in enumerate(CASES) if c["op"].startswith("activations.")],
                         ids=lambda i: CASES[i]["op"])
def test_activation_matches_keras(i, dtype):
    name = CASES[i]["op"].split(".", 1)[1]
    x = _data[f"{i}/x"].astype(dtype)
    y = fastconv.activations.get(name)(x)
    assert y.dtype == dtype
    assert_close(y, _data[f"{i}/y"])


def test_fixture_grid_covers_every_public_op():
    ops = {c["op"] for c in CASES}
    from conftest import KERNELS
    assert set(KERNELS) <= ops
