"""The cuda backend: registry behaviour here, its kernels in a subprocess (tests/cuda_suite.py).

Numba reads ``NUMBA_ENABLE_CUDASIM`` once, when it is imported, and this process has
imported Numba without it; so the kernel tests run in a fresh Python: on the GPU when
this machine has one, else under Numba's CUDA simulator.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import backends, errors

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_ENV_KEYS = ("NUMBA_ENABLE_CUDASIM", "FASTCONV_CUDA_SIMULATOR", "FASTCONV_CUDA_SUITE")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in _ENV_KEYS}
    env.update(extra)
    return env


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(**env), capture_output=True,
                          text=True, timeout=120)


def _gpu():
    return "cuda" in fastconv.available_backends()


def test_cuda_suite():
    """Every op of the functional API on the cuda backend against Keras's fixtures and the
    reference backend, device arrays, the engine helpers: see tests/cuda_suite.py."""
    env = _env(FASTCONV_CUDA_SUITE="1")
    if not _gpu():
        env.update(NUMBA_ENABLE_CUDASIM="1", FASTCONV_CUDA_SIMULATOR="1")
    r = subprocess.run([sys.executable, "-m", "pytest", os.path.join(HERE, "cuda_suite.py"), "-q",
                        "-p", "no:cacheprovider"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = r.stdout[-6000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail
    summary = r.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    # all of them ran: nothing skipped or deselected, and the fixture subset is there
    assert passed and int(passed.group(1)) >= 200 and "skipped" not in summary, tail


def test_auto_never_picks_cuda(monkeypatch):
    class FakeCuda:  # a usable, listed cuda backend with every kernel
        OPS = backends.reference.OPS
        LISTED = True

    for op in FakeCuda.OPS:
        setattr(FakeCuda, op, object())
    monkeypatch.setitem(backends._loaded, "cuda", FakeCuda)
    assert fastconv.available_backends()[-1] == "cuda"
    assert "cuda" not in backends.AUTO
    for op in FakeCuda.OPS:
        assert backends.resolve("auto", op) is not getattr(FakeCuda, op)
        assert backends.resolve("cuda", op) is getattr(FakeCuda, op)


def test_unlisted_backend_is_usable_by_name_only(monkeypatch):
    class SimCuda:
        OPS = frozenset({"max_pool"})
        LISTED = False
        max_pool = object()

    monkeypatch.setitem(backends._loaded, "cuda", SimCuda)
    assert "cuda" not in fastconv.available_backends()
    assert backends.resolve("cuda", "max_pool") is SimCuda.max_pool


def test_no_gpu_is_a_clear_error():
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this checks the message on every machine.
    r = _python(
        "import numpy as np, fastconv\n"
        "assert 'cuda' not in fastconv.available_backends()\n"
        "try:\n"
        "    fastconv.max_pool2d(np.ones((1, 2, 2, 1)), backend='cuda')\n"
        "except fastconv.errors.BackendUnavailableError as e:\n"
        "    print(e)\n", CUDA_VISIBLE_DEVICES="")
    assert r.returncode == 0, r.stderr
    assert re.match(r"backend 'cuda' is not available on this machine: (no usable CUDA GPU: "
                    r"numba.cuda.is_available\(\) is False \(.+\)|numba.cuda cannot be imported)",
                    r.stdout), r.stdout


def test_simulator_needs_an_explicit_opt_in():
    code = ("import numpy as np, fastconv\n"
            "print(fastconv.available_backends())\n"
            "try:\n"
            "    print(fastconv.max_pool2d(np.arange(4.).reshape(1, 2, 2, 1), backend='cuda').ravel())\n"
            "except fastconv.errors.BackendUnavailableError as e:\n"
            "    print(e)\n")
    r = _python(code, NUMBA_ENABLE_CUDASIM="1")
    assert r.returncode == 0, r.stderr
    assert "'cuda'" not in r.stdout.splitlines()[0]
    assert "simulator is on (NUMBA_ENABLE_CUDASIM=1); set FASTCONV_CUDA_SIMULATOR=1" in r.stdout
    r = _python(code, NUMBA_ENABLE_CUDASIM="1", FASTCONV_CUDA_SIMULATOR="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["['numba', 'cython', 'reference']", "[3.]"]


def test_device_arrays_without_cuda_backend():
    class NotOurs:  # any object with the CUDA Array Interface counts as a device array
        __cuda_array_interface__ = {}
        shape, ndim, dtype = (1, 2, 2, 1), 4, np.dtype(np.float32)

    if _gpu():
        pytest.skip("this machine has a GPU: the backend exists (tests/cuda_suite.py covers device arrays)")
    with pytest.raises(errors.BackendUnavailableError, match="backend 'cuda' is not available"):
        fastconv.max_pool2d(NotOurs(), backend="cuda")


def test_cuda_extra_installs_numba_cuda():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert any(re.match(r"numba-cuda\[cu\d+\]", r) for r in extras["cuda"]), extras["cuda"]
