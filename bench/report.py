"""Turn a pytest-benchmark JSON file into a markdown table: median time, GFLOP/s and
throughput relative to PyTorch (>1 means faster than PyTorch), per case and implementation.

    python bench/report.py bench/results.json
"""

import json
import sys
from collections import defaultdict


def table(path):
    with open(path) as fh:
        data = json.load(fh)
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["extra_info"]["impl"]] = (b["stats"]["median"], b["extra_info"]["flops"])
    impls = sorted({i for g in groups.values() for i in g}, key=lambda s: (s == "torch", s))
    lines = ["| case | " + " | ".join(f"{i} ms (GFLOP/s, ×torch)" for i in impls) + " |",
             "|---|" + "---:|" * len(impls)]
    for case, res in groups.items():
        torch_t = res.get("torch", (None,))[0]
        cells = []
        for impl in impls:
            if impl not in res:
                cells.append("–")
                continue
            t, flops = res[impl]
            ratio = f", {torch_t / t:.2f}×" if torch_t and impl != "torch" else ""
            cells.append(f"{t * 1e3:.3f} ({flops / t / 1e9:.0f}{ratio})")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    machine = data.get("machine_info", {})
    lines.append("")
    lines.append(f"Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, "
                 f"{machine.get('cpu', {}).get('count', '?')} CPUs; {data.get('datetime', '')}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json"))
