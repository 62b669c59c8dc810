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

__all__ = ["predict", "load_count"]

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
