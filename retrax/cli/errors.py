"""User-facing errors of the ``retrax`` command and its exit codes.

Exit codes: ``EXIT_OK`` (0) success, ``EXIT_USAGE`` (2) bad usage (arguments,
config, missing or unreadable input files, an output path that cannot be
written), ``EXIT_FAILURE`` (1) a failure while working (a bug, a diverged
model, running out of memory), ``EXIT_INTERRUPTED`` (130) Ctrl-C,
``EXIT_BROKEN_PIPE`` (141) the reader of stdout went away. Either error is one
line on stderr; ``--debug`` shows the traceback instead.

>>> one_line(ValueError("two\\n  lines"))
'two lines'
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable

__all__ = ["UsageError", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_INTERRUPTED",
           "EXIT_BROKEN_PIPE", "one_line", "check_output_path", "write_failed",
           "run_reporting_errors"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # What a shell reports for a process ended by SIGPIPE.


class UsageError(Exception):
    """Bad arguments, config or inputs: reported in one line, exit code 2."""


def one_line(err: BaseException | str) -> str:
    """The message of ``err`` on one line (its type's name when it has none)."""
    return " ".join(str(err).split()) or type(err).__name__


def check_output_path(path: str, what: str, directory: bool = False) -> None:
    """Refuses, naming ``path``, an output that cannot be written: checked before any work.

    ``directory``: ``path`` is a directory to create or reuse, else a file to
    write (it must not be a directory). Remote URLs are left to their backend.
    """
    if "://" in path:
        return
    full = os.path.abspath(os.path.expanduser(path))
    if directory and os.path.exists(full) and not os.path.isdir(full):
        raise UsageError(f"{what} {path} is a file, not a directory; choose a directory.")
    if not directory and os.path.isdir(full):
        raise UsageError(f"{what} {path} is a directory; give a file path inside it "
                         f"instead.")
    parent = full if directory else os.path.dirname(full)
    while not os.path.exists(parent):  # The nearest existing ancestor decides.
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{what} {path} cannot be created: {parent} is a file, not a "
                         f"directory.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path} cannot be written: no write permission on {parent}.")


def write_failed(err: OSError, path: str, what: str) -> UsageError:
    """The error for an output that the checks above let through but the system refused."""
    reason = err.strerror or one_line(err)
    return UsageError(f"cannot write {what} {path}: {reason}; choose a path you can write to.")


def _silence_stdout() -> None:
    """Points stdout at /dev/null so that flushing it at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # Not a real file (captured output): nothing will be flushed to a closed pipe.


def run_reporting_errors(command: Callable[[argparse.Namespace], int | None],
                         args: argparse.Namespace, prog: str) -> int:
    """Runs ``command(args)``; turns what it raises into one line on stderr and an exit code.

    With ``args.debug`` a usage error or a failure is raised (its traceback shown).
    """
    try:
        return int(command(args) or EXIT_OK)
    except UsageError as err:
        if args.debug:
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # The reader went away (`retrax show X | head`): stop quietly.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as err:
        if args.debug:
            raise
        print(f"{prog}: error: {type(err).__name__}: {one_line(err)} (run with --debug for "
              f"the traceback)", file=sys.stderr)
        return EXIT_FAILURE
