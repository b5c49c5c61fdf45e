"""Split a py-spy profile of our client into where the time goes.

    py-spy record -r 1000 -f raw -o lock.txt -- \\
        python -m benchmarks.run_one --workload lock --tasks 64 --cycles 300000
    python -m benchmarks.profile_split lock.txt

Each sample is charged to the innermost Python line it was taken in (py-spy
without ``--native`` charges a C function to the line that called it), and
that line to one category:

- encode: building the RESP bytes of a command (hiredis ``pack_command``,
  or the providers' encoded parts joined by ``BETWEEN_PARTS``);
- parse: feeding received bytes to the hiredis reader and taking out replies;
- futures: creating reply futures and resolving them;
- socket I/O: ``send``, ``recv`` and waiting in ``epoll``;
- event loop: asyncio's own scheduling (call_soon, handles, task steps);
- connection: the rest of wfe_valkey/connection.py (queues, checks, flushes),
  or of the bare loop when it is the client profiled;
- provider: the lock, queue and lifecycle providers' own lines;
- benchmark: the workload loop that calls the provider.

Samples outside the timed event loop (imports, start-up) are left out.
"""

from __future__ import annotations

import argparse
import re
import sys
import sysconfig
from collections import Counter
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])
FRAME = re.compile(r"^(?P<function>.+) \((?P<path>[^()]+):(?P<line>\d+)\)$")

CATEGORIES = (
    "encode",
    "parse",
    "futures",
    "socket I/O",
    "event loop",
    "connection",
    "provider",
    "benchmark",
    "other",
)


@cache
def source_line(path: str, number: int) -> str:
    """Return the text of line `number` of a profiled file, or ''."""
    for base in (ROOT, STDLIB):
        candidate = base / path
        if candidate.is_file():
            lines = candidate.read_text().splitlines()
            return lines[number - 1] if 0 < number <= len(lines) else ""
    return ""


def categorize(frame: str) -> str:
    """Name the category of the innermost frame of one sample."""
    match = FRAME.match(frame)
    if match is None:
        return "other"
    function, path = match["function"], match["path"]
    text = source_line(path, int(match["line"]))

    if "create_future" in text or "set_result" in text or function.endswith("create_future"):
        return "futures"
    if "Future(loop=" in text:
        return "futures"
    if "BETWEEN_PARTS %" in text or "pack_command" in text:
        return "encode"
    if path.endswith("bare_loop.py"):
        # The bare loop is its own RESP layer and connection in one class.
        if "pack_command" in text:
            return "encode"
        return "parse" if "_reader" in text else "connection"
    if path.endswith("resp.py"):
        return "encode" if function == "encode_command" else "parse"
    if path.endswith("connection.py") and (".parse(" in text or "reader." in text):
        return "parse"
    if path.endswith("selectors.py") or "sock.send" in text or "sock.recv" in text:
        return "socket I/O"
    if path.endswith("selector_events.py") and ("send(" in text or "recv(" in text):
        return "socket I/O"
    if path.startswith("asyncio/") or path.endswith("selectors.py"):
        return "event loop"
    if path.startswith("wfe_valkey/"):
        return "connection" if path.endswith("connection.py") else "provider"
    if path.startswith("benchmarks/"):
        return "benchmark"
    return "other"


def split(profile: Path) -> Counter[str]:
    """Count the samples of each category in a py-spy raw profile."""
    counts: Counter[str] = Counter()
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "run_forever" not in stack:
            continue
        counts[categorize(stack.split(";")[-1])] += int(count)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy output in raw (collapsed) format")
    arguments = parser.parse_args()
    counts = split(arguments.profile)
    total = sum(counts.values())
    if not total:
        sys.exit(f"{arguments.profile}: no samples inside the event loop")
    print(f"{total:,} samples in the event loop")
    for category in CATEGORIES:
        if counts[category]:
            print(f"{category:>12}  {100 * counts[category] / total:5.1f} %")


if __name__ == "__main__":
    main()
