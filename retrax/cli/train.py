"""``retrax train CONFIG``: trains the config's model on a toy or text task in a ``Loop``.

The model is built by :func:`retrax.models.from_config`; the resolved config
(see :mod:`retrax.cli.train_config`) goes to the Loop as its ``run_config``, so
the run has one config file: ``config.json`` in the output directory.

Several processes (one per host, or several on one machine) train as one
when each runs the same command with ``--coordinator HOST:PORT
--num-processes N --process-id I`` (or ``--distributed auto`` where JAX finds
the cluster: SLURM, Cloud TPU pods, Open MPI). ``task.batch_size`` is then the
global batch: every process draws the same batches and feeds its own rows
(see :mod:`retrax.supervised.distributed`); process 0 writes the checkpoints.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from retrax.cli.config_files import apply_override, load_config
from retrax.cli.errors import UsageError, check_output_path, one_line
from retrax.cli.model_specs import build_model
from retrax.cli.train_config import (
    TEXT_TASKS,
    TOY_TASKS,
    check_batch_splits,
    check_toy_task_fits,
    resolve_distributed,
    resolve_train_config,
)

__all__ = ["cmd_train", "text_lm_data", "add_distributed_arguments"]


def _int_at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """``retrax train``'s flags for several processes training as one."""
    group = parser.add_argument_group(
        "several processes (hosts) training as one",
        "Start the same command in every process; task.batch_size is the global batch, each "
        "process feeds its share and process 0 writes the checkpoints. The output directory "
        "must be readable by every process (a shared file system) to resume.")
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help="process 0's address, the same in every process (with "
                            "--num-processes and --process-id)")
    group.add_argument("--num-processes", type=_int_at_least(1), metavar="N",
                       help="how many processes train together")
    group.add_argument("--process-id", type=_int_at_least(0), metavar="I",
                       help="this process's number, 0 to N-1")
    group.add_argument("--distributed", choices=["auto"],
                       help="auto: jax.distributed.initialize() finds the cluster itself "
                            "(SLURM, Cloud TPU pods, Open MPI)")


def _join_processes(settings: dict) -> None:
    """Starts JAX's distributed runtime (before anything touches a device)."""
    from retrax.supervised import distributed

    try:
        distributed.initialize(**settings)
    except ValueError as err:
        if settings:
            raise
        raise UsageError(f"--distributed auto found no cluster ({one_line(err)}); outside "
                         f"SLURM, Cloud TPU or Open MPI pass --coordinator HOST:PORT "
                         f"--num-processes N --process-id I.") from None


def _named(section: str, value: Any, namespace: Any, names: Sequence[str], what: str) -> Any:
    """Calls ``namespace.<name>(**kwargs)`` for ``{"name": ..., **kwargs}`` (or a bare name)."""
    import json

    spec = {"name": value} if isinstance(value, str) else value
    if not isinstance(spec, dict) or spec.get("name") not in names:
        name = spec.get("name") if isinstance(spec, dict) else value
        raise UsageError(f"config {section}: unknown {what} {json.dumps(name)}; "
                         f"available: {sorted(names)}.")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    try:
        return getattr(namespace, spec["name"])(**kwargs)
    except (TypeError, ValueError) as err:
        raise UsageError(f"config {section}: {spec['name']}(**{json.dumps(kwargs)}): "
                         f"{one_line(err)}") from None


def text_lm_data(task: dict) -> tuple[Any, Any, dict]:
    """``(make_data(seed, held_out=False), tokenizer, model defaults)`` for a text task."""
    from retrax import data

    corpus = "stdlib" if task["name"] == "stdlib_lm" else task["corpus"]
    try:
        files = data.corpus_files(corpus)
        tokenizer = data.make_tokenizer(task.get("tokenizer", "byte"))
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"config task: {one_line(err)}") from None
    root = data.stdlib_files()[0] if corpus == "stdlib" else os.path.commonpath(
        [os.path.dirname(f) for f in files])
    train_files, held_files = data.split_by_hash(root, files, task.get("held_out_percent", 10))
    if not train_files or not held_files:
        raise UsageError(f"config task: the corpus ({len(files)} files) gives no train or no "
                         f"held-out files; add files or change held_out_percent.")
    seq_len, batch_size = task.get("seq_len", 128), task.get("batch_size", 16)

    def make_data(seed: int, held_out: bool = False) -> Any:
        return data.text_lm_batches(held_files if held_out else train_files, tokenizer,
                                    seq_len, batch_size, seed=seed, shuffle=not held_out,
                                    shuffle_queue=task.get("shuffle_queue", 1024))()

    return make_data, tokenizer, {"vocab_size": tokenizer.vocab_size, "max_len": seq_len}


def _optimizer_names() -> list[str]:
    from retrax import optimizers
    from retrax.optimizers.base import Optimizer

    return [n for n in optimizers.__all__
            if isinstance(getattr(optimizers, n), type)
            and issubclass(getattr(optimizers, n), Optimizer) and n != "Optimizer"]


def cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    for assignment in args.set or []:
        apply_override(config, assignment)
    if args.steps is not None:
        config["steps"] = args.steps
    if args.output_dir is not None:
        config["output_dir"] = args.output_dir
    run = resolve_train_config(config)
    processes = resolve_distributed(getattr(args, "coordinator", None),
                                    getattr(args, "num_processes", None),
                                    getattr(args, "process_id", None),
                                    getattr(args, "distributed", None))
    if processes is not None:
        _join_processes(processes)

    import jax

    from retrax import data, models, optimizers
    from retrax import layers as tl
    from retrax.supervised import distributed, lr_schedules, training
    from retrax.supervised.run_dir import OutputDirLockedError

    output_dir = os.path.expanduser(run["output_dir"])
    tokenizer = None
    if run["task"]["name"] in TEXT_TASKS:
        make_data, tokenizer, model_defaults = text_lm_data(run["task"])
        model_config = dict(run["model"]) if isinstance(run["model"], dict) else run["model"]
        if isinstance(model_config, dict):
            target = model_config.setdefault("kwargs", {}) if "kwargs" in model_config \
                else model_config
            for key, value in model_defaults.items():
                target.setdefault(key, value)
        run["model"] = model_config
        task_kwargs = {"seed": run["task"].get("seed", 0)}
        eval_kwargs = {"held_out": True}
    else:
        task_kwargs = {k: v for k, v in run["task"].items() if k != "name"}
        make_data = getattr(data, TOY_TASKS[run["task"]["name"]])
        eval_kwargs = {}
    if jax.process_count() > 1:  # each process feeds its rows of every global batch
        check_batch_splits(run["task"], jax.process_count(), 16)
        make_global_data = make_data

        def make_data(**kwargs: Any) -> Any:
            return distributed.local_batches(make_global_data(**kwargs))
    model = build_model(run["model"], "train", where="config model")
    if run["task"]["name"] in TOY_TASKS:
        check_toy_task_fits(run["task"], models.config_of(model))
    optimizer = _named("optimizer", run["optimizer"], optimizers, _optimizer_names(), "optimizer")
    schedule = None
    if isinstance(run["lr_schedule"], dict) and run["lr_schedule"].get("name") == "cosine":
        # Like examples/train_lm.py: decay over the run, from the optimizer's rate.
        run["lr_schedule"] = {"n_steps": run["steps"], **run["lr_schedule"]}
        if isinstance(run["optimizer"], dict) and "learning_rate" in run["optimizer"]:
            run["lr_schedule"].setdefault("max_value", run["optimizer"]["learning_rate"])
    if run["lr_schedule"] is not None:
        schedule = _named("lr_schedule", run["lr_schedule"], lr_schedules,
                          lr_schedules.__all__, "schedule")
    layer_names = [n for n in dir(tl) if n[:1].isupper()]
    loss = _named("loss", run["loss"], tl, layer_names, "loss layer")
    train_task = training.TrainTask(make_data(**task_kwargs), loss, optimizer,
                                    lr_schedule=schedule,
                                    n_steps_per_checkpoint=run["n_steps_per_checkpoint"])
    eval_tasks = []
    if run["eval"] is not None:
        seed = run["eval"]["seed"]
        seed = task_kwargs.get("seed", 0) + 1 if seed is None else seed
        metrics = [_named("eval.metrics", m, tl, layer_names, "metric layer")
                   for m in run["eval"]["metrics"]]
        eval_data = make_data(**{**task_kwargs, "seed": seed, **eval_kwargs})
        eval_tasks.append(training.EvalTask(eval_data, metrics,
                                            n_eval_batches=run["eval"]["n_batches"]))
    callbacks = []
    if run["plot"]:
        from retrax.visualize import PlotHistoryCallback

        callbacks.append(PlotHistoryCallback.configured(
            filename=run["plot"] if isinstance(run["plot"], str) else "history.png"))
    every = (run["eval"] or {}).get("every")
    eval_at = None if every is None else (lambda step: step == 1 or step % every == 0)
    check_output_path(output_dir, "output directory", directory=True)
    try:
        loop = training.Loop(model, train_task, eval_tasks=eval_tasks, output_dir=output_dir,
                             random_seed=run["random_seed"], callbacks=callbacks,
                             eval_at=eval_at, overwrite=args.force, run_config=run,
                             sharding=run["sharding"], compute_dtype=run["compute_dtype"])
    except (FileExistsError, NotADirectoryError, PermissionError, OutputDirLockedError) as err:
        # Foreign files in the directory (--force overrides), another run holding it, or a
        # path that cannot be a writable directory.
        raise UsageError(one_line(err)) from None
    if tokenizer is not None and loop.is_chief:  # next to the checkpoints, for `retrax sample`
        tokenizer.save(output_dir)
    remaining = run["steps"] - loop.step
    if remaining <= 0:
        print(f"{output_dir} is already at step {loop.step} (steps={run['steps']}); nothing to do.")
        return 0
    if loop.step:
        print(f"Resuming from step {loop.step} in {output_dir}.")
    loop.run(remaining)
    print(f"Trained to step {loop.step}; checkpoints in {output_dir}")
    return 0
