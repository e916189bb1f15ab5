"""The ``retrax`` command: quickstart, train, sample, show, convert.

::

    retrax quickstart                                  # the seed notebook, end to end
    retrax train examples/configs/reverse.json --set model.d_model=64 --output-dir runs/rev
    retrax sample sort-transformer --prompt "0 3 15 14 9 0"
    retrax show TransformerLM:d_model=32,n_layers=2,vocab_size=32 --svg model.svg
    retrax convert runs/rev/model.pkl.gz rev.safetensors

Exit codes: 0 success, 2 bad usage (arguments, config, missing or unreadable
input files, an output path that cannot be written), 1 a failure while working
(a bug, a diverged model, running out of memory). Either way the error is one
line on stderr; ``--debug`` shows the traceback instead (see
:mod:`retrax.cli.errors`).

This module wires the argument parser; each command is a module of this
package (``train``, ``sample``, ``show``, ``convert``, ``quickstart``), beside
the config files and ``--set`` (``config_files``), the train config
(``train_config``), model specs (``model_specs``) and checkpoint sources
(``sources``).

Models are built by :func:`retrax.models.from_config` and record their config
(:func:`retrax.models.config_of`), which goes into native checkpoints'
metadata and the output directory's ``config.json``, so ``sample`` and
``show`` can rebuild the model. ``config.json`` is a run's one config file:
``retrax train`` stores its resolved config under its ``"run"`` key.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from retrax.cli.config_files import apply_override, load_config
from retrax.cli.convert import cmd_convert
from retrax.cli.errors import UsageError, run_reporting_errors
from retrax.cli.model_specs import build_model, normalize_model_config, parse_model_spec
from retrax.cli.quickstart import cmd_quickstart
from retrax.cli.sample import cmd_sample, model_limits
from retrax.cli.show import cmd_show
from retrax.cli.sources import load_model, read_run_config, resolve_checkpoint
from retrax.cli.train import add_distributed_arguments, cmd_train, text_lm_data
from retrax.cli.train_config import TRAIN_DEFAULTS, resolve_train_config, seed_problem

__all__ = ["main", "build_parser", "UsageError", "parse_model_spec", "normalize_model_config",
           "apply_override", "load_config", "build_model", "load_model", "TRAIN_DEFAULTS",
           "resolve_train_config", "resolve_checkpoint", "read_run_config", "model_limits",
           "text_lm_data"]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    problem = seed_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(f"the seed {problem}, got {text}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:  # (False for NaN too.)
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME[:k=v,...]",
                   help="the model, when the checkpoint does not record it "
                        "(e.g. TransformerLM:vocab_size=32,d_model=32)")
    p.add_argument("--config", metavar="JSON",
                   help="model arguments as JSON or a JSON file (with \"name\": the whole "
                        "model config); overrides the recorded ones")


_TRAIN_EPILOG = """\
config sections (defaults in brackets):
  model           {"name": "TransformerLM", "vocab_size": 32, "d_model": 32, ...}
  task            {"name": "reverse" | "sort" | "copy", "batch_size", "length", "seed"}
  optimizer       {"name": "Adam", "learning_rate": 0.01}  [Adam(0.01)]
  lr_schedule     {"name": "warmup_and_rsqrt_decay", "n_warmup_steps": 100,
                   "max_value": 0.01} or null  [null: the optimizer's rate]
  loss            "CrossEntropyLoss"
  eval            {"metrics": [...], "n_batches": 10, "seed": task seed + 1} or null
  steps           total steps [1000]
  n_steps_per_checkpoint  [100]; evals run at the same steps
  random_seed     [0]
  output_dir      where checkpoints go (or --output-dir)
  plot            true (or a file name) writes history.png at each checkpoint [false]
  sharding        "replicated" | "fsdp" (weights and optimizer slots split over devices)
                  | "tensor:K" (Megatron-style over K devices, e.g. "tensor:2")
  compute_dtype   "float32" | "bfloat16" (float32 master weights)
                  [both null: the default, or what a resumed run recorded]
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``retrax`` argument parser; each command's ``func`` is its ``cmd_*`` function."""
    from retrax.version import __version__

    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks of errors")
    parser = _Parser(prog="retrax", description="Trax's TransformerLM quick start, training, "
                     "sampling and inspection on modern JAX.", parents=[debug])
    parser.add_argument("--version", action="version", version=f"retrax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("quickstart", parents=[debug], help="run the TransformerLM quick start",
                       description="Runs every cell of the TransformerLM quick-start notebook: "
                       "the pretrained sort model, training a reverse model for 1000 steps, "
                       "decoding with it, and the model's layers.")
    p.add_argument("--output-dir", help="training directory (default: $RETRAX_TRAIN_DIR or "
                   "~/train_dir/)")
    p.add_argument("--steps", type=_positive, default=1000, help="training steps (default 1000)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("train", parents=[debug], help="train a model from a JSON/YAML config",
                       description="Trains the config's model on a toy task (reverse, sort, "
                       "copy). Resumes when the output directory holds a checkpoint; `steps` "
                       "is the total to reach. A non-empty directory that holds no retrax "
                       "run is refused unless --force. Example: examples/configs/reverse.json.",
                       epilog=_TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="JSON or YAML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.d_model=64 (value parsed "
                        "as JSON, else a string); repeatable")
    p.add_argument("--output-dir", help="where checkpoints go (overrides output_dir)")
    p.add_argument("--steps", type=_positive, help="total steps (overrides steps)")
    p.add_argument("--force", action="store_true",
                   help="train in an output directory that holds files but no retrax run "
                        "(default: refuse, so that no file retrax did not write is replaced)")
    add_distributed_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", parents=[debug], help="decode from a checkpoint",
                       description="Decodes after --prompt with a checkpoint: a native "
                       ".safetensors, a Trax .pkl.gz, an output directory, or a pretrained "
                       "name (sort-transformer). Prints the generated ids, one row per line.")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--prompt", help='token ids, e.g. "0 3 15 14 9 0" (default: none)')
    p.add_argument("--text", help="a text prompt, encoded with the tokenizer saved next to the "
                   "checkpoint (tokenizer.json); the continuation is printed as text")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="directory holding tokenizer.json (default: next to the checkpoint)")
    p.add_argument("--max-length", type=_positive,
                   help="tokens to generate (default: the trained task's length, else 4)")
    p.add_argument("--temperature", type=_non_negative_float, default=0.0,
                   help="0 is greedy (default); otherwise sample softmax(logits / T)")
    p.add_argument("--top-k", type=_positive, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=_probability, help="nucleus sampling probability mass")
    p.add_argument("--seed", type=_seed, default=0,
                   help="random seed in [0, 2**32 - 1] (default 0)")
    p.add_argument("--eos-id", type=int, default=None,
                   help="stop a row after this id (default: never; the toy tasks use 1 as a token)")
    _add_model_args(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("show", parents=[debug], help="print a model's layers and parameters",
                       description="Prints the layer tree, the layers with weights (path, "
                       "shapes, parameter count) and the total. MODEL_OR_CHECKPOINT: a "
                       "pretrained name, a checkpoint or output directory, or a spec like "
                       "TransformerLM:d_model=32,n_layers=2,vocab_size=32.")
    p.add_argument("model_or_checkpoint", metavar="MODEL_OR_CHECKPOINT")
    p.add_argument("--svg", metavar="FILE", help="also draw the layer tree into this SVG file")
    p.add_argument("--mode", choices=["train", "eval", "predict"], default="train",
                   help="mode to build the model in (default train, as Trax prints it)")
    _add_model_args(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("convert", parents=[debug], help="Trax .pkl.gz <-> native .safetensors",
                       description="Converts a Trax checkpoint (.pkl.gz) into retrax's native "
                       "format (.safetensors), or back; the direction follows the input.")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``retrax`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("missing command; choose one of quickstart, train, sample, show, convert")
    args.debug = getattr(args, "debug", False)  # Given before or after the command.
    return run_reporting_errors(args.func, args, f"retrax {args.command}")
