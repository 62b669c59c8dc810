"""Where a model's time goes: each step of the execution plan timed alone on its real input
(best of 5), summed, against the whole model's best time.

    python bench/model_layer_sum.py mobilenet_v2|resnet50|sign_mnist|cifar10

A model much slower than the sum of its steps loses time between them (launches, caches);
one about equal to it loses it inside the kernels.
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def best(fn, n=5):
    fn()
    t = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def main(name):
    import model_cases as mc
    from fastconv.models.model import _rebuild
    m, x = mc.model(name), mc.inputs(name, 1)
    g = m._graph
    feeds = {g.input_layers[0].name: x.astype(np.float32)}
    keys = [k for s in g.plan for k in s.outputs]
    values = g.run(feeds, keys, "auto")
    steps = 0.0
    for s in g.plan:
        if s.inputs is not None:
            # Layer.call never writes its inputs (only the engine's call_donated may)
            args = _rebuild(s.inputs, [values[k] for k in s.input_keys])
            steps += best(lambda: s.layer.call(args, "auto"))
    print(f"{name}: steps alone {steps * 1e3:.1f} ms, whole model {best(lambda: m.predict(x)) * 1e3:.1f} ms")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mobilenet_v2")
