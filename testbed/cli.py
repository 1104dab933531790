"""testbed: the MEC serverless lab in one command line.

    testbed demo                      the embedded default, end to end, with a report
    testbed sim up|down|status        the network-namespace 5G user plane
    testbed broker --manifests DIR    the local Knative-compatible Broker and functions
    testbed scenario run FILE         a scenario against sim or lab
    testbed lab up|down|status|smoke  the Docker Compose + kind + Knative lab
    testbed corpus tunnel|build|score real captures as N3, the tap scored against tshark
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mec_common import cli
from mec_common.cli import Command
from testbed import __version__

# (name, module, adder, runner): each part of the testbed registers its own subcommand.
PARTS: tuple[tuple[str, str, str, str], ...] = (
    ("demo", "testbed.demo", "add_demo_parser", "run_demo"),
    ("sim", "testbed.sim.cli", "add_sim_parser", "run_sim"),
    ("broker", "testbed.broker.cli", "add_broker_parser", "run_broker"),
    ("scenario", "testbed.scenario", "add_scenario_parser", "run_scenario"),
    ("lab", "testbed.lab.cli", "add_lab_parser", "run_lab"),
    ("corpus", "testbed.corpus.cli", "add_corpus_parser", "run_corpus"),
)


def commands() -> list[Command]:
    """The parts in this build (an image may ship only some of them)."""
    out: list[Command] = []
    for name, module, adder, runner in PARTS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # that part is not in this build
            raise
        out.append(Command(name, getattr(mod, adder), getattr(mod, runner)))
    return out


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="testbed",
        description="MEC serverless testbed: 5G user actions, seen at the UPF, fire Knative functions.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return cli.add_commands(parser, commands(), argv)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(build_parser(argv), argv, interrupt=True)


if __name__ == "__main__":
    sys.exit(main())
