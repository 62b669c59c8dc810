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


# ------------------------------------------------------------------ streaming inputs larger than memory

class CountingSource(fdask.NpySource):
    """An NpySource that records each read (rows and order) and the chunks read but not yet written."""

    def __init__(self, path, **kw):
        super().__init__(path, **kw)
        self.reads, self.written, self.most_pending = [], 0, 0

    def read(self, start, stop):
        self.reads.append((start, stop))
        self.most_pending = max(self.most_pending, len(self.reads) - self.written)
        return super().read(start, stop)

    def wrote(self, rows):
        self.written += 1


def _check_reads(reads, n, chunk):
    assert sorted(reads) == [(a, min(a + chunk, n)) for a in range(0, n, chunk)]   # each row once


def test_stream_npy_threaded(tmp_path, x, expected):
    np.save(tmp_path / "x.npy", x)
    src = CountingSource(tmp_path / "x.npy")
    res = fdask.predict_stream(MODEL, src, chunk_size=64, batch_size=16, progress=src.wrote)
    assert res.dtype == np.float32 and np.array_equal(res, expected)
    _check_reads(src.reads, len(x), 64)
    assert src.written == 5
    # into a .npy written through a memory map; the input file is untouched
    before = (tmp_path / "x.npy").read_bytes()
    out = fdask.predict_npy(MODEL, tmp_path / "x.npy", tmp_path / "y.npy", chunk_size=100)
    assert isinstance(out, np.memmap)
    del out
    assert np.array_equal(np.load(tmp_path / "y.npy"), expected)
    assert (tmp_path / "x.npy").read_bytes() == before
    # scaled as read; into a given array
    target = np.zeros_like(expected)
    got = fdask.predict_npy(MODEL, tmp_path / "x.npy", target, scale=0.5, chunk_size=128)
    assert got is target and np.array_equal(target, fastconv.load_model(MODEL).predict(x * np.float32(0.5)))


def test_stream_graph_holds_paths_not_data(tmp_path, x):
    # the threaded graph's read tasks carry the source (a path), not its rows
    import pickle
    np.save(tmp_path / "x.npy", x)
    src = fdask.NpySource(tmp_path / "x.npy")
    assert len(pickle.dumps(src)) < 1000 < x.nbytes
    assert np.array_equal(pickle.loads(pickle.dumps(src)).read(5, 9), x[5:9])


def test_stream_errors(tmp_path, x, expected):
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(InvalidArgumentError, match="chunk_size"):
        fdask.predict_npy(MODEL, tmp_path / "x.npy", chunk_size=0)
    with pytest.raises(InvalidArgumentError, match="max_in_flight"):
        fdask.predict_npy(MODEL, tmp_path / "x.npy", max_in_flight=0)
    with pytest.raises(InvalidArgumentError, match=r"`out` must be a float32 array of shape \(300, 24\)"):
        fdask.predict_npy(MODEL, tmp_path / "x.npy", np.zeros((3, 24), np.float32))
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        fdask.predict_npy(MODEL, tmp_path / "bad.npy")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(InvalidArgumentError, match="cannot be scaled"):
        fdask.predict_npy(MODEL, tmp_path / "s.npy", scale=2.0)


def test_stream_cluster_bounded_and_loads_once(tmp_path, cluster, x, expected):
    _, client = cluster
    np.save(tmp_path / "x.npy", x)
    src = CountingSource(tmp_path / "x.npy")
    before = client.run(fdask.load_count)
    res = fdask.predict_stream(MODEL, src, client=client, chunk_size=20, max_in_flight=3, progress=src.wrote)
    assert np.array_equal(res, expected)
    _check_reads(src.reads, len(x), 20)
    assert src.written == 15 and src.most_pending <= 3     # never more than 3 chunks on their way
    after = client.run(fdask.load_count)
    assert all(after[k] - before.get(k, 0) <= 1 for k in after)


def test_stream_cluster_worker_killed(tmp_path, cluster, x, expected):
    _, client = cluster
    big = np.concatenate([x] * 4)
    np.save(tmp_path / "x.npy", big)
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    state = {"written": 0, "killed_at": None}

    def progress(rows):
        state["written"] += 1
        if state["written"] == 3:
            state["killed_at"] = state["written"]
            os.kill(pids[victim], signal.SIGKILL)

    res = fdask.predict_npy(MODEL, tmp_path / "x.npy", client=client, chunk_size=10, max_in_flight=8,
                            progress=progress)
    assert state["killed_at"] == 3 and state["written"] == 120
    assert np.array_equal(res, np.concatenate([expected] * 4))
    deadline = time.monotonic() + 30          # the nanny restarts the worker for later tests
    while time.monotonic() < deadline:
        now = client.run(os.getpid)
        if len(now) == 2 and pids[victim] not in now.values():
            break
        time.sleep(0.2)


def test_cli_scheduler_streams_npy_to_npy(tmp_path, cluster, x, expected, capsys):
    np.save(tmp_path / "x.npy", x)
    for sched in ("threads", cluster[0].scheduler_address):
        out = tmp_path / "p.npy"
        assert cli.main(["predict", MODEL, str(tmp_path / "x.npy"), "-o", str(out), "--scheduler", sched,
                         "--chunk-size", "50", "-q"]) == 0
        assert f"wrote {out}: (300, 24) float32" in capsys.readouterr().out
        assert np.array_equal(np.load(out), expected)
