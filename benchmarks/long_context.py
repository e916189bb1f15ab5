#!/usr/bin/env python3
"""Long sequences: one training step at 1k-64k tokens, Transformer vs Reformer.

Each (model, length) runs in a child process of its own, so peak RSS, compile
time and step time belong to that configuration only. The workload (issue 15):
batch 1, d_model 256, d_ff 1024, 6 layers, 4 heads, vocabulary 256, dropout
0.1, one training step = forward + backward + Adam update.

Models:

- ``transformer``: ``TransformerLM`` (full causal attention);
- ``transformer_remat``: the same with ``remat=True`` (each residual block
  recomputed in the backward pass, see ``tl.RematSerial``);
- ``reformer``: ``ReformerLM`` with LSH attention (``n_hashes=2``, chunks of
  128, one chunk back), reversible layers, feed-forward in chunks of 4096
  positions and axial positional embeddings (``(L / 128, 128)``);
- ``flax``: the Flax peer's TransformerLM (``../shared/peer_bench/bench_flax.py``)
  with its own train step (jax.jit, optax.adam).

Before it runs a step, each child compiles it and asks XLA how much memory it
needs (``memory_analysis``: arguments + outputs + temporaries). A
configuration that would exceed ``--budget-gib`` (default 12) is recorded as
"does not fit: needs X GiB" and not run (the attention matrix of a 64k
Transformer alone is 4 heads x 64k^2 x 4 bytes = 64 GiB per layer). The
default budget, 12 GiB with the process's RSS before the step counted too,
leaves room on a 24 GiB machine for what XLA's estimate leaves out.

``--config-l-memory`` measures instead the peak RSS of config L of
``benchmarks/train.py`` (``common.CONFIGS['L']``) trained by ``Loop`` for a
few steps, with and without ``remat``.

Timing needs a quiet machine; on a busy one run ``--steps 0`` (memory and
compile time only). Results go to ``benchmarks/results/long_context.json`` (and
``long_context_config_L.json``), a plot of memory against length to
``long_context.png`` when matplotlib is installed, an ASCII chart otherwise.

Usage::

    python benchmarks/long_context.py --steps 0            # memory only
    python benchmarks/long_context.py --steps 3            # quiet machine: timing too
    python benchmarks/long_context.py --config-l-memory --steps 3
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MODELS = ("reformer", "transformer", "transformer_remat", "flax")
LENGTHS = (1024, 4096, 16384, 65536)
WORKLOAD = dict(vocab=256, d_model=256, d_ff=1024, n_layers=6, n_heads=4, batch=1,
                dropout=0.1)
LEARNING_RATE = 1e-3
GIB = 2.0 ** 30


# --------------------------------------------------------------------------
# Children
# --------------------------------------------------------------------------


def build_retrax(name: str, length: int) -> Any:
    from retrax import layers as tl
    from retrax import models

    w = WORKLOAD
    if name in ("transformer", "transformer_remat"):
        return models.TransformerLM(
            vocab_size=w["vocab"], d_model=w["d_model"], d_ff=w["d_ff"],
            n_layers=w["n_layers"], n_heads=w["n_heads"], dropout=w["dropout"],
            max_len=length, mode="train", remat=name == "transformer_remat")
    if name == "reformer":
        attention = functools.partial(tl.LSHSelfAttention, chunk_len=128, n_hashes=2,
                                      n_chunks_before=1)
        return models.ReformerLM(
            vocab_size=w["vocab"], d_model=w["d_model"], d_ff=w["d_ff"],
            d_attention_key=w["d_model"] // w["n_heads"],
            d_attention_value=w["d_model"] // w["n_heads"], n_layers=w["n_layers"],
            n_heads=w["n_heads"], dropout=w["dropout"], max_len=length,
            attention_type=attention, pos_type="axial", pos_axial_shape=(length // 128, 128),
            pos_d_axial_embs=(w["d_model"] // 2, w["d_model"] // 2),
            ff_chunk_size=min(length, 4096), mode="train")
    raise ValueError(f"unknown retrax model {name!r}; choose from {MODELS}")


def _predicted_bytes(compiled: Any) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)


def _available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes; None where there is none."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _run_compiled(res: dict, compiled: Any, run_step: Any, steps: int, budget: float) -> None:
    """Records the prediction; runs 1 + ``steps`` steps when it fits in ``budget`` bytes."""
    import jax

    need = _predicted_bytes(compiled)
    res["xla_needs_gib"] = need / GIB
    res["rss_before_step_mib"] = common.peak_rss_mib()
    if need + res["rss_before_step_mib"] * 2 ** 20 > budget:
        res["fits"] = False
        res["note"] = f"does not fit: needs {need / GIB:.1f} GiB (XLA memory_analysis)"
        return
    available = _available_bytes()
    if available is not None and need > available - 2 * GIB:
        res["fits"] = False
        res["note"] = (f"not run: needs {need / GIB:.1f} GiB, the machine has "
                       f"{available / GIB:.1f} GiB available now")
        return
    res["fits"] = True
    t0 = time.perf_counter()
    loss = jax.block_until_ready(run_step())
    res["first_run_s"] = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = jax.block_until_ready(run_step())
        times.append(time.perf_counter() - t0)
    res["loss"] = float(loss)
    if times:
        res["step"] = common.summarize(times)
        res["tokens_per_s"] = WORKLOAD["batch"] * res["length"] / res["step"]["median"]


def child_retrax(name: str, length: int, steps: int, budget: float) -> dict[str, Any]:
    import jax
    import numpy as np

    import retrax as trax
    from retrax import layers as tl
    from retrax import shapes
    from retrax.supervised import train_step as ts

    res: dict[str, Any] = dict(model=name, impl="retrax", length=length, **WORKLOAD)
    model = build_retrax(name, length)
    b = WORKLOAD["batch"]
    rng = np.random.default_rng(0)
    x = rng.integers(1, WORKLOAD["vocab"], (b, length)).astype(np.int32)
    batch = (x, x, np.ones((b, length), np.float32))
    t0 = time.perf_counter()
    weights, state = model.init(shapes.signature(x), rng=trax.fastmath.random.get_prng(0))
    loss_layer = tl.CrossEntropyLoss()
    out_sig = model.output_signature(shapes.signature(x))
    lw, ls = loss_layer.init((out_sig, shapes.signature(x), shapes.signature(batch[2])))
    optimizer = trax.optimizers.Adam(LEARNING_RATE, weight_decay_rate=0.0, eps=1e-8)
    slots, opt_params = optimizer.tree_init(weights)
    opt_params = dict(opt_params, learning_rate=np.float32(LEARNING_RATE))
    fn = ts.make_train_step(model, loss_layer, lw, ls, optimizer,
                            trax.fastmath.random.get_prng(1))
    res["setup_s"] = time.perf_counter() - t0
    res["params"] = int(sum(np.size(a) for a in jax.tree_util.tree_leaves(weights)))
    batch = tuple(jax.device_put(a) for a in batch)
    t0 = time.perf_counter()
    compiled = fn.lower(weights, state, slots, opt_params, batch, 1).compile()
    res["compile_s"] = time.perf_counter() - t0  # trace + lower + XLA compile
    carry = [weights, state, slots, 0]

    def run_step():
        w, s, sl, i = carry
        w, s, sl, loss, _ = compiled(w, s, sl, opt_params, batch, i + 1)
        carry[:] = [w, s, sl, i + 1]
        return loss

    _run_compiled(res, compiled, run_step, steps, budget)
    res["peak_rss_mib"] = common.peak_rss_mib()
    return res


def child_flax(length: int, steps: int, budget: float) -> dict[str, Any]:
    sys.path.insert(0, common.PEER_DIR)
    import bench_flax  # noqa: E402  (the peer script, beside the repository)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    res: dict[str, Any] = dict(model="flax", impl="flax", length=length, **WORKLOAD)
    cfg = dict(vocab=WORKLOAD["vocab"], d_model=WORKLOAD["d_model"], d_ff=WORKLOAD["d_ff"],
               n_layers=WORKLOAD["n_layers"], n_heads=WORKLOAD["n_heads"])
    bench_flax.MAX_LEN = max(length, bench_flax.MAX_LEN)  # its positional table
    t0 = time.perf_counter()
    model = bench_flax.build(cfg, dropout=WORKLOAD["dropout"])
    graphdef, params = nnx.split(model)
    tx = optax.adam(LEARNING_RATE)
    opt_state = tx.init(params)
    base_key = jax.random.key(1)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, WORKLOAD["vocab"], (WORKLOAD["batch"], length)),
                         jnp.int32)
    wts = jnp.ones(tokens.shape, jnp.float32)

    def train_step(params, opt_state, step, tokens, w):  # the peer's step (bench_flax.py)
        def loss_fn(p):
            m = nnx.merge(graphdef, p)
            logp = m(tokens, deterministic=False,
                     rngs=nnx.Rngs(dropout=jax.random.fold_in(base_key, step)))
            nll = -jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
            return jnp.sum(nll * w) / jnp.sum(w)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    res["setup_s"] = time.perf_counter() - t0
    res["params"] = int(sum(np.size(a) for a in jax.tree_util.tree_leaves(params)))
    t0 = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(
        params, opt_state, jnp.int32(0), tokens, wts).compile()
    res["compile_s"] = time.perf_counter() - t0
    carry = [params, opt_state, 0]

    def run_step():
        p, o, i = carry
        p, o, loss = compiled(p, o, jnp.int32(i), tokens, wts)
        carry[:] = [p, o, i + 1]
        return loss

    _run_compiled(res, compiled, run_step, steps, budget)
    res["peak_rss_mib"] = common.peak_rss_mib()
    return res


def child_config_l(remat: bool, steps: int) -> dict[str, Any]:
    """Config L of benchmarks/train.py trained by ``Loop`` (1 + ``steps`` steps)."""
    import jax
    import numpy as np

    import retrax as trax
    from retrax import layers as tl
    from retrax.supervised import training

    cfg = common.CONFIGS["L"]
    b, t, v = cfg["batch"], cfg["seq"], cfg["vocab"]
    rng = np.random.default_rng(0)
    batches = [(x, x, np.ones((b, t), np.float32))
               for x in (rng.integers(1, v, (b, t)).astype(np.int32) for _ in range(4))]

    def data():
        i = 0
        while True:
            yield batches[i % 4]
            i += 1

    model = trax.models.TransformerLM(
        vocab_size=v, d_model=cfg["d_model"], d_ff=cfg["d_ff"], n_layers=cfg["n_layers"],
        n_heads=cfg["n_heads"], dropout=common.DROPOUT, max_len=common.MAX_LEN, mode="train",
        remat=remat)
    task = training.TrainTask(
        labeled_data=data(), loss_layer=tl.CrossEntropyLoss(),
        optimizer=trax.optimizers.Adam(LEARNING_RATE, weight_decay_rate=0.0, eps=1e-8))
    loop = training.Loop(model, task, eval_tasks=None, output_dir=None)
    res: dict[str, Any] = dict(config="L", remat=remat, **cfg)

    def run_one() -> None:
        loop.run(1)
        # Block on the new weights (train.py does the same): run may return early.
        jax.block_until_ready(getattr(loop, "_weights", None))

    t0 = time.perf_counter()
    run_one()
    res["first_step_s"] = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        run_one()
        times.append(time.perf_counter() - t0)
    if times:
        res["step"] = common.summarize(times)
    res["peak_rss_mib"] = common.peak_rss_mib()
    return res


# --------------------------------------------------------------------------
# Parent: one child per configuration, one at a time
# --------------------------------------------------------------------------


def _child_argv(args: argparse.Namespace, *extra: str) -> list[str]:
    return [os.path.abspath(__file__), "--steps", str(args.steps), "--budget-gib",
            str(args.budget_gib), "--n-layers", str(WORKLOAD["n_layers"]), *extra]


def _nice_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", common.REPO)
    env["RETRAX_COMPILATION_CACHE"] = "0"  # compile times are cold compiles
    return env


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    lengths = [int(n) for n in args.lengths.split(",")]
    names = [n for n in args.models.split(",") if n]
    bad = [n for n in names if n not in MODELS]
    if bad:
        raise SystemExit(f"unknown model(s) {bad}; choose from {MODELS}")
    rows = []
    for name in names:
        for length in lengths:
            common.log(f"{name} at {length} tokens ...")
            result, err = common.run_child(
                _child_argv(args, "--child", "train", "--model", name, "--length",
                            str(length)),
                timeout=args.timeout, env=_nice_env())
            if result is None:
                result = dict(model=name, length=length, error=err)
                common.log(err or "")
            rows.append(result)
    return dict(workload=WORKLOAD, lengths=lengths, results=rows,
                machine=common.machine_info(), loadavg=common.loadavg(),
                timing_valid=args.steps > 0 and args.quiet)


def run_config_l(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for remat in (False, True):
        common.log(f"config L, remat={remat} ...")
        result, err = common.run_child(
            _child_argv(args, "--child", "config_l", *(["--remat"] if remat else [])),
            timeout=args.timeout, env=_nice_env())
        rows.append(result if result is not None else dict(remat=remat, error=err))
        if err:
            common.log(err)
    return dict(config=common.CONFIGS["L"], results=rows, machine=common.machine_info(),
                loadavg=common.loadavg(), timing_valid=args.steps > 0 and args.quiet)


def _gib(mib: float | None) -> str:
    return "-" if mib is None else f"{mib / 1024:.2f} GiB"


def sweep_table(out: dict[str, Any]) -> str:
    rows = []
    for r in out["results"]:
        if r.get("error"):
            status = "error: " + r["error"].strip().splitlines()[-1][:60]
        elif not r.get("fits", True):
            status = r.get("note", "does not fit")
        else:
            status = "ok"
        step = r.get("step", {}).get("median") if r.get("step") else None
        rows.append([r["model"], r["length"], _gib(r.get("peak_rss_mib"))
                     if r.get("fits") else "-",
                     f"{r['xla_needs_gib']:.2f} GiB" if r.get("xla_needs_gib") else "-",
                     common.fmt_s(r.get("compile_s")), common.fmt_s(step), status])
    return common.table(["model", "length", "peak RSS", "XLA needs", "compile", "step",
                         "status"], rows)


def ascii_chart(out: dict[str, Any], width: int = 50) -> str:
    """Peak RSS against length, one bar per run that fitted."""
    runs = [r for r in out["results"] if r.get("fits") and r.get("peak_rss_mib")]
    if not runs:
        return ""
    top = max(r["peak_rss_mib"] for r in runs)
    lines = ["peak RSS (each # = %.0f MiB)" % (top / width)]
    for r in runs:
        bar = "#" * max(1, round(width * r["peak_rss_mib"] / top))
        lines.append(f"{r['model']:>18} {r['length']:>6} {bar} {_gib(r['peak_rss_mib'])}")
    return "\n".join(lines)


def plot(out: dict[str, Any], path: str) -> str | None:
    """Writes a PNG of peak RSS against length; None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["model"] for r in out["results"]):
        runs = [r for r in out["results"]
                if r["model"] == name and r.get("fits") and r.get("peak_rss_mib")]
        if runs:
            ax.plot([r["length"] for r in runs], [r["peak_rss_mib"] / 1024 for r in runs],
                    marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("sequence length (tokens, batch 1)")
    ax.set_ylabel("peak RSS of one training step (GiB)")
    ax.set_title("Peak memory of one training step (batch 1, d_model 256, 6 layers)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default=",".join(str(n) for n in LENGTHS))
    ap.add_argument("--models", default=",".join(MODELS), help=f"subset of {MODELS}")
    ap.add_argument("--steps", type=int, default=0,
                    help="timed steps after the first (0: memory and compile time only)")
    ap.add_argument("--quiet", action="store_true",
                    help="declare the machine quiet: step times are recorded as valid")
    ap.add_argument("--budget-gib", type=float, default=12.0,
                    help="refuse a configuration XLA says needs more than this")
    ap.add_argument("--config-l-memory", action="store_true",
                    help="config L trained by Loop with and without remat instead")
    ap.add_argument("--n-layers", type=int, default=WORKLOAD["n_layers"],
                    help="layers of every model (e.g. 2 and 12 to compare reversible depth)")
    ap.add_argument("--timeout", type=float, default=1800, help="per child process, seconds")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/...)")
    ap.add_argument("--update", action="store_true",
                    help="replace only the rows of the configurations run in the JSON file")
    ap.add_argument("--child", choices=["train", "config_l"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--remat", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    budget = args.budget_gib * GIB
    WORKLOAD["n_layers"] = args.n_layers  # the depth comparison of reversible layers uses it

    if args.child == "train":
        res = (child_flax(args.length, args.steps, budget) if args.model == "flax"
               else child_retrax(args.model, args.length, args.steps, budget))
        print(json.dumps(res, default=str))
        return
    if args.child == "config_l":
        print(json.dumps(child_config_l(args.remat, args.steps), default=str))
        return

    if args.config_l_memory:
        out = run_config_l(args)
        path = common.write_json(args.out or os.path.join(
            common.RESULTS_DIR, "long_context_config_L.json"), out)
        rows = [[("remat" if r.get("remat") else "no remat"), _gib(r.get("peak_rss_mib")),
                 common.fmt_s(r.get("first_step_s")),
                 common.fmt_s((r.get("step") or {}).get("median"))] for r in out["results"]]
        print(common.table(["config L (Loop)", "peak RSS", "first step", "step"], rows))
        print(f"wrote {path}")
        return
    out = run_sweep(args)
    path = args.out or os.path.join(common.RESULTS_DIR, "long_context.json")
    if args.update and os.path.exists(path):
        # Keep the earlier rows of the (model, length) pairs not run this time.
        with open(path) as f:
            old = json.load(f)
        new_keys = {(r["model"], r["length"]) for r in out["results"]}
        kept = [r for r in old.get("results", []) if (r["model"], r["length"]) not in new_keys]
        out["results"] = sorted(kept + out["results"], key=lambda r: (
            MODELS.index(r["model"]) if r["model"] in MODELS else len(MODELS), r["length"]))
        out["lengths"] = sorted({r["length"] for r in out["results"]})
    path = common.write_json(path, out)
    print(sweep_table(out))
    png = plot(out, os.path.splitext(path)[0] + ".png")
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    if png is None:
        print(ascii_chart(out))


if __name__ == "__main__":
    main()
