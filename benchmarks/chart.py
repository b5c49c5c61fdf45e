"""Draw cycles/s against concurrency, one line per client, one panel per workload.

    python -m benchmarks.chart RESULTS.json [-o docs/benchmark.png]

RESULTS.json is either the file the benchmarks' conftest saves
(``.benchmarks/wfe-valkey-results.json`` by default, see
``--bench-results``) or a pytest-benchmark ``--benchmark-json`` file of the
same run. Both carry each test's workload, tasks, client and cycles/s.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# Our client first, then the peers, the ceiling reference last.
CLIENT_ORDER = ("wfe-valkey", "redis-py", "valkey-glide", "aioredis-1.3.1", "bare-loop")
STYLES = {
    "wfe-valkey": {"color": "#d62728", "linewidth": 2.5, "marker": "o"},
    "redis-py": {"color": "#1f77b4", "marker": "s"},
    "valkey-glide": {"color": "#2ca02c", "marker": "^"},
    "aioredis-1.3.1": {"color": "#9467bd", "marker": "D"},
    "bare-loop": {"color": "#7f7f7f", "linestyle": "--", "marker": "x"},
}

Rows = list[dict[str, Any]]


def load_rows(path: Path) -> tuple[Rows, dict[str, str], list[str]]:
    """Return one row per measurement, the workloads' titles and notes on failed peers."""
    document = json.loads(path.read_text())
    if "measurements" in document:
        rows = [
            {
                "workload": m["workload"],
                "tasks": m["tasks"],
                "client": m["client"],
                "rate": m["cycles_per_second"],
            }
            for m in document["measurements"]
        ]
        titles = {m["workload"]: m["title"] for m in document["measurements"]}
        notes = [f"{case}: {reason}" for case, reason in document.get("peer_errors", {}).items()]
        return rows, titles, notes
    if "benchmarks" in document:
        rows = [
            {
                "workload": b["extra_info"]["workload"],
                "tasks": b["extra_info"]["tasks"],
                "client": client,
                "rate": rate,
            }
            for b in document["benchmarks"]
            for client, rate in b.get("extra_info", {}).get("cycles_per_second", {}).items()
        ]
        return rows, {row["workload"]: row["workload"] for row in rows}, []
    raise SystemExit(f"{path}: neither a benchmarks results file nor pytest-benchmark JSON")


def draw(rows: Rows, titles: dict[str, str], notes: list[str], output: Path) -> None:
    """Save one panel per workload as a PNG at `output`, with `notes` under the legend."""
    workloads = list(dict.fromkeys(row["workload"] for row in rows))
    columns = min(3, len(workloads))
    lines = (len(workloads) + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(5.2 * columns, 4.2 * lines), squeeze=False)

    for axis, workload in zip(axes.flat, workloads, strict=False):
        series: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for row in rows:
            if row["workload"] == workload:
                series[row["client"]].append((row["tasks"], row["rate"]))
        clients = [c for c in CLIENT_ORDER if c in series] + sorted(set(series) - set(CLIENT_ORDER))
        for client in clients:
            points = sorted(series[client])
            axis.plot(
                [tasks for tasks, _ in points],
                [rate for _, rate in points],
                label=client,
                **STYLES.get(client, {}),
            )
        axis.set_title(titles.get(workload, workload))
        axis.set_xscale("log", base=2)
        axis.set_xticks([1, 16, 64, 256], labels=["1", "16", "64", "256"])
        axis.set_xlabel("concurrent asyncio tasks")
        axis.set_ylabel("cycles/s")
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))

    for axis in list(axes.flat)[len(workloads) :]:
        axis.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower right", bbox_to_anchor=(0.98, 0.2), fontsize=11)
    if notes:
        figure.text(0.69, 0.03, "No point where a peer failed:\n" + "\n".join(notes), fontsize=7)
    figure.suptitle("One client object per library, one Valkey server on loopback")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results JSON of one benchmark run")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/benchmark.png"))
    arguments = parser.parse_args()
    rows, titles, notes = load_rows(arguments.results)
    if not rows:
        raise SystemExit(f"{arguments.results}: no throughput measurements in it")
    draw(rows, titles, notes, arguments.output)
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
