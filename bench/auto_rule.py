"""Measure numba against cython kernel by kernel, to set ``backend="auto"``'s rule.

    python bench/auto_rule.py [--repeat 15] [--models mobilenet_v2,resnet50]

Every kernel-contract call made by the op benchmark cases (bench/cases.py) and by one
batch-1 prediction of each model (bench/model_cases.py) is recorded with its arguments,
then run on both compiled backends, interleaved, best of ``--repeat``. Calls are grouped
by :func:`fastconv.backends._auto.shape_class`; for each class the script prints the
geometric mean of cython's time over numba's and the rule that follows (the faster
backend first), in the form of ``fastconv/backends/_auto.py``'s ``RULE``.
"""

import argparse
import collections
import functools
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def record_calls(models):
    """[(op, args)] of every kernel call the cases and the models make (auto dispatch)."""
    import cases
    import model_cases
    from fastconv.backends import _auto
    calls, choose = [], _auto.choose

    def spy(op, args):
        calls.append((op, args))
        return choose(op, args)

    _auto.choose = spy
    try:
        for case in cases.CASES:
            case.call("auto")
        for name in models:
            model_cases.model(name).predict(model_cases.inputs(name, 1))
        # the separable cases once more with the fused kernel preferred, so that it is
        # recorded and timed against cython's two kernels whatever the rule (the calls
        # above, made by the rule, stay in the depthwise and pointwise classes)
        rule = _auto.RULE.get("separable_conv")
        _auto.RULE["separable_conv"] = ("numba", "cython")
        try:
            first = len(calls)
            for case in cases.CASES:
                if case.op.startswith("separable"):
                    case.call("auto")
            calls[first:] = [c for c in calls[first:] if c[0] == "separable_conv"]
        finally:
            if rule is None:
                del _auto.RULE["separable_conv"]
            else:
                _auto.RULE["separable_conv"] = rule
    finally:
        _auto.choose = choose
    return calls


def best(fn, args, repeat):
    fn(*args)
    t = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        t = min(t, time.perf_counter() - t0)
    return t


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--models", default="mobilenet_v2,resnet50")
    args = p.parse_args()
    from fastconv import backends
    from fastconv.backends import _auto
    nb, cy = backends._module("numba"), backends._module("cython")
    calls = record_calls([m for m in args.models.split(",") if m])
    seen, ratios = set(), collections.defaultdict(list)
    for op, a in calls:
        key = (op,) + tuple(getattr(v, "shape", v) if not isinstance(v, np.ndarray) else (v.shape, v.dtype.str)
                            for v in a)
        if key in seen or op not in nb.OPS:
            continue
        seen.add(key)
        if op in cy.OPS:
            cy_fn = getattr(cy, op)
        elif op == "separable_conv":   # cython has no fused kernel: the ops run its two
            cy_fn = functools.partial(backends.separable_in_two, cy)
        else:
            continue
        tn = tc = math.inf
        for _ in range(3):   # interleaved rounds: both see the same machine load
            tn = min(tn, best(getattr(nb, op), a, args.repeat // 3 + 1))
            tc = min(tc, best(cy_fn, a, args.repeat // 3 + 1))
        cls = _auto.shape_class(op, a)
        ratios[cls].append(tc / tn)
        print(f"{cls:20s} x {a[0].shape} {'w ' + str(a[1].shape) if op.endswith('conv') or op == 'conv_transpose' else ''}"
              f"  numba {tn * 1e3:8.3f} ms  cython {tc * 1e3:8.3f} ms  cython/numba {tc / tn:5.2f}")
    print("\nRULE = {")
    for cls in sorted(ratios):
        g = math.exp(sum(map(math.log, ratios[cls])) / len(ratios[cls]))
        order = ("numba", "cython") if g >= 1 else ("cython", "numba")
        print(f"    {cls!r}: {order!r},   # cython/numba time, geometric mean of {len(ratios[cls])}: {g:.2f}")
    print("}")


if __name__ == "__main__":
    main()
