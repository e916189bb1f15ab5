"""The config of ``retrax train``: its sections, defaults and checks.

:func:`resolve_train_config` fills the defaults of ``TRAIN_DEFAULTS`` and
refuses, naming the key, anything the run could not use. The resolved config
is what the run saves (under ``"run"`` in the output directory's
``config.json``) and what ``retrax sample`` reads back.

>>> seed_problem(2**32)
'must be in [0, 2**32 - 1] = [0, 4294967295]'

``sharding`` and ``compute_dtype`` go to the Loop as they are (null: its
default, or the value a resumed run recorded):

>>> loop_choices()
{'sharding': ('replicated', 'fsdp', 'tensor:K'), 'compute_dtype': ('float32', 'bfloat16')}

Several processes (``--coordinator``/``--num-processes``/``--process-id``, or
``--distributed auto``) are checked by :func:`resolve_distributed`:

>>> resolve_distributed("10.0.0.1:1234", 2, 1, None)
{'coordinator': '10.0.0.1:1234', 'num_processes': 2, 'process_id': 1}
>>> resolve_distributed(None, None, None, "auto")
{}
>>> resolve_distributed(None, None, None, None) is None
True
"""

from __future__ import annotations

import json
from typing import Any

from retrax.cli.errors import UsageError

__all__ = ["TRAIN_DEFAULTS", "TOY_TASKS", "TEXT_TASKS", "SEED_LIMIT", "seed_problem",
           "resolve_train_config", "check_toy_task_fits", "resolve_distributed",
           "check_batch_splits", "loop_choices"]

TRAIN_DEFAULTS: dict[str, Any] = {
    "model": None,  # {"name": "TransformerLM", "vocab_size": 32, ...}
    "task": None,  # {"name": "reverse" | "sort" | "copy", "batch_size", "length", "seed"}
    "optimizer": {"name": "Adam", "learning_rate": 0.01},
    "lr_schedule": None,  # {"name": "warmup_and_rsqrt_decay", "n_warmup_steps": ..., ...}
    "loss": "CrossEntropyLoss",
    "eval": {"metrics": ["CrossEntropyLoss", "Accuracy"], "n_batches": 10, "seed": None,
             "every": None,  # evaluate every N steps (default: at each checkpoint)
             "final_batches": None},  # read by examples/train_lm.py only
    "steps": 1000,
    "n_steps_per_checkpoint": 100,
    "random_seed": 0,
    "output_dir": None,
    "plot": False,
    "sharding": None,  # "replicated" | "fsdp" | "tensor:K"; null: replicated, or what a resumed run recorded
    "compute_dtype": None,  # "float32" | "bfloat16"; null: float32, or the resumed run's
    "sample": None,  # prompt settings read by examples/train_lm.py only
}
# The toy tasks, by config name: the function of retrax.data that makes their batches.
TOY_TASKS = {"reverse": "reverse_ints_task", "sort": "sort_ints_task", "copy": "copy_ints_task"}
_TOY_TASK_KEYS = {"name", "batch_size", "length", "seed"}
_TOY_VOCAB = 31  # The toy tasks' ids: 0 (separator) and 1..30.
# Language modelling on text files: "text_lm" (corpus = a glob) or "stdlib_lm" (the
# .py files of the Python standard library), split by file into train / held-out.
TEXT_TASKS = frozenset({"text_lm", "stdlib_lm"})
_TEXT_TASK_KEYS = {"name", "corpus", "tokenizer", "seq_len", "batch_size", "held_out_percent",
                   "shuffle_queue", "seed"}

# Seeds become JAX PRNG keys, which hold 32 bits: a larger seed would be cut (and alias a
# smaller one) or overflow, and a negative one would wrap around.
SEED_LIMIT = 2**32


