"""Batch inference on Dask: :func:`predict` runs a model over a dask array, on the
threaded scheduler or on a ``dask.distributed`` cluster.

Needs the ``dask`` extra: ``pip install "fastconv[dask]"`` (dask[array] and distributed).

How it works:

* The model is shipped once: a path is read on the client and its bytes travel (a
  ``.keras``/``.h5`` file), bytes are shipped as they are, a loaded :class:`fastconv.Model`
  is pickled. The payload is one node of the task graph (a key named by its content hash)
  on which every chunk's task depends, so a worker receives it once, whichever scheduler
  computes the result.
* Each worker process keeps the models it has loaded in a small cache keyed by the
  content hash (:data:`_CACHE`), so it loads a model once, not once per chunk;
  :func:`load_count` tells how many loads this process did (for tests).
* Inputs larger than memory: :func:`predict_npy` / :func:`predict_stream` read the
  input chunk by chunk and write each chunk's outputs as it arrives (into an array or a
  ``.npy`` file opened as a memory map), so neither the client nor the graph ever holds
  the whole input. On the threaded scheduler the reads are tasks of the graph (which
  holds a path, not data); on a cluster the client reads a chunk, submits it as one task
  (its data travels in the task, so Dask can rerun it if a worker dies) and keeps at most
  ``max_in_flight`` chunks submitted at once.
* Threads: each task runs its kernels on ``threads_per_task`` threads, set per task thread
  (the process-wide :func:`fastconv.set_num_threads` is untouched). By default that is the
  fair share that avoids oversubscription: on a distributed worker, the worker's
  ``nthreads`` run that many tasks at once, so each task gets one thread (the worker's
  ``nthreads`` cores are all used by its tasks); on the threaded scheduler, the client's
  :func:`fastconv.get_num_threads` divided by dask's thread count (``dask.config``
  ``num_workers``, else the CPU count), at least one.
"""

import hashlib
import os
import pickle
import tempfile
import threading
from collections import OrderedDict

import numpy as np

from .errors import InvalidArgumentError, NotSupportedError

__all__ = ["predict", "predict_npy", "predict_stream", "load_count"]

_LOCK = threading.Lock()
_CACHE = OrderedDict()     # content hash -> Model, per process (a worker's model cache)
_CACHE_SIZE = 4
_LOADS = {"count": 0}      # models loaded by this process (exposed for tests)


def _require_dask():
    try:
        import dask
        import dask.array as da
    except ImportError:
        from .viz import MissingDependencyError
        raise MissingDependencyError(
            "fastconv.dask needs dask, which is not installed; install it with "
            "pip install \"fastconv[dask]\" (dask[array] and distributed)") from None
    return dask, da


def load_count():
    """How many models this process has loaded for :func:`predict` tasks (a worker-side count)."""
    return _LOADS["count"]


def _payload(model):
    """(kind, data, digest) for a path, bytes or a loaded Model."""
    from .models import Model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise InvalidArgumentError(f"fastconv.dask.predict: model file {path!r} does not exist")
        with open(path, "rb") as f:
            data = f.read()
        kind = "file"
    elif isinstance(model, (bytes, bytearray, memoryview)):
        data, kind = bytes(model), "file"
    elif isinstance(model, Model):
        data, kind = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL), "pickle"
    else:
        raise InvalidArgumentError(
            f"fastconv.dask.predict: argument `model` must be a path, the bytes of a .keras/.h5 file or a "
            f"fastconv Model; got {type(model).__name__}")
    return kind, data, f"{kind}-{hashlib.sha256(data).hexdigest()[:32]}"


def _load(kind, data):
    if kind == "pickle":
        return pickle.loads(data)
    from .models import load_model
    fd, tmp = tempfile.mkstemp(prefix="fastconv-dask-", suffix=".model")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return load_model(tmp)
    finally:
        os.unlink(tmp)


class _Payload:
    """What a worker loads a model from: ``kind`` ("file": the bytes of a .keras/.h5 file;
    "pickle": a pickled Model) and ``data``. One object: one key of the graph."""

    __slots__ = ("kind", "data")

    def __init__(self, kind, data):
        self.kind, self.data = kind, data

    def __reduce__(self):
        return _Payload, (self.kind, self.data)


def _model_for(payload, digest):
    """The model of ``payload`` from this process's cache, loading it the first time."""
    with _LOCK:   # held while loading: two tasks of one worker never load the same model twice
        m = _CACHE.get(digest)
        if m is None:
            m = _load(payload.kind, payload.data)
            _LOADS["count"] += 1
            _CACHE[digest] = m
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        else:
            _CACHE.move_to_end(digest)
        return m


