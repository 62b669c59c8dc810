"""fastconv.dask: batch inference over dask arrays, threaded scheduler and a local cluster."""

import os
import signal
import sys
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import fastconv  # noqa: E402
import fastconv.dask as fdask  # noqa: E402
from fastconv import cli  # noqa: E402
from fastconv.errors import InvalidArgumentError, NotSupportedError  # noqa: E402

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "models")
MODEL = os.path.join(HERE, "sign_mnist.keras")


@pytest.fixture(scope="module")
def model():
    return fastconv.load_model(MODEL)


@pytest.fixture(scope="module")
def x():
    # the fixture's inputs, tiled and jittered to a few hundred samples
    base = np.load(os.path.join(HERE, "sign_mnist.npz"))["x_0"]
    rng = np.random.default_rng(0)
    reps = np.concatenate([base] * 50)
    return (reps + rng.normal(0, 0.05, reps.shape)).astype(np.float32)   # (300, 28, 28, 1)


@pytest.fixture(scope="module")
def expected(model, x):
    return model.predict(x)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1", silence_logs=40) as c:
        with distributed.Client(c, timeout="30s") as client:
            client.wait_for_workers(2, timeout=30)
            yield c, client


# ------------------------------------------------------------------ threaded scheduler

@pytest.mark.parametrize("source", ["path", "bytes", "model"])
def test_threaded_equals_in_process(source, model, x, expected):
    m = {"path": MODEL, "bytes": open(MODEL, "rb").read(), "model": model}[source]
    out = fdask.predict(m, da.from_array(x, chunks=(37, 28, 28, 1)), batch_size=16)
    assert out.shape == expected.shape and out.dtype == np.float32
    assert out.chunks[0] == da.from_array(x, chunks=(37, 28, 28, 1)).chunks[0]
    res = out.compute(scheduler="threads", num_workers=2)
    assert np.array_equal(res, expected)


def test_threaded_loads_once_per_process(x):
    data = open(MODEL, "rb").read() + b""   # same content as the path: same cache entry
    fdask.predict(MODEL, da.from_array(x, chunks=(50, 28, 28, 1))).compute(scheduler="threads")
    before = fdask.load_count()
    for m in (MODEL, data):
        fdask.predict(m, da.from_array(x, chunks=(20, 28, 28, 1))).compute(scheduler="threads")
    assert fdask.load_count() == before      # 15 chunks each, no new load


def test_other_axes_rechunked_and_dtype(x, expected):
    d = da.from_array(x, chunks=(100, 14, 28, 1))
    out = fdask.predict(MODEL, d)
    assert out.numblocks == (3, 1)
    assert np.array_equal(out.compute(scheduler="threads"), expected)
    # integer input is converted to float32 as Model.predict does
    xi = (x * 10).astype(np.int16)
    ref = fastconv.load_model(MODEL).predict(xi)
    assert np.array_equal(fdask.predict(MODEL, da.from_array(xi, chunks=100)).compute(), ref)


def test_empty_and_single_chunk(model, x, expected):
    assert fdask.predict(model, da.from_array(x[:0], chunks=1)).compute().shape == (0, expected.shape[1])
    assert np.array_equal(fdask.predict(model, da.from_array(x)).compute(scheduler="sync"), expected)


def test_errors(model, x):
    with pytest.raises(InvalidArgumentError, match="dask array"):
        fdask.predict(model, x)
    with pytest.raises(InvalidArgumentError, match="model"):
        fdask.predict(42, da.from_array(x))
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        fdask.predict("/nonexistent/model.keras", da.from_array(x))
    with pytest.raises(fastconv.InvalidShapeError):
        fdask.predict(model, da.zeros((10, 27, 28, 1)))
    with pytest.raises(NotSupportedError, match="inputs"):
        fdask.predict(os.path.join(HERE, "residual_two_io.keras"), da.zeros((4, 8)))
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        fdask.predict(model, da.from_array(x), batch_size=0)


def test_missing_dask_names_the_extra(monkeypatch, model, x):
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match=r"fastconv\[dask\]"):
        fdask.predict(model, x)


def test_thread_share(monkeypatch):
    import dask
    assert fdask._task_threads(3, 8) == 3
    with dask.config.set(num_workers=2):
        assert fdask._task_threads(None, 8) == 4
        assert fdask._task_threads(None, 1) == 1
    # the per-thread limit leaves the process-wide setting alone
    from fastconv._threads import thread_limit
    n = fastconv.get_num_threads()
    with thread_limit(1):
        assert fastconv.get_num_threads() == 1
    assert fastconv.get_num_threads() == n


