"""``retrax train CONFIG``: trains the config's model on a toy or text task in a ``Loop``.

The model is built by :func:`retrax.models.from_config`; the resolved config
(see :mod:`retrax.cli.train_config`) goes to the Loop as its ``run_config``, so
the run has one config file: ``config.json`` in the output directory.
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
    check_toy_task_fits,
    resolve_train_config,
)

__all__ = ["cmd_train", "text_lm_data"]


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

    from retrax import data, models, optimizers
    from retrax import layers as tl
    from retrax.supervised import lr_schedules, training
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
                             eval_at=eval_at, overwrite=args.force, run_config=run)
    except (FileExistsError, NotADirectoryError, PermissionError, OutputDirLockedError) as err:
        # Foreign files in the directory (--force overrides), another run holding it, or a
        # path that cannot be a writable directory.
        raise UsageError(one_line(err)) from None
    if tokenizer is not None:  # next to the checkpoints, for `retrax sample --text`
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