def _task_threads(threads_per_task, client_threads):
    if threads_per_task is not None:
        return threads_per_task
    try:
        from distributed import get_worker
        get_worker()
        return 1   # the worker runs nthreads tasks at once: one kernel thread each
    except (ImportError, ValueError):
        pass
    import dask
    from dask.system import CPU_COUNT
    slots = dask.config.get("num_workers", None) or CPU_COUNT
    return max(1, client_threads // max(1, int(slots)))




def _predict_block(block, payload, digest, batch_size, backend, threads_per_task, client_threads, out_tail):
    from ._threads import thread_limit
    if block.shape[0] == 0:   # Model.predict refuses an empty batch at Flatten; an empty chunk is fine here
        return np.empty((0,) + tuple(out_tail), np.float32)
    model = _model_for(payload, digest)
    from .backends import _blas
    # SciPy's OpenBLAS stays on one thread while any task runs here (the switch is counted
    # across threads), so concurrent tasks compute exactly what an in-process predict does
    with _blas.single_threaded(), thread_limit(_task_threads(threads_per_task, client_threads)):
        return model.predict(np.asarray(block), batch_size=batch_size, backend=backend)


def predict(model, darr, batch_size=32, backend="auto", threads_per_task=None):
    """Run a single-input, single-output model over a dask array, chunk by chunk.

    Parameters
    ----------
    model : str, os.PathLike, bytes or fastconv.Model
        A ``.keras``/``.h5`` file, its bytes, or a loaded model. It is shipped to each
        worker once and loaded there once (cached by content hash).
    darr : dask.array.Array
        The inputs, (samples, ...) as the model takes them. Only the batch axis may
        have several chunks: other axes are rechunked to one chunk.
    batch_size : int
        Samples per call within a chunk (as :meth:`fastconv.Model.predict`).
    backend : str
        ``"auto"`` or an available backend name.
    threads_per_task : int, optional
        Kernel threads of each task (default: the fair share, see the module docstring).

    Returns
    -------
    dask.array.Array
        float32 outputs, chunked along the batch axis as ``darr``. Nothing runs until
        it is computed (``.compute()``, ``client.compute``, ...).

    Raises
    ------
    NotSupportedError
        The model has several inputs or several outputs.
    """
    dask, da = _require_dask()
    from .models import Model
    if not isinstance(darr, da.Array):
        raise InvalidArgumentError(
            f"fastconv.dask.predict: argument `darr` must be a dask array; got {type(darr).__name__} "
            f"(wrap a NumPy array with dask.array.from_array)")
    if darr.ndim < 1:
        raise InvalidArgumentError("fastconv.dask.predict: argument `darr` must have a batch axis; got a scalar")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"fastconv.dask.predict: argument `batch_size` must be a positive integer; "
                                   f"got {batch_size!r}")
    if threads_per_task is not None and (isinstance(threads_per_task, bool) or not isinstance(threads_per_task, int)
                                         or threads_per_task < 1):
        raise InvalidArgumentError(f"fastconv.dask.predict: argument `threads_per_task` must be a positive "
                                   f"integer or None; got {threads_per_task!r}")
    if any(np.isnan(c) for c in darr.shape):
        raise InvalidArgumentError("fastconv.dask.predict: `darr` has unknown chunk sizes; call "
                                   "darr.compute_chunk_sizes() first")
    kind, data, digest = _payload(model)
    local = model if isinstance(model, Model) else _load(kind, data)
    return _predict_lazy(kind, data, digest, local, darr, batch_size, backend, threads_per_task)


def _predict_lazy(kind, data, digest, local, darr, batch_size, backend, threads_per_task):
    dask, da = _require_dask()
    if len(local.input_names) != 1:
        raise NotSupportedError(f"fastconv.dask.predict: the model has {len(local.input_names)} inputs "
                                f"{local.input_names}; only single-input models are supported")
    if len(local.output_names) != 1:
        raise NotSupportedError(f"fastconv.dask.predict: the model has {len(local.output_names)} outputs "
                                f"{local.output_names}; only single-output models are supported")
    # one sample on the client: checks the input shape (and backend) and gives the output shape
    probe = local.predict(np.zeros((1,) + tuple(darr.shape[1:]), np.float32), backend=backend)
    if not isinstance(probe, np.ndarray):
        raise NotSupportedError("fastconv.dask.predict: the model's output is not one array")
    if any(len(c) > 1 for c in darr.chunks[1:]):
        darr = darr.rechunk({i: -1 for i in range(1, darr.ndim)})

    # one node of the graph, which every chunk's task depends on: the threaded scheduler
    # shares it; on a cluster it is materialised on one worker and fetched once by each other
    # worker. (Not scattered: predict() cannot know which scheduler will compute the result.)
    ref = dask.delayed(_Payload(kind, data), name=f"fastconv-model-{digest}", pure=True)
    from ._threads import get_num_threads
    letters = "abcdefghijklmnopqrstuvwxyz"
    in_ind = "z" + letters[:darr.ndim - 1]
    out_extra = letters[darr.ndim - 1:darr.ndim - 1 + probe.ndim - 1]
    out_ind = "z" + out_extra
    return da.blockwise(
        _predict_block, out_ind, darr, in_ind, ref, None,
        digest, None, batch_size, None, backend, None, threads_per_task, None, get_num_threads(), None,
        tuple(probe.shape[1:]), None, new_axes={l: s for l, s in zip(out_extra, probe.shape[1:])}, concatenate=True,
        dtype=np.float32, meta=np.empty((0,) * probe.ndim, np.float32),
        token="fastconv-predict")


