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
from fastconv.backends import reference

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_ENV_KEYS = ("NUMBA_ENABLE_CUDASIM", "FASTCONV_CUDA_SIMULATOR", "FASTCONV_CUDA_SUITE")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in _ENV_KEYS}
    env.update(extra)
    return env


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(**env), capture_output=True,
                          text=True, timeout=300)


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


_PTX_CHECK = r"""
import sys, types
from numba import cuda, types as t
from numba.cuda.cudadrv import nvvm
if not nvvm.is_available():
    print("SKIP NVVM, the CUDA compiler library, is not installed (pip install 'fastconv[cuda]')")
    sys.exit(0)
if not cuda.is_available():  # device functions are built for the current device: name one
    import numba.cuda.dispatcher as d
    d.get_current_device = lambda: types.SimpleNamespace(compute_capability=(8, 0))
from fastconv.backends import _cuda_kernels as K

def arr(T, nd, layout="C"):
    return t.Array(T, nd, layout)

i64, b1 = t.int64, t.boolean
for name, T in (("float32", t.float32), ("float64", t.float64)):
    E = K.elementwise(name)
    kernels = [
        (E["depthwise"], (arr(T, 5), arr(T, 5), arr(T, 1), b1, i64, arr(T, 5)) + (i64,) * 9),
        (E["pool"], (arr(T, 5), arr(T, 5)) + (i64,) * 10),
        (E["copy5"], (arr(T, 5, "A"), arr(T, 5, "A"))),
        (E["copy5"], (arr(t.int32, 5, "A"), arr(T, 5, "A"))),
        (E["bias_act"], (arr(T, 2), arr(T, 1), b1, i64, arr(T, 2))),
        (E["affine_act"], (arr(T, 2), arr(T, 1), arr(T, 1), i64, arr(T, 2))),
        (E["binary"], (arr(T, 1), arr(T, 1), i64, arr(T, 1))),
        (E["softmax_rows"], (arr(T, 2), arr(T, 2), i64)),
    ] + [(K.conv_gemm(name, *tiles)[0], (arr(T, 5), arr(T, 2), arr(T, 1), b1, i64, arr(T, 2)) + (i64,) * 18)
         for tiles in ((64, 64, 16, 4, 4), (128, 16, 16, 4, 2))]
    for kernel, sig in kernels:
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(8, 0))
        # float32 kernels compute in float32: a stray float64 constant would promote them
        assert name == "float64" or ".f64" not in ptx, (kernel.py_func.__name__, sig)
    cuda.compile_ptx(K.global_pool(name, 32, 8).py_func, (arr(T, 3), arr(T, 2), i64), cc=(8, 0))
print("compiled")
"""


def test_kernels_compile_for_a_gpu():
    """Every kernel, in both dtypes and the GPU tile shapes, compiles to PTX (sm_80): what the
    simulator cannot check (types, what the CUDA target supports). Needs NVVM, not a GPU."""
    r = _python(_PTX_CHECK)
    assert r.returncode == 0, r.stdout + r.stderr[-5000:]
    if r.stdout.startswith("SKIP"):
        pytest.skip(r.stdout[5:].strip())
    assert r.stdout.strip().endswith("compiled"), r.stdout


def test_auto_never_picks_cuda(monkeypatch):
    def refuse(*args):
        raise AssertionError("backend='auto' ran a cuda kernel")

    class FakeCuda:  # a usable, listed cuda backend with every kernel
        OPS = reference.OPS
        LISTED = True

    for op in FakeCuda.OPS:
        setattr(FakeCuda, op, staticmethod(refuse))
    monkeypatch.setitem(backends._loaded, "cuda", FakeCuda)
    # with the compiled backends gone too, auto's last resort must still be the reference
    for name in ("numba", "cython"):
        monkeypatch.setitem(backends._failed, name, ImportError("not here"))
        monkeypatch.delitem(backends._loaded, name, raising=False)
    assert fastconv.available_backends() == ["reference", "cuda"]
    x = np.ones((1, 3, 3, 1), np.float32)
    k = np.ones((1, 1, 1, 1), np.float32)
    calls = [(fastconv.conv2d, (x, k)), (fastconv.depthwise_conv2d, (x, k)), (fastconv.conv2d_transpose, (x, k)),
             (fastconv.max_pool2d, (x,)), (fastconv.avg_pool2d, (x,)), (fastconv.global_max_pool2d, (x,)),
             (fastconv.global_avg_pool2d, (x,))]
    for f, args in calls:  # one public op per kernel-contract operation
        f(*args)
        f(*args, backend="auto")
        with pytest.raises(AssertionError, match="ran a cuda kernel"):
            f(*args, backend="cuda")


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