# ------------------------------------------------------------------ a local cluster

def test_cluster_equals_in_process_and_loads_once(cluster, model, x, expected):
    _, client = cluster
    out = fdask.predict(MODEL, da.from_array(x, chunks=(25, 28, 28, 1)))   # 12 chunks
    res = client.compute(out).result(timeout=60)
    assert np.array_equal(res, expected)
    counts = client.run(fdask.load_count)
    assert len(counts) == 2 and set(counts.values()) <= {0, 1} and sum(counts.values()) >= 1
    # the same file again, as bytes: cached on the workers, no new load
    res = client.compute(fdask.predict(open(MODEL, "rb").read(), da.from_array(x, chunks=30))).result(timeout=60)
    assert np.array_equal(res, expected)
    assert client.run(fdask.load_count) == counts
    # a loaded Model is shipped pickled, once per worker
    res = client.compute(fdask.predict(model, da.from_array(x, chunks=30))).result(timeout=60)
    assert np.array_equal(res, expected)
    assert all(v <= counts[k] + 1 for k, v in client.run(fdask.load_count).items())


def test_cluster_worker_killed_mid_run(cluster, model, x, expected):
    _, client = cluster
    big = np.concatenate([x] * 4)              # 1200 samples in 120 chunks
    ref = np.concatenate([expected] * 4)
    out = client.persist(fdask.predict(model, da.from_array(big, chunks=(10, 28, 28, 1))))
    futures = distributed.futures_of(out)
    deadline = time.monotonic() + 30
    while not any(f.done() for f in futures) and time.monotonic() < deadline:
        time.sleep(0.01)
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    done_at_kill = sum(f.done() for f in futures)
    os.kill(pids[victim], signal.SIGKILL)      # the worker process dies at once, mid-run
    res = client.compute(out).result(timeout=90)
    assert res.shape == ref.shape
    assert np.array_equal(res, ref)
    assert done_at_kill < len(futures)         # the kill came mid-run
    deadline = time.monotonic() + 30          # the nanny restarts the worker for later tests
    while time.monotonic() < deadline:
        now = client.run(os.getpid)
        if len(now) == 2 and pids[victim] not in now.values():
            break
        time.sleep(0.2)
    assert len(now) == 2 and pids[victim] not in now.values()


# ------------------------------------------------------------------ the command line

def test_cli_scheduler_threads_and_cluster(tmp_path, cluster, x, expected, capsys, monkeypatch):
    np.save(tmp_path / "x.npy", x)
    for sched in ("threads", cluster[0].scheduler_address):
        out = tmp_path / "p.npy"
        rc = cli.main(["predict", MODEL, str(tmp_path / "x.npy"), "-o", str(out), "--scheduler", sched,
                       "--chunk-size", "64", "-q"])
        assert rc == 0, capsys.readouterr().err
        assert np.array_equal(np.load(out), expected)
    # scaled input: --scale applies lazily
    rc = cli.main(["predict", MODEL, str(tmp_path / "x.npy"), "-o", str(tmp_path / "s.npy"), "--scale", "1/2",
                   "--scheduler", "threads", "-q"])
    assert rc == 0
    assert np.array_equal(np.load(tmp_path / "s.npy"), fastconv.load_model(MODEL).predict(x * np.float32(0.5)))
    monkeypatch.setattr(cli, "_DASK_CONNECT_TIMEOUT", "1s")
    rc = cli.main(["predict", MODEL, str(tmp_path / "x.npy"), "--scheduler", "tcp://127.0.0.1:1", "-q"])
    assert rc == 1 and "scheduler" in capsys.readouterr().err


def test_cli_scheduler_images(tmp_path, capsys):
    pytest.importorskip("PIL")
    assert cli.main(["demo", "--save-images", str(tmp_path / "d"), "--count", "5"]) == 0
    capsys.readouterr()
    assert cli.main(["predict", "demo", str(tmp_path / "d"), "--scale", "1/255", "-q"]) == 0
    plain = capsys.readouterr().out
    assert cli.main(["predict", "demo", str(tmp_path / "d"), "--scale", "1/255", "-q", "--scheduler", "threads",
                     "--chunk-size", "2"]) == 0
    assert capsys.readouterr().out == plain