# ------------------------------------------------------------------ streaming a large input

class NpySource:
    """Rows of a ``.npy`` file, read on demand through a memory map (picklable: a path).

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npy`` file of shape (samples, ...).
    scale : float, optional
        Multiply each chunk by this (as float32) when read; the file is never modified.
    """

    def __init__(self, path, scale=None):
        self.path = os.fspath(path)
        try:
            m = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InvalidArgumentError(f"fastconv.dask: cannot read {self.path!r} as a .npy file: {exc}") from None
        if m.ndim == 0:
            raise InvalidArgumentError(f"fastconv.dask: {self.path!r} holds a scalar, not a batch of samples")
        if scale is not None and m.dtype.kind not in "biuf":
            raise InvalidArgumentError(f"fastconv.dask: an array of dtype {m.dtype} cannot be scaled")
        self.shape, self.dtype, self.scale = tuple(m.shape), m.dtype, scale
        del m

    def __len__(self):
        return self.shape[0]

    def read(self, start, stop):
        """Rows ``start:stop`` as an in-memory array (float32 when scaled)."""
        m = np.load(self.path, mmap_mode="r", allow_pickle=False)
        rows = np.array(m[start:stop])
        del m
        if self.scale is not None:
            rows = rows.astype(np.float32) * np.float32(self.scale)
        return rows


def _read_block(source, start, stop):
    return source.read(start, stop)


def _bounds(n, chunk_size):
    return [(a, min(a + chunk_size, n)) for a in range(0, n, chunk_size)]


def predict_npy(model, path, out=None, *, scale=None, **kwargs):
    """Run a model over a ``.npy`` file larger than memory, chunk by chunk.

    Parameters
    ----------
    model : str, os.PathLike, bytes or fastconv.Model
        As :func:`predict`.
    path : str or os.PathLike
        The inputs, (samples, ...) as the model takes them; memory-mapped, never loaded whole.
    out : str, os.PathLike or numpy.ndarray, optional
        Where the outputs go: a ``.npy`` path (created, written chunk by chunk through a
        memory map) or a float32 array of the output's shape. Default: a new array.
    scale : float, optional
        Multiply the inputs by this as they are read (e.g. 1/255).
    **kwargs
        ``client``, ``chunk_size``, ``batch_size``, ``backend``, ``threads_per_task``,
        ``max_in_flight``, ``progress``: see :func:`predict_stream`.

    Returns
    -------
    numpy.ndarray
        The outputs (a ``numpy.memmap`` on ``out`` when it is a path).
    """
    return predict_stream(model, NpySource(path, scale=scale), out=out, **kwargs)


