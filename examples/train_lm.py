"""Train a byte-level TransformerLM on the Python standard library's source code.

    python examples/train_lm.py                     # the run reported in benchmarks/README.md
    python examples/train_lm.py --steps 5 --quick   # a smoke test (the test suite runs it)

Corpus: every ``.py`` file under ``sysconfig.get_paths()['stdlib']`` (without
site-packages), which every Python installation has. A file is held out when
the MD5 of its path relative to the stdlib falls below ``held_out_percent``, so
the split is the same on every machine with the same Python version.

Pipeline (``retrax.data``)::

    TextDocuments(train files, endless, shuffled per pass)   # str per file; bad UTF-8 replaced
    -> Tokenize(ByteTokenizer)                               # UTF-8 bytes, ids 2..257
    -> PackSequences(seq_len)                                # full rows, EOS (1) between files
    -> Shuffle(shuffle_queue) -> Batch(batch_size)
    -> ConcatenateToLMInput() -> AddLossWeights(id_to_mask=0)   # (x, x, weights)

The model is built by ``retrax.models.from_config``. Training uses
``TrainTask``/``EvalTask``/``Loop``; checkpoints (with the data position) and
``config.json`` (this run's config under ``"run"``) go to ``output_dir``, and
running the script again continues from the last one. After training it
measures the held-out loss on a fixed set of batches, samples text from a
predict-mode model loaded from the checkpoint, and writes ``results.json``,
``tokenizer.json`` and ``loss.png`` (when matplotlib is installed) next to the
checkpoints.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np

import retrax as trax
from retrax import data
from retrax import layers as tl
from retrax.supervised import decoding, lr_schedules, training

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "configs", "lm_stdlib.json")

# --quick: a model and batches small enough for a few-second smoke test.
QUICK = {
    "model": {"d_model": 32, "d_ff": 64, "n_layers": 1, "n_heads": 2},
    "task": {"seq_len": 32, "batch_size": 4, "shuffle_queue": 16},
    "eval": {"n_batches": 1, "every": 2, "final_batches": 2},
    "lr_schedule": {"n_warmup_steps": 1},
    "steps": 5,
    "n_steps_per_checkpoint": 5,
}


def merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def lm_pipeline(files: list[str], tok: data.Tokenizer, task: dict, *, seed: int,
                shuffle: bool = True, repeat: bool = True) -> data.Serial:
    """Files -> batches ``(x, x, weights)`` (see ``retrax.data.text_lm_batches``)."""
    return data.text_lm_batches(files, tok, task["seq_len"], task["batch_size"], seed=seed,
                                shuffle=shuffle, repeat=repeat,
                                shuffle_queue=task["shuffle_queue"])


def model_config(config: dict, vocab_size: int) -> dict:
    """The ``{'name', 'kwargs'}`` config of ``config["model"]`` for ``retrax.models.from_config``."""
    kwargs = {k: v for k, v in config["model"].items() if k != "name"}
    return {"name": config["model"].get("name", "TransformerLM"),
            "kwargs": {"vocab_size": vocab_size, "max_len": config["task"]["seq_len"], **kwargs}}


def heldout_loss(model: tl.Layer, batches: list[tuple]) -> float:
    """Mean cross-entropy (nats per token) of ``model`` (eval mode) on fixed batches."""
    forward = jax.jit(lambda w, s, x: model.pure_fn(x, w, s, jax.random.PRNGKey(0))[0])
    total = count = 0.0
    for x, y, w in batches:
        log_probs = np.asarray(forward(model.weights, model.state, x))
        nll = -np.take_along_axis(log_probs, y[..., None].astype(np.int64), -1)[..., 0]
        total += float((nll * w).sum())
        count += float(w.sum())
    return total / count


def plot_losses(history: Any, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no loss plot (pip install matplotlib).")
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, label in (("train", "train"), ("eval", "held-out")):
        points = history.get(mode, "metrics/CrossEntropyLoss")
        if points:
            ax.plot(*zip(*points), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per byte)")
    ax.set_title("TransformerLM on the Python stdlib")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def sample_text(config: dict, model_cfg: dict, output_dir: str, tok: data.Tokenizer) -> str:
    """Loads the checkpoint into a predict-mode model and continues ``sample.prompt``."""
    model = trax.models.from_config(model_cfg, mode="predict")
    model.init_from_file(os.path.join(output_dir, "model.pkl.gz"), weights_only=True,
                         input_signature=trax.shapes.ShapeDtype((1, 1), np.int32))
    spec = config["sample"]
    prompt = tok.encode(spec["prompt"])
    max_length = config["task"]["seq_len"] - len(prompt) - 1  # Positions seen in training.
    tokens = decoding.autoregressive_sample(
        model, np.array([prompt], np.int32), temperature=spec["temperature"],
        max_length=max_length, eos_id=tok.eos_id, seed=spec["seed"])
    return spec["prompt"] + tok.decode(tokens[0])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="JSON run configuration")
    parser.add_argument("--steps", type=int, help="total training steps (default: config)")
    parser.add_argument("--quick", action="store_true", help="tiny model, for a smoke test")
    parser.add_argument("--output-dir", help="checkpoints and results (default: config)")
    args = parser.parse_args(argv)

    with open(args.config) as f:
        config = json.load(f)
    if args.quick:
        config = merge(config, QUICK)
        config["output_dir"] += "_quick"
    if args.steps is not None:
        config["steps"] = args.steps
    output_dir = os.path.expanduser(args.output_dir or config["output_dir"])
    os.makedirs(output_dir, exist_ok=True)
    task, steps = config["task"], config["steps"]

    # Data: the stdlib split by file, byte-level tokens.
    root, files = data.stdlib_files()
    train_files, held_files = data.split_by_hash(root, files, task["held_out_percent"])
    print(f"Corpus: {len(files)} .py files under {root}: {len(train_files)} train, "
          f"{len(held_files)} held out ({sum(map(os.path.getsize, held_files)) / 1e6:.1f} MB).")
    tok = data.ByteTokenizer()
    train_stream = lm_pipeline(train_files, tok, task, seed=task["seed"])()
    eval_stream = lm_pipeline(held_files, tok, task, seed=task["seed"] + 1, shuffle=False)()

    # Model and training.
    model = trax.models.from_config(model_config(config, tok.vocab_size), mode="train")
    opt = config["optimizer"]
    lr = opt["learning_rate"]
    warmup = min(config["lr_schedule"]["n_warmup_steps"], max(steps - 1, 0))
    schedule = lr_schedules.cosine(max(steps, warmup + 1), lr, n_warmup_steps=warmup)
    train_task = training.TrainTask(
        train_stream, getattr(tl, config["loss"])(), getattr(trax.optimizers, opt["name"])(lr),
        lr_schedule=schedule, n_steps_per_checkpoint=config["n_steps_per_checkpoint"])
    eval_task = training.EvalTask(eval_stream, [getattr(tl, m)() for m in config["eval"]["metrics"]],
                                  n_eval_batches=config["eval"]["n_batches"])
    every = config["eval"]["every"]
    loop = training.Loop(model, train_task, eval_tasks=[eval_task], output_dir=output_dir,
                         random_seed=config["random_seed"],
                         eval_at=lambda n: n == 1 or n % every == 0 or n == steps,
                         run_config=config)  # The run's one config file: config.json.
    tok.save(output_dir)  # The vocabulary travels with the checkpoints (once the Loop owns the dir).
    if loop.step:
        print(f"Resuming from step {loop.step} (data position restored).")
    start = time.time()
    loop.run(max(steps - loop.step, 0))
    minutes = (time.time() - start) / 60
    if loop.step % config["n_steps_per_checkpoint"]:
        loop.save_checkpoint("model")

    # Held-out loss on a fixed set of batches (same files, same order every run).
    final = lm_pipeline(held_files, tok, task, seed=1234, shuffle=False, repeat=False)()
    batches = [next(final) for _ in range(config["eval"]["final_batches"])]
    loss = heldout_loss(loop.eval_model, batches)
    sample = sample_text(config, trax.models.config_of(model), output_dir, tok)
    results = {
        "steps": loop.step,
        "train_minutes_this_run": round(minutes, 2),
        "tokens_per_step": task["batch_size"] * task["seq_len"],
        "heldout_tokens": int(sum(float(b[2].sum()) for b in batches)),
        "heldout_loss_nats": round(loss, 4),
        "heldout_bits_per_byte": round(loss / math.log(2), 4),
        "heldout_perplexity_per_byte": round(math.exp(loss), 3),
        "sample": sample,
        "train_data": train_stream.stats(),
        "device": str(jax.devices()[0]),
    }
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    plotted = config.get("plot") and plot_losses(loop.history, os.path.join(output_dir, "loss.png"))

    print(f"\nTrained {loop.step} steps ({minutes:.1f} min in this run) of "
          f"{results['tokens_per_step']} tokens.")
    print(f"Held-out loss {loss:.4f} nats/byte = {results['heldout_bits_per_byte']:.3f} bits per "
          f"byte (perplexity {results['heldout_perplexity_per_byte']:.2f}) on "
          f"{results['heldout_tokens']} held-out tokens.")
    print(f"Training data: {train_stream.report()}")
    print(f"Sample (temperature {config['sample']['temperature']}):\n{sample}")
    print(f"Wrote {output_dir}/results.json" + (", loss.png" if plotted else "") + ".")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
