"""Throughput of fastconv.dask.predict: in-process vs the threaded scheduler vs a local cluster
(a dask array in memory, and streamed from a .npy file with predict_npy).

    python bench/dask_throughput.py [--model tests/fixtures/models/sign_mnist.keras] [--samples 8192]
                                    [--chunk 256] [--batch-size 32] [--repeat 3]

Every run is warmed up first (Numba compiled, the model loaded on every worker), then the median
of --repeat runs is printed as samples/s; each result is checked to equal the in-process one.
"""

import argparse
import os
import statistics
import time

import numpy as np


def _time(fn, repeat):
    fn()
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.path.join(here, "..", "tests", "fixtures", "models", "sign_mnist.keras"))
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    import tempfile

    import dask.array as da
    import distributed
    import fastconv
    import fastconv.dask as fdask

    model = fastconv.load_model(args.model)
    shape = tuple(d if d is not None else 32 for d in model.input_shapes[0][1:])
    x = np.random.default_rng(0).random((args.samples,) + shape, dtype=np.float32)
    d = da.from_array(x, chunks=(args.chunk,) + shape)
    n = args.samples
    print(f"model {os.path.basename(args.model)}, {n} samples of {shape}, batch {args.batch_size}, "
          f"chunks of {args.chunk}; fastconv {fastconv.get_num_threads()} thread(s) in-process; "
          f"{os.cpu_count()} CPUs")

    t, ref = _time(lambda: model.predict(x, batch_size=args.batch_size), args.repeat)
    print(f"in-process Model.predict             {t:8.3f} s  {n / t:9.0f} samples/s")

    t, out = _time(lambda: fdask.predict(model, d, batch_size=args.batch_size).compute(scheduler="threads"),
                   args.repeat)
    assert np.array_equal(out, ref)
    print(f"dask threaded scheduler              {t:8.3f} s  {n / t:9.0f} samples/s")
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "x.npy")
    np.save(path, x)
    t, out = _time(lambda: fdask.predict_npy(model, path, chunk_size=args.chunk, batch_size=args.batch_size),
                   args.repeat)
    assert np.array_equal(out, ref)
    print(f"threaded, streamed from .npy         {t:8.3f} s  {n / t:9.0f} samples/s")

    with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1", silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        client.wait_for_workers(args.workers)
        t, out = _time(lambda: client.compute(fdask.predict(args.model, d, batch_size=args.batch_size)).result(),
                       args.repeat)
        assert np.array_equal(out, ref)
        print(f"{f'LocalCluster {args.workers} workers x 1 thread':<37}{t:8.3f} s  {n / t:9.0f} samples/s  "
              f"(loads per worker: {client.run(fdask.load_count)})")
        t, out = _time(lambda: fdask.predict_npy(args.model, path, client=client, chunk_size=args.chunk,
                                                 batch_size=args.batch_size), args.repeat)
        assert np.array_equal(out, ref)
        print(f"{'LocalCluster, streamed from .npy':<37}{t:8.3f} s  {n / t:9.0f} samples/s")
    os.unlink(path)
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
