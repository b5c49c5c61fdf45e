"""The ``wfe-valkey`` command line.

Each subcommand is a function that gets the parsed arguments and returns
the exit code. Errors a user can fix (a bad URL, a server that cannot be
reached) are printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from .errors import InvalidURLError, ValkeyError


def build_parser() -> argparse.ArgumentParser:
    """Describe every subcommand and its options."""
    parser = argparse.ArgumentParser(
        prog="wfe-valkey",
        description="Valkey lock, queue and lifecycle providers for Python WFE hosts.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="simulate several WFE hosts sharing one Valkey, and check the results",
        description=(
            "Simulate several WFE hosts that share work through one Valkey: queue "
            "workflow ids, dequeue them, lock each workflow, publish lifecycle events, "
            "and check that every id ran exactly once under its lock. Without --url, "
            "an embedded Valkey is started on a free loopback port and stopped at the end."
        ),
    )
    demo.add_argument("--url", help="server URL, for example redis://127.0.0.1:6379/0")
    demo.add_argument("--prefix", default=None, help="key prefix (default: a random one)")
    demo.add_argument("--hosts", type=int, default=4, help="simulated hosts (default: 4)")
    demo.add_argument(
        "--workflows", type=int, default=3000, help="workflow ids to queue (default: 3000)"
    )
    demo.add_argument(
        "--steps", type=int, default=2, help="steps per workflow, one event each (default: 2)"
    )
    demo.add_argument(
        "--quiet", action="store_true", help="print only the summary, without progress"
    )
    demo.set_defaults(run=run_demo)
    return parser


def run_demo(arguments: argparse.Namespace) -> int:
    from .demo import DemoOptions, run

    options = DemoOptions(
        url=arguments.url,
        prefix=arguments.prefix,
        hosts=arguments.hosts,
        workflows=arguments.workflows,
        steps=arguments.steps,
        show_progress=not arguments.quiet,
    )
    return asyncio.run(run(options))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line and exit with its status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        status = arguments.run(arguments)
    except (InvalidURLError, ValkeyError, ValueError, OSError) as exc:
        print(f"wfe-valkey {arguments.command}: error: {exc}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        status = 130
    sys.exit(status)
