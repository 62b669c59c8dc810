"""Turn a pytest-benchmark JSON file into a markdown table and a PNG chart.

    python bench/report.py bench/results.json                  # table on stdout, chart to bench/results.png
    python bench/report.py bench/results.json --png out.png    # chart elsewhere
    python bench/report.py bench/results.json --no-png         # table only (no matplotlib needed)

One table row per case and implementation (benchmarks are grouped by case; an ``impl``
starting with "fastconv" is ours, every other one is a peer): the median time, GFLOP/s
(where the benchmark recorded ``flops``), the share of this machine's measured sgemm rate
that is, and the ratio of the time to the best (fastest) peer's time in the same case
(< 1: faster than every peer).

The sgemm rate (``numpy.matmul`` of 2048x2048 float32, best of 5, see bench/sgemm.py) is
measured by the benchmark run itself and stored in the JSON's ``machine_info["sgemm_gflops"]``
(bench/conftest.py); for a JSON without it, it is measured here, at report time, and the
table's footer says so.

The chart (needs matplotlib: ``pip install -e ".[bench]"``) has one horizontal bar per case
and implementation: the time relative to the fastest peer of the case, on a log axis with a
line at 1 (a bar ending left of it: faster than every peer), labelled with its absolute
time and the ratio; cases without a peer are relative to their fastest
implementation (marked "no peer").
"""

import argparse
import json
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def is_peer(impl):
    return not impl.startswith("fastconv")


def load(path):
    """(cases, machine_info, datetime): cases is {group: {impl: (median s, flops or None)}} in file order."""
    with open(path) as fh:
        data = json.load(fh)
    cases = OrderedDict()
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        impl = info.get("impl", b["name"])
        cases.setdefault(b.get("group") or b["name"], {})[impl] = (b["stats"]["median"], info.get("flops"))
    for group, res in cases.items():
        cases[group] = dict(sorted(res.items(), key=lambda kv: (is_peer(kv[0]), kv[0])))
    return cases, data.get("machine_info", {}), data.get("datetime", "")


def sgemm_rate(machine):
    """(GFLOP/s, where it came from)."""
    if machine.get("sgemm_gflops"):
        return float(machine["sgemm_gflops"]), "measured during the benchmark run: " + machine.get(
            "sgemm_method", "numpy.matmul 2048x2048 float32")
    from sgemm import sgemm_gflops
    return sgemm_gflops(), ("measured at report time, the JSON has none: numpy.matmul 2048x2048 "
                            "float32, best of 5 runs")


def best_peer(res):
    times = [t for impl, (t, _) in res.items() if is_peer(impl)]
    return min(times) if times else None


def _time(t):
    return f"{t * 1e3:.3f} ms" if t < 1 else f"{t:.2f} s"


def table(cases, machine, when, sgemm, sgemm_source):
    lines = ["| case | impl | median | GFLOP/s | share of sgemm peak | ratio to best peer |",
             "|---|---|---:|---:|---:|---:|"]
    for group, res in cases.items():
        peer_t = best_peer(res)
        for impl, (t, flops) in res.items():
            rate = flops / t / 1e9 if flops else None
            cells = [group, impl, _time(t),
                     f"{rate:.1f}" if rate is not None else "–",
                     f"{100 * rate / sgemm:.1f}%" if rate is not None else "–",
                     f"{t / peer_t:.2f}×" if peer_t else "–"]
            lines.append("| " + " | ".join(cells) + " |")
    cpu = machine.get("cpu", {})
    lines += ["",
              "Median times. GFLOP/s from each benchmark's `flops`; share of sgemm peak = that rate over "
              f"this machine's sgemm rate, {sgemm:.1f} GFLOP/s ({sgemm_source}). Ratio to best peer = time ÷ the fastest peer's time in the case "
              "(< 1: faster than every peer).",
              "",
              f"Machine: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} CPUs; {when}"]
    return "\n".join(lines)


def chart(cases, path, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    impls = []
    for res in cases.values():
        impls += [i for i in res if i not in impls]
    impls.sort(key=lambda i: (is_peer(i), i))
    colors = {impl: plt.get_cmap("tab10")(k % 10) for k, impl in enumerate(impls)}

    rows, labels, ticks = [], [], []   # rows: (y, impl, ratio, seconds)
    y = 0.0
    for group, res in cases.items():
        ref = best_peer(res) or min(t for t, _ in res.values())
        top = y
        for impl, (t, _) in res.items():
            rows.append((y, impl, t / ref, t))
            y += 1
        ticks.append((top + y - 1) / 2)
        labels.append(group if best_peer(res) else f"{group}\n(no peer: vs fastest)")
        y += 0.8
    ratios = [r for _, _, r, _ in rows]
    lo, hi = min(0.5, min(ratios) / 2), max(2.0, max(ratios) * 4)
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.28 * y))
    for yy, impl, ratio, t in rows:
        ax.barh(yy, ratio - lo, left=lo, height=0.85, color=colors[impl])
        ax.text(ratio * 1.05, yy, f"{_time(t)} ({ratio:.2f}×)", va="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time relative to the fastest peer of the case (log scale; < 1 is faster)")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colors[i]) for i in impls], labels=impls,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="?", default="bench/results.json")
    ap.add_argument("--png", help="where to write the chart (default: the JSON's path with .png)")
    ap.add_argument("--no-png", action="store_true", help="write no chart")
    args = ap.parse_args(argv)
    cases, machine, when = load(args.json)
    sgemm, source = sgemm_rate(machine)
    print(table(cases, machine, when, sgemm, source))
    if not args.no_png:
        png = args.png or os.path.splitext(args.json)[0] + ".png"
        try:
            chart(cases, png, title=f"{os.path.basename(args.json)}, {when}")
        except ImportError:
            print(f"\n(no chart: matplotlib is not installed; pip install -e \".[bench]\")", file=sys.stderr)
        else:
            print(f"\nChart: {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
