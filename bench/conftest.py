import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from sgemm import sgemm_gflops  # noqa: E402

_sgemm = []


def pytest_sessionstart(session):
    _sgemm.append(sgemm_gflops())  # before any benchmark, with no peer's threads around


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record this machine's measured sgemm rate in the JSON's ``machine_info`` for the report's
    "share of sgemm peak": the best of a measurement at the session's start and one when the
    results are written (each the best of 5 runs), so a busy moment doesn't set the ceiling."""
    _sgemm.append(sgemm_gflops())
    machine_info["sgemm_gflops"] = max(_sgemm)
    machine_info["sgemm_method"] = ("numpy.matmul 2048x2048 float32, best of 5 runs at the session's "
                                    "start and 5 at its end")


def pytest_collection_modifyitems(session, config, items):
    """Run each case's benchmarks one after the other: every fastconv backend and every peer of a
    case (or of a model at one batch size), then the next case.  Collected as written, all of
    fastconv's cases would run first and the peers minutes later, and this shared machine's slow
    spells (seconds to minutes in which everything runs up to twice as slow) would fall on one
    side of a ratio."""
    def key(item):
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "case" in params:
            return item.module.__name__, "case", getattr(params["case"], "name", params["case"])
        if "name" in params:
            return item.module.__name__, "model", params["name"], params.get("batch")
        return item.module.__name__, "item", item.nodeid
    first = {}
    for i, item in enumerate(items):
        first.setdefault(key(item), i)
    items[:] = [item for _, item in sorted(enumerate(items), key=lambda t: (first[key(t[1])], t[0]))]
