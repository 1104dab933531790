"""testbed: the MEC serverless lab in one command line.

    testbed demo                      the embedded default, end to end, with a report
    testbed sim up|down|status        the network-namespace 5G user plane
    testbed broker --manifests DIR    the local Knative-compatible Broker and functions
    testbed scenario run FILE         a scenario against sim or lab
    testbed lab up|down|status|smoke  the Docker Compose + kind + Knative lab
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from testbed import __version__

# (module, adder, runner): each part of the testbed registers its own subcommand.
PARTS: tuple[tuple[str, str, str], ...] = (
    ("testbed.demo", "add_demo_parser", "run_demo"),
    ("testbed.sim.cli", "add_sim_parser", "run_sim"),
    ("testbed.broker.cli", "add_broker_parser", "run_broker"),
    ("testbed.scenario", "add_scenario_parser", "run_scenario"),
    ("testbed.lab.cli", "add_lab_parser", "run_lab"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="testbed",
        description="MEC serverless testbed: 5G user actions, seen at the UPF, fire Knative functions.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    import importlib

    for module, adder, runner in PARTS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # that part is not in this build
            raise
        before = set(sub.choices)
        getattr(mod, adder)(sub)
        run: Callable[[argparse.Namespace], int] = getattr(mod, runner)
        for name in set(sub.choices) - before:
            sub.choices[name].set_defaults(func=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("testbed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
