"""``retrax quickstart``: every cell of the TransformerLM quick-start notebook (:mod:`retrax.quickstart`)."""

from __future__ import annotations

import argparse

from retrax.cli.errors import UsageError, check_output_path, one_line

__all__ = ["cmd_quickstart"]


def cmd_quickstart(args: argparse.Namespace) -> int:
    from retrax import quickstart

    if args.output_dir is not None:
        check_output_path(args.output_dir, "--output-dir", directory=True)
    try:
        quickstart.main(output_dir=args.output_dir, steps=args.steps)
    except FileExistsError as err:  # The Loop refuses a directory holding foreign files.
        raise UsageError(f"{one_line(err)} For the quick start, pass --output-dir with an "
                         f"empty or new directory.") from None
    return 0