def predict_stream(model, source, out=None, *, client=None, chunk_size=256, batch_size=32, backend="auto",
                   threads_per_task=None, max_in_flight=None, progress=None):
    """Run a single-input, single-output model over ``source`` without holding all of it.

    Parameters
    ----------
    model : str, os.PathLike, bytes or fastconv.Model
        As :func:`predict`.
    source : object
        The inputs: ``len(source)`` samples, ``source.shape`` (samples, ...) and
        ``source.read(start, stop)`` returning those rows as an array (e.g.
        :class:`NpySource`). On the threaded scheduler ``read`` runs in the tasks, so it
        must be thread-safe and picklable; on a cluster it runs on the client.
    out : str, os.PathLike or numpy.ndarray, optional
        As :func:`predict_npy`.
    client : distributed.Client, optional
        Run on this cluster; default: dask's threaded scheduler in this process.
    chunk_size : int
        Samples per task (the unit of work, of retry and of memory).
    batch_size, backend, threads_per_task
        As :func:`predict`.
    max_in_flight : int, optional
        On a cluster, how many chunks are submitted at once (default: twice the
        cluster's worker threads): the client and the scheduler hold at most this many.
    progress : callable, optional
        Called as ``progress(rows)`` each time a chunk's ``rows`` outputs are written.

    Returns
    -------
    numpy.ndarray
        float32 outputs, (samples, ...) in input order.
    """
    dask, da = _require_dask()
    from .models import Model
    for name, v in (("chunk_size", chunk_size), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidArgumentError(f"fastconv.dask.predict_stream: argument `{name}` must be a positive "
                                       f"integer; got {v!r}")
    if max_in_flight is not None and (isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int)
                                      or max_in_flight < 1):
        raise InvalidArgumentError(f"fastconv.dask.predict_stream: argument `max_in_flight` must be a positive "
                                   f"integer or None; got {max_in_flight!r}")
    n, sample_shape = len(source), tuple(source.shape[1:])
    kind, data, digest = _payload(model)
    local = model if isinstance(model, Model) else _load(kind, data)
    if len(local.input_names) != 1 or len(local.output_names) != 1:
        raise NotSupportedError(
            f"fastconv.dask.predict_stream: only single-input, single-output models are supported; the model "
            f"has inputs {local.input_names} and outputs {local.output_names}")
    probe = local.predict(np.zeros((1,) + sample_shape, np.float32), backend=backend)
    if not isinstance(probe, np.ndarray):
        raise NotSupportedError("fastconv.dask.predict_stream: the model's output is not one array")
    out_shape = (n,) + tuple(probe.shape[1:])
    target = _target(out, out_shape)
    bounds = _bounds(n, chunk_size)
    from ._threads import get_num_threads
    client_threads = get_num_threads()
    if client is None:
        # the threaded scheduler: reads, predictions and writes are all tasks of one graph
        blocks = [da.from_delayed(dask.delayed(_read_block, pure=True)(source, a, b), (b - a,) + sample_shape,
                                  dtype=source.dtype) for a, b in bounds]
        if not blocks:
            return target
        x = da.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
        y = _predict_lazy(kind, data, digest, local, x, batch_size, backend, threads_per_task)
        writer = _Writer(target, progress)
        da.store(y, writer, lock=False, compute=True, scheduler="threads")
        return target
    return _stream_to_cluster(client, source, target, bounds, kind, data, digest, batch_size, backend,
                              threads_per_task, client_threads, tuple(probe.shape[1:]), max_in_flight, progress)


class _Writer:
    """A ``da.store`` target writing into ``target`` and reporting rows to ``progress``."""

    def __init__(self, target, progress):
        self.target, self.progress = target, progress
        self.shape, self.dtype, self.ndim = target.shape, target.dtype, target.ndim

    def __setitem__(self, key, value):
        self.target[key] = value
        if self.progress is not None:
            self.progress(value.shape[0])


def _target(out, shape):
    if out is None:
        return np.empty(shape, np.float32)
    if isinstance(out, np.ndarray):
        if out.shape != shape or out.dtype != np.float32:
            raise InvalidArgumentError(f"fastconv.dask: argument `out` must be a float32 array of shape {shape}; "
                                       f"got {out.dtype} {out.shape}")
        return out
    if isinstance(out, (str, os.PathLike)):
        return np.lib.format.open_memmap(os.fspath(out), mode="w+", dtype=np.float32, shape=shape)
    raise InvalidArgumentError(f"fastconv.dask: argument `out` must be None, a .npy path or an array; "
                               f"got {type(out).__name__}")


def _stream_to_cluster(client, source, target, bounds, kind, data, digest, batch_size, backend,
                       threads_per_task, client_threads, out_tail, max_in_flight, progress):
    from distributed import as_completed
    # the model goes to every worker once; a worker that joins later fetches it from another
    payload = client.scatter(_Payload(kind, data), broadcast=True, hash=False)
    if max_in_flight is None:
        max_in_flight = 2 * max(1, sum(client.nthreads().values()))
    pending, done = {}, as_completed()
    chunks = iter(bounds)
    for a, b in chunks:
        _submit(client, pending, done, source, a, b, payload, digest, batch_size, backend, threads_per_task,
                client_threads, out_tail)
        if len(pending) >= max_in_flight:
            break
    for fut in done:
        a, b = pending.pop(fut)
        target[a:b] = fut.result()   # a failed chunk raises here; a lost worker's chunk was rerun by Dask
        fut.release()
        if progress is not None:
            progress(b - a)
        for a, b in chunks:   # refill: one new chunk for each finished one
            _submit(client, pending, done, source, a, b, payload, digest, batch_size, backend,
                    threads_per_task, client_threads, out_tail)
            break
    return target


def _submit(client, pending, done, source, a, b, payload, digest, batch_size, backend, threads_per_task,
            client_threads, out_tail):
    block = np.ascontiguousarray(source.read(a, b))
    fut = client.submit(_predict_block, block, payload, digest, batch_size, backend, threads_per_task,
                        client_threads, out_tail, pure=False, key=f"fastconv-chunk-{a}-{b}-{digest[:12]}-{id(pending)}")
    pending[fut] = (a, b)
    done.add(fut)
