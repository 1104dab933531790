"""Command-line plumbing shared by `upf-tap`, `detector` and `testbed`: the exit codes, and one
way to register and dispatch sub-commands.

Each program lists its sub-commands as :class:`Command` (name, add_parser, run) and its
``main`` is ``mec_common.cli.main(parser, argv, ...)``: parse, call the chosen command's
``run``, and turn the errors it knows into one line on stderr and an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1       # the command ran and found a problem (a failed check, a bad rules file)
EXIT_BAD_INPUT = 2     # unusable arguments, input or environment (argparse's usage errors exit 2 too)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it

# argparse's sub-parser set (the return type of add_subparsers; private in typeshed)
SubParsers = Any
AddParser = Callable[[SubParsers], argparse.ArgumentParser]
Run = Callable[[argparse.Namespace], int]

_RUN = "func"               # where the chosen command's run() is kept in the parsed namespace
_ERROR_EXIT = "_error_exit"  # and the exit code for the errors main() maps


class CommandError(Exception):
    """A command gives up with a one-line reason: ``main`` prints it and exits ``code``."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


class Command:
    """One sub-command.

    ``add_parser(subparsers)`` adds its parser (named ``name``) and returns it; ``run(args)`` runs
    the parsed command and returns the exit code. ``error_exit`` is the exit code when ``run``
    raises one of the errors ``main`` maps. With a ``summary``, ``add_parser`` is only called
    when the command line names this command: otherwise the command is just listed with
    that help text, so ``--help`` and the other commands never import it.

    (A plain class: importing dataclasses costs about 10 ms, which `upf-tap read` does not pay.)
    """

    __slots__ = ("add_parser", "error_exit", "name", "run", "summary")

    def __init__(self, name: str, add_parser: AddParser, run: Run, *, error_exit: int = EXIT_BAD_INPUT,
                 summary: str | None = None) -> None:
        self.name = name
        self.add_parser = add_parser
        self.run = run
        self.error_exit = error_exit
        self.summary = summary

    def __repr__(self) -> str:
        return f"Command({self.name!r})"


def lazy(module: str, attr: str) -> Callable[..., Any]:
    """``module.attr``, imported on the first call rather than now."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__name__ = attr
    call.__qualname__ = f"{module}.{attr}"
    return call


def add_commands(parser: argparse.ArgumentParser, commands: Sequence[Command],
                 argv: Sequence[str] | None = None, *, dest: str = "command",
                 metavar: str | None = "COMMAND") -> argparse.ArgumentParser:
    """Add ``commands`` as ``parser``'s required sub-commands; ``argv`` (default: sys.argv[1:])
    tells which lazy command (with a summary) to load for real. Returns ``parser``."""
    words = list(sys.argv[1:] if argv is None else argv)
    sub = parser.add_subparsers(dest=dest, required=True, metavar=metavar)
    for cmd in commands:
        if cmd.summary is not None and words[:1] != [cmd.name]:
            p = sub.add_parser(cmd.name, help=cmd.summary)
        else:
            p = cmd.add_parser(sub)
        p.set_defaults(**{_RUN: cmd.run, _ERROR_EXIT: cmd.error_exit})
    return parser


def main(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None, *,
         errors: tuple[type[BaseException], ...] = (), prefix: str | None = None,
         interrupt: bool = False) -> int:
    """Parse ``argv``, run the chosen command and return its exit code.

    A :class:`CommandError`, or one of ``errors``, becomes one line ``<prefix><error>`` on
    stderr (``prefix`` defaults to argparse's ``"<prog>: error: "``) and the command's
    exit code (``CommandError.code``, else ``Command.error_exit``). With ``interrupt``,
    Ctrl-C prints ``<prog>: interrupted`` and exits 130. A reader that goes away (``| head``)
    ends the command quietly, as a pipeline expects.
    """
    args = parser.parse_args(argv)
    lead = f"{parser.prog}: error: " if prefix is None else prefix
    try:
        return int(getattr(args, _RUN)(args) or 0)
    except CommandError as e:
        _say(f"{lead}{e}")
        return e.code
    except errors as e:
        _say(f"{lead}{e}")
        return int(getattr(args, _ERROR_EXIT, EXIT_BAD_INPUT))
    except KeyboardInterrupt:
        if not interrupt:
            raise
        _say(f"{parser.prog}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout's reader closed it: point stdout at /dev/null, so that the flush at exit
        # does not fail again, and stop
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
