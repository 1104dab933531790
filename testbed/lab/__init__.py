"""The full lab: Docker Compose (Open5GS 2.7 + UERANSIM 3.2 + tap) and kind + Knative 1.22.

Public entry points: ``add_lab_parser(subparsers)`` and ``run_lab(args) -> int`` (wired
into `testbed` by testbed/cli.py), and ``python -m testbed.lab``.
"""

from testbed.lab.cli import add_lab_parser, run_lab

__all__ = ["add_lab_parser", "run_lab"]