def seed_problem(value: Any) -> str | None:
    """Why ``value`` is not a seed (None when it is one)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return "must be an integer"
    if not 0 <= value < SEED_LIMIT:
        return f"must be in [0, 2**32 - 1] = [0, {SEED_LIMIT - 1}]"
    return None


def _check_seed(section: str, value: Any) -> int:
    problem = seed_problem(value)
    if problem:
        raise UsageError(f"config {section} {problem}; got {json.dumps(value)}.")
    return value


def _check_keys(section: str, got: dict, allowed: set[str]) -> None:
    unknown = sorted(set(got) - allowed)
    if unknown:
        raise UsageError(f"config {section}: unknown key(s) {unknown}; allowed: {sorted(allowed)}.")


def _positive_int(section: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UsageError(f"config {section} must be a positive integer; got {json.dumps(value)}.")
    return value


def loop_choices() -> dict[str, tuple[str, ...]]:
    """The values ``sharding`` and ``compute_dtype`` may take (the Loop's own lists)."""
    from retrax.supervised import loop_settings

    return dict(loop_settings.CHOICES)


def _check_loop_choice(key: str, value: Any) -> None:
    """Refuses a ``sharding`` / ``compute_dtype`` the Loop does not offer (null is fine)."""
    from retrax.supervised import loop_settings

    choices = loop_choices()[key]
    if value is None:
        return
    try:
        if loop_settings.check_setting(key, value) == value:
            return
    except ValueError:
        pass
    hint = {"sharding": "replicated: every device holds all weights; fsdp: weights and "
                        "optimizer slots split over the devices; tensor:K (K a positive "
                        "integer dividing the device count, e.g. tensor:2): attention and "
                        "feed-forward weights split over K devices",
            "compute_dtype": "bfloat16: float32 master weights, forward and backward in "
                             "bfloat16"}[key]
    raise UsageError(f"config {key} must be one of {json.dumps(list(choices))} or null (the "
                     f"default, or what a resumed run recorded) ({hint}); got "
                     f"{json.dumps(value)}. Set it with --set {key}=VALUE.")


def resolve_train_config(config: dict) -> dict:
    """Fills defaults and checks a train config; raises UsageError naming the bad key."""
    _check_keys("", config, set(TRAIN_DEFAULTS))
    run = {k: config.get(k, v) for k, v in TRAIN_DEFAULTS.items()}
    if config.get("eval") is not None:
        if not isinstance(config["eval"], dict):
            raise UsageError("config eval must be a section (or null for no evaluation).")
        _check_keys("eval", config["eval"], set(TRAIN_DEFAULTS["eval"]))
        run["eval"] = {**TRAIN_DEFAULTS["eval"], **config["eval"]}
    if run["model"] is None:
        raise UsageError('config needs a "model" section, e.g. {"name": "TransformerLM", '
                         '"vocab_size": 32, "d_model": 32}.')
    task = run["task"]
    names = sorted(set(TOY_TASKS) | TEXT_TASKS)
    if not isinstance(task, dict) or task.get("name") not in names:
        raise UsageError(f'config needs a "task" section with "name" one of {names}; '
                         f"got {json.dumps(task)}.")
    _check_keys("task", task, _TEXT_TASK_KEYS if task["name"] in TEXT_TASKS else _TOY_TASK_KEYS)
    if task["name"] == "text_lm" and not task.get("corpus"):
        raise UsageError('config task text_lm needs "corpus": a glob of text files.')
    for key in ("batch_size", "length", "seq_len"):
        if key in task:
            _positive_int(f"task.{key}", task[key])
    if "seed" in task:
        _check_seed("task.seed", task["seed"])
    for key in ("steps", "n_steps_per_checkpoint"):
        _positive_int(key, run[key])
    _check_seed("random_seed", run["random_seed"])
    if run["eval"] is not None:
        evals = run["eval"]
        _positive_int("eval.n_batches", evals["n_batches"])
        for key in ("every", "final_batches"):  # null: the default
            if evals[key] is not None:
                _positive_int(f"eval.{key}", evals[key])
        if evals["seed"] is not None:
            _check_seed("eval.seed", evals["seed"])
        metrics = evals["metrics"]
        if not isinstance(metrics, list) or not metrics:
            raise UsageError(f'config eval.metrics must be a non-empty list of metric layer '
                             f'names, e.g. ["CrossEntropyLoss", "Accuracy"]; got '
                             f'{json.dumps(metrics)}.')
    if not isinstance(run["plot"], (bool, str)) or run["plot"] == "":
        raise UsageError(f"config plot must be true, false or a file name such as "
                         f"\"history.png\"; got {json.dumps(run['plot'])}.")
    _check_loop_choice("sharding", run["sharding"])
    _check_loop_choice("compute_dtype", run["compute_dtype"])
    if not run["output_dir"]:
        raise UsageError("no output directory: pass --output-dir DIR or set output_dir in the config.")
    if not isinstance(run["output_dir"], str):
        raise UsageError(f"config output_dir must be a directory path (a string); got "
                         f"{json.dumps(run['output_dir'])}. Fix it or pass --output-dir DIR.")
    return run


def check_toy_task_fits(task: dict, model_config: dict) -> None:
    """Refuses a toy task whose ids or sequences the model cannot hold, before any work.

    ``model_config``: the built model's full config (:func:`retrax.models.config_of`).
    The toy tasks' rows are ``[0, source, 0, answer]``: ``2 * length + 2`` ids in ``[0, 31)``.
    """
    name, length = task["name"], task.get("length", 4)
    vocab = model_config["kwargs"].get("vocab_size")
    max_len = model_config["kwargs"].get("max_len")
    if isinstance(vocab, int) and vocab < _TOY_VOCAB:
        raise UsageError(f"config model vocab_size is {vocab} but the {name} task's token ids "
                         f"go up to {_TOY_VOCAB - 1}; set model.vocab_size to {_TOY_VOCAB} or "
                         f"more (the examples use 32).")
    if isinstance(max_len, int) and 2 * length + 2 > max_len:
        raise UsageError(f"config task.length is {length}: the {name} task's rows hold "
                         f"2 * length + 2 = {2 * length + 2} tokens but the model's max_len is "
                         f"{max_len}; set task.length to {(max_len - 2) // 2} or less, or raise "
                         f"model.max_len.")


def resolve_distributed(coordinator: str | None, num_processes: int | None,
                        process_id: int | None, distributed: str | None) -> dict | None:
    """The ``jax.distributed.initialize`` arguments of ``retrax train``'s flags.

    None: one process (no flag given). ``{}``: ``--distributed auto`` (JAX finds
    the cluster: SLURM, Cloud TPU pods, Open MPI). Otherwise the three of
    ``--coordinator``, ``--num-processes`` and ``--process-id``, all needed.
    """
    flags = {"--coordinator": coordinator, "--num-processes": num_processes,
             "--process-id": process_id}
    given = [name for name, value in flags.items() if value is not None]
    if distributed is not None:
        if given:
            raise UsageError(f"--distributed {distributed} finds the cluster itself; drop "
                             f"{', '.join(given)} (or drop --distributed and give all three).")
        return {}
    if not given:
        return None
    missing = [name for name in flags if name not in given]
    if missing:
        raise UsageError(f"{', '.join(given)} also needs {', '.join(missing)}: give "
                         f"--coordinator HOST:PORT --num-processes N --process-id I together "
                         f"(or --distributed auto on SLURM / Cloud TPU).")
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--coordinator must be HOST:PORT, process 0's address (e.g. "
                         f"10.0.0.1:1234); got {coordinator!r}.")
    if not 0 <= process_id < num_processes:
        raise UsageError(f"--process-id must be in [0, {num_processes - 1}] for "
                         f"--num-processes {num_processes}; got {process_id}.")
    return {"coordinator": coordinator, "num_processes": num_processes,
            "process_id": process_id}


def check_batch_splits(task: dict, num_processes: int, default_batch_size: int) -> None:
    """Refuses a global batch that the processes cannot share equally."""
    batch_size = task.get("batch_size", default_batch_size)
    if batch_size % num_processes:
        raise UsageError(f"config task.batch_size is {batch_size}, the global batch, which "
                         f"the {num_processes} processes share equally; set it to a multiple "
                         f"of {num_processes}.")
