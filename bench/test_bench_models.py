"""Whole-model benchmarks: ``Model.predict`` at batch 1 and 32, and a new process's time to
its first prediction, with Keras/TensorFlow and ONNX Runtime in the same run when importable.

Run (see bench/test_bench_ops.py for the whole suite)::

    python -m pytest bench/test_bench_models.py --benchmark-only --benchmark-enable \\
        --benchmark-json=bench/results.json
    python bench/report.py bench/results.json

Models (bench/model_cases.py): the seed classifiers from their ``.keras`` files, MobileNetV2 and
ResNet50 from bench/models/*.json with seeded random weights. Peers (bench/model_peers.py) run
the same models with the same weights: Keras 3 ``model.predict`` ("keras-predict"), a compiled
``tf.function`` call ("tf-function") and ONNX Runtime on the tf2onnx conversion ("onnxruntime");
each is skipped, with the reason, when its packages are not importable. Benchmarks are grouped
by case ("<model> batch <n>", "<model> new process to first prediction"); ``extra_info`` holds
the implementation (``impl``), the model, the batch and the FLOPs (:mod:`fastconv.cost`
conventions) when ``fastconv.cost`` is importable.

"New process to first prediction" runs ``python -c "<import; load the model file; predict one
sample>"`` and times it with ``time.perf_counter`` around ``subprocess.run`` (reported through
``benchmark.pedantic``: 3 rounds after 1 warm-up round; ``extra_info["wall_s"]`` repeats them).
fastconv loads the ``.keras`` file or the architecture JSON plus a ``.weights.h5`` written from
the random weights; Keras loads a ``.keras`` file and ONNX Runtime a ``.onnx`` file, both made
from the same model.

Every model is checked before it is timed: fastconv's batch-1 prediction must equal the
reference backend's within 1e-4 (relative), and each peer's must equal fastconv's within 1e-3,
so a fast wrong kernel (or a peer running a different model) fails its benchmark.
"""

import subprocess
import sys
import time

import numpy as np
import pytest

import model_cases as mc
import model_peers as mp

BATCHES = (1, 32)
PEER_MODELS = list(mc.MODELS)  # the peers run every model, seed classifiers included
STARTUP_ROUNDS = 3

_checked = {}
_keras = {}


def _check_against_reference(name):
    """fastconv (backend="auto") against the reference backend, batch 1, once per model."""
    if name not in _checked:
        m, x = mc.model(name), mc.inputs(name, 1)
        y, ref = m.predict(x), m.predict(x, backend="reference")
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()),
                                   err_msg=f"{name}: fastconv differs from the reference backend")
        _checked[name] = True


def _flops(name, batch):
    f = mc.model_flops(name)
    return None if f is None else f * batch


def _info(benchmark, name, impl, batch, flops=None):
    benchmark.extra_info.update(impl=impl, model=name, batch=batch)
    if flops is not None:
        benchmark.extra_info["flops"] = flops


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", list(mc.MODELS))
def test_fastconv(benchmark, name, batch):
    _check_against_reference(name)
    m, x = mc.model(name), mc.inputs(name, batch)
    benchmark.group = f"{name} batch {batch}"
    _info(benchmark, name, "fastconv", batch, _flops(name, batch))
    benchmark(m.predict, x, batch_size=batch)


def _keras_model(name):
    if name not in _keras:
        kind, path = mc.MODELS[name]
        if kind == "keras":
            _keras[name] = mp.keras_model(path)
        else:
            with open(path) as fh:
                _keras[name] = mp.keras_model(fh.read(), mc.weights_by_layer(name))
    return _keras[name]


@pytest.mark.parametrize("impl", list(mp.PEERS))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", PEER_MODELS)
def test_peer(benchmark, name, batch, impl):
    try:
        call = mp.PEERS[impl](_keras_model(name), mc.inputs(name, batch))
    except mp.PeerUnavailable as exc:
        pytest.skip(str(exc))
    y = mc.model(name).predict(mc.inputs(name, batch))
    np.testing.assert_allclose(np.asarray(call()), y, rtol=1e-3, atol=1e-3 * float(np.abs(y).max()),
                               err_msg=f"{name}: {impl} computes something else than fastconv")
    benchmark.group = f"{name} batch {batch}"
    _info(benchmark, name, impl, batch, _flops(name, batch))
    benchmark(call)


@pytest.fixture(scope="session")
def startup_dir(tmp_path_factory):
    """A folder for the files fresh processes load: weights, converted models, inputs, outputs."""
    return tmp_path_factory.mktemp("startup")


def _startup(benchmark, name, impl, code, tmp, y_path, rtol):
    """Time ``python -c code`` (perf_counter around subprocess.run; one warm-up round, which
    also fills on-disk caches such as Numba's) and check what the process predicted."""
    walls = []

    def start():
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp)
        walls.append(time.perf_counter() - t)
        assert proc.returncode == 0, f"{name}: the new {impl} process failed:\n{proc.stderr[-3000:]}"

    benchmark.group = f"{name} new process to first prediction"
    _info(benchmark, name, impl, 1)
    benchmark.pedantic(start, rounds=STARTUP_ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info["wall_s"] = walls[1:]  # the same perf_counter times, warm-up excluded
    y = mc.model(name).predict(mc.inputs(name, 1))
    np.testing.assert_allclose(np.load(y_path), y, rtol=rtol, atol=rtol * float(np.abs(y).max()),
                               err_msg=f"{name}: the new {impl} process predicted something else")


def _x_file(name, tmp):
    path = str(tmp / f"{name}_x.npy")
    np.save(path, mc.inputs(name, 1))
    return path


@pytest.mark.parametrize("name", list(mc.MODELS))
def test_fastconv_startup(benchmark, name, startup_dir):
    """Wall time from starting ``python`` to the first prediction: import fastconv, load_model,
    predict one sample (a ``.keras`` file, or the architecture JSON plus a weights file holding
    the random weights)."""
    kind, arch = mc.MODELS[name]
    weights = None
    if kind == "config":
        weights = str(startup_dir / f"{name}.weights.h5")
        mc.save_keras_weights(name, weights)
    x_path, y_path = _x_file(name, startup_dir), str(startup_dir / f"{name}_fastconv_y.npy")
    code = ("import numpy as np, fastconv; "
            f"m = fastconv.load_model({arch!r}, weights={weights!r}); "
            f"np.save({y_path!r}, m.predict(np.load({x_path!r})))")
    # the fresh process computes exactly what this one does (the weights file round-trips)
    _startup(benchmark, name, "fastconv", code, startup_dir, y_path, rtol=1e-5)


@pytest.mark.parametrize("impl", list(mp.STARTUP_PEERS))
@pytest.mark.parametrize("name", PEER_MODELS)
def test_peer_startup(benchmark, name, impl, startup_dir):
    suffix, write = mp.STARTUP_PEERS[impl]
    x_path, y_path = _x_file(name, startup_dir), str(startup_dir / f"{name}_{impl}_y.npy")
    try:
        code = write(_keras_model(name), str(startup_dir / f"{name}{suffix}"), x_path, y_path)
    except mp.PeerUnavailable as exc:
        pytest.skip(str(exc))
    _startup(benchmark, name, impl, code, startup_dir, y_path, rtol=1e-3)
