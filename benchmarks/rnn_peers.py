#!/usr/bin/env python3
"""Peers of ``benchmarks/rnn.py``: Flax NNX and PyTorch versions of its workloads.

Run by ``rnn.py`` as child processes (``rnn_peers.py --child flax|torch
--spec JSON ...``), one per measurement, each printing one JSON line; runnable
alone the same way. The workload spec (sizes) comes from ``rnn.py``, so every
implementation trains exactly the same shapes on the same batches
(:func:`make_batches`, NumPy seed 0, 4 batches cycled).

Language models (``kind: "lm"``), Trax's ``RNNLM`` / ``GRULM`` layer for layer:
shift right by one (pad 0), embedding, dropout (``RNNLM``: 0.1 in training;
``GRULM`` has none), ``n_layers`` recurrent layers of ``d_model`` units,
dense to the vocabulary; loss: weighted mean cross-entropy on the logits;
Adam(lr 1e-3, eps 1e-8, no weight decay).

* Flax NNX: ``nnx.RNN`` over ``nnx.LSTMCell`` (8 separate gate products per
  step), ``nnx.OptimizedLSTMCell`` (fused: one input and one hidden product per
  step) or ``nnx.GRUCell``, zero initial carry; ``optax.adam``. Variant
  ``jit``: a functional step (``nnx.split`` / ``nnx.merge``) under
  ``jax.jit`` with the parameters and optimizer state donated (what the
  TransformerLM peer of ``benchmarks/train.py`` found fastest); variant
  ``nnx_jit``: ``nnx.jit`` + ``nnx.Optimizer``.
* PyTorch: ``nn.LSTM`` / ``nn.GRU(num_layers, batch_first=True)``: on CPU the
  LSTM runs oneDNN's fused RNN primitive (``aten::mkldnn_rnn_layer``), the GRU
  ATen's native CPU loop; the kernels seen are recorded (``torch_ops``).
  ``torch.optim.Adam(fused=True)``. Variant ``eager`` (the key peer) or
  ``compile`` (``torch.compile`` of the model, cold inductor cache).

ResNet (``kind: "resnet"``, Flax only): Trax's ``WideResnet`` (pre-activation
blocks ``BatchNorm, Relu, Conv 3x3, BatchNorm, Relu, Conv 3x3``; per group a
first block with a 3x3 conv shortcut, then the other blocks in ONE residual,
or ``x + x`` with one block per group, as Trax builds it; widths 16k, 32k,
64k; BatchNorm momentum 0.9, eps 1e-5, batch statistics in training; 8x8
average pool, dense), NHWC, ``nnx.Conv`` with bias, ``nnx.BatchNorm``.

Timing (:func:`time_steps`): the first step (trace + compile + one step),
warm-up steps, then each timed step is stopped only after its results are
ready (JAX: ``jax.block_until_ready`` on the loss and the new parameters;
PyTorch: ``loss.item()`` after ``optimizer.step()``), and a pipelined run
without per-step blocking. Peak RSS is the child's ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

LEARNING_RATE = 1e-3
ADAM_EPS = 1e-8
N_BATCHES = 4


# --------------------------------------------------------------------------
# Shared by every implementation (rnn.py's retrax child too)
# --------------------------------------------------------------------------


def make_batches(spec: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
    """``N_BATCHES`` NumPy ``(inputs, targets, weights)`` batches, seed 0.

    ``lm``: random tokens in ``[1, vocab)`` ``(B, T)`` int32, targets = inputs
    (the model shifts right), weights of ones. ``resnet``: standard-normal
    float32 images ``(B, H, W, C)``, int32 labels ``(B,)``, weights of ones.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    b = spec["batch"]
    out = []
    for _ in range(N_BATCHES):
        if spec["kind"] == "lm":
            x = rng.integers(1, spec["vocab"], (b, spec["seq"])).astype(np.int32)
            out.append((x, x, np.ones(x.shape, np.float32)))
        else:
            s = spec["image"]
            x = rng.standard_normal((b, s, s, spec["channels"])).astype(np.float32)
            y = rng.integers(0, spec["n_classes"], (b,)).astype(np.int32)
            out.append((x, y, np.ones((b,), np.float32)))
    return out


def items_per_step(spec: dict[str, Any]) -> int:
    """Tokens (``lm``) or images (``resnet``) in one batch."""
    return spec["batch"] * (spec["seq"] if spec["kind"] == "lm" else 1)


def lm_train_flops(spec: dict[str, Any]) -> int:
    """Matmul FLOPs of one LM train step: ``3 * 2 * B * T * N_matmul`` (forward + backward).

    ``N_matmul = n_layers * (D + D) * g * D + D * V`` with ``g = 4`` gates (LSTM)
    or 3 (GRU): the recurrent products and the output dense; the embedding is a
    gather and elementwise gate math is not counted.
    """
    d, v, n = spec["d_model"], spec["vocab"], spec["n_layers"]
    g = 4 if spec["cell"] == "lstm" else 3
    n_matmul = n * 2 * d * g * d + d * v
    return 6 * n_matmul * spec["batch"] * spec["seq"]


def jsonable(x: Any) -> Any:
    """``json.dumps`` fallback: NumPy / JAX scalars as floats, anything else as its repr."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return repr(x)


def time_steps(step: Callable[[int], Any], block: Callable[[Any], Any], warm: int, timed: int,
               pipelined: int) -> dict[str, Any]:
    """Times ``step(i)`` (``i`` counts from 0, after any first step already taken elsewhere).

    ``block(out)`` must wait until ``out`` (the step's results) is computed.
    Returns ``step`` (median/min/max of the ``timed`` blocking steps), the
    pipelined seconds per step (``pipelined`` steps, one block at the end) and
    ``last`` (the last step's output).
    """
    i = 0

    def one() -> Any:
        nonlocal i
        out = step(i)
        i += 1
        return out

    last = None
    for _ in range(warm):
        last = block(one())
    times = []
    for _ in range(timed):
        t0 = time.perf_counter()
        last = block(one())
        times.append(time.perf_counter() - t0)
    res: dict[str, Any] = dict(step=common.summarize(times), warm_steps=warm, timed_steps=timed)
    if pipelined:
        t0 = time.perf_counter()
        out = None
        for _ in range(pipelined):
            out = one()
        last = block(out)
        res["pipelined_step_s"] = (time.perf_counter() - t0) / pipelined
    res["last"] = last
    return res


# --------------------------------------------------------------------------
# Flax NNX
# --------------------------------------------------------------------------


def _flax_lm(spec: dict[str, Any], cell_name: str, seed: int = 0) -> Any:
    import jax.numpy as jnp
    from flax import nnx

    cells = dict(lstm=nnx.LSTMCell, lstm_optimized=nnx.OptimizedLSTMCell, gru=nnx.GRUCell)
    cell_cls = cells[cell_name]
    v, d, n = spec["vocab"], spec["d_model"], spec["n_layers"]

    class RecurrentLM(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.embed = nnx.Embed(v, d, rngs=rngs)
            self.drop = nnx.Dropout(spec["dropout"]) if spec["dropout"] else None
            self.rnns = nnx.List([nnx.RNN(cell_cls(d, d, rngs=rngs)) for _ in range(n)])
            self.out = nnx.Linear(d, v, rngs=rngs)

        def __call__(self, tokens: Any, rngs: Any = None) -> Any:
            x = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]   # Trax's ShiftRight
            x = self.embed(x)
            if self.drop is not None:
                x = self.drop(x, deterministic=False, rngs=rngs)
            zeros = jnp.zeros((x.shape[0], d), x.dtype)
            carry = zeros if cell_name == "gru" else (zeros, zeros)
            for rnn in self.rnns:
                x = rnn(x, initial_carry=carry)
            return self.out(x)

    return RecurrentLM(nnx.Rngs(seed))


def _flax_wide_resnet(spec: dict[str, Any], seed: int = 0) -> Any:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    def bn(c: int, rngs: nnx.Rngs) -> Any:
        return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, rngs=rngs)

    def conv(cin: int, cout: int, strides: int, rngs: nnx.Rngs) -> Any:
        return nnx.Conv(cin, cout, (3, 3), strides=(strides, strides), padding="SAME",
                        rngs=rngs)

    class Block(nnx.Module):
        def __init__(self, cin: int, cout: int, strides: int, rngs: nnx.Rngs):
            self.bn1, self.conv1 = bn(cin, rngs), conv(cin, cout, strides, rngs)
            self.bn2, self.conv2 = bn(cout, rngs), conv(cout, cout, 1, rngs)

        def __call__(self, x: Any) -> Any:
            x = self.conv1(jax.nn.relu(self.bn1(x)))
            return self.conv2(jax.nn.relu(self.bn2(x)))

    class Group(nnx.Module):
        def __init__(self, n: int, cin: int, cout: int, strides: int, rngs: nnx.Rngs):
            self.first = Block(cin, cout, strides, rngs)
            self.shortcut = conv(cin, cout, strides, rngs)
            self.rest = nnx.List([Block(cout, cout, 1, rngs) for _ in range(n - 1)])

        def __call__(self, x: Any) -> Any:
            x = self.first(x) + self.shortcut(x)
            y = x
            for blk in self.rest:       # Trax: the other blocks in one Residual
                y = blk(y)
            return x + y                # n == 1: x + x, as Trax's empty Residual

    class WideResnet(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            k, n = spec["widen_factor"], spec["n_blocks"]
            self.conv0 = conv(spec["channels"], 16, 1, rngs)
            self.groups = nnx.List([Group(n, 16, 16 * k, 1, rngs),
                                    Group(n, 16 * k, 32 * k, 2, rngs),
                                    Group(n, 32 * k, 64 * k, 2, rngs)])
            self.bn = bn(64 * k, rngs)
            self.out = nnx.Linear(64 * k, spec["n_classes"], rngs=rngs)

        def __call__(self, x: Any) -> Any:
            x = self.conv0(x)
            for g in self.groups:
                x = g(x)
            x = jax.nn.relu(self.bn(x))
            x = jnp.mean(x, axis=(1, 2))    # AvgPool 8x8 on the final 8x8 map, Flatten
            return self.out(x)

    return WideResnet(nnx.Rngs(seed))


def child_flax(spec: dict[str, Any], variant: str, cell: str | None, steps: dict[str, int],
               breakdown: bool = False) -> dict[str, Any]:
    """One Flax NNX measurement: variant ``jit`` (functional) or ``nnx_jit``.

    ``breakdown`` (``jit`` only): after the timing, the compile breakdown and
    XLA's program profile (fusions, FLOPs, bytes accessed, scratch memory) of
    a fresh jit of the same step, as rnn.py records for retrax.
    """
    t_import = time.perf_counter()
    import flax
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import_s = time.perf_counter() - t_import
    batches = [tuple(jnp.asarray(a) for a in b) for b in make_batches(spec)]
    tx = optax.adam(LEARNING_RATE, eps=ADAM_EPS)
    is_lm = spec["kind"] == "lm"
    cell = cell or (spec.get("cell") if is_lm else None)
    res: dict[str, Any] = dict(impl="flax", variant=variant, cell=cell, flax=flax.__version__,
                               jax=jax.__version__, import_s=import_s, steps=steps)

    def loss_of(logits: Any, y: Any, w: Any) -> Any:
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(ce * w) / jnp.sum(w)

    t0 = time.perf_counter()
    model = _flax_lm(spec, cell) if is_lm else _flax_wide_resnet(spec)
    base_key = jax.random.key(1)

    def forward(m: Any, x: Any, key: Any) -> Any:
        return m(x, rngs=nnx.Rngs(dropout=key)) if is_lm else m(x)

    if variant == "jit":
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        res["params_total"] = int(sum(a.size for a in jax.tree.leaves(params)))
        opt_state = tx.init(params)

        def train_step(params, rest, opt_state, i, x, y, w):
            def loss_fn(p):
                # Fresh Variables at this trace level (BatchNorm writes its statistics).
                m = nnx.merge(graphdef, p, jax.tree.map(lambda a: a, rest))
                loss = loss_of(forward(m, x, jax.random.fold_in(base_key, i)), y, w)
                return loss, nnx.state(m, nnx.Not(nnx.Param))   # BatchNorm statistics
            (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), rest, opt_state, loss

        step_fn = jax.jit(train_step, donate_argnums=(0, 1, 2))
        jax.block_until_ready((params, opt_state))

        def step(i: int) -> Any:
            nonlocal params, rest, opt_state
            x, y, w = batches[i % N_BATCHES]
            params, rest, opt_state, loss = step_fn(params, rest, opt_state, jnp.int32(i), x, y, w)
            return loss, params

        def block(out: Any) -> float:
            jax.block_until_ready(out)
            return float(out[0])
    else:
        res["params_total"] = int(sum(a.size for a in jax.tree.leaves(
            nnx.state(model, nnx.Param))))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        rngs = nnx.Rngs(dropout=1)

        @nnx.jit(donate_argnums=(0, 1, 2))
        def nnx_step(model, optimizer, rngs, x, y, w):
            key = rngs.dropout()    # drawn outside the differentiated function

            def loss_fn(m):
                return loss_of(forward(m, x, key), y, w)
            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss

        def step(i: int) -> Any:
            x, y, w = batches[i % N_BATCHES]
            return nnx_step(model, optimizer, rngs, x, y, w)

        def block(out: Any) -> float:
            # One XLA executable: its outputs (loss, new weights) complete together.
            return float(jax.block_until_ready(out))

    res["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res["loss_first"] = block(step(0))
    res["first_step_s"] = time.perf_counter() - t0     # trace + compile + one step
    timing = time_steps(lambda i: step(i + 1), block, steps["warm"], steps["timed"],
                        steps["pipelined"])
    res["loss_last"] = timing.pop("last")
    res.update(timing)
    res["peak_rss_mib"] = common.peak_rss_mib()
    if breakdown and variant == "jit":
        x, y, w = batches[0]
        res.update(common.compile_breakdown(
            train_step, (params, rest, opt_state, jnp.int32(0), x, y, w),
            donate_argnums=(0, 1, 2))[0])
    return res


# --------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------


def _torch_lm(spec: dict[str, Any]) -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    torch.manual_seed(0)
    v, d, n = spec["vocab"], spec["d_model"], spec["n_layers"]
    rnn_cls = nn.LSTM if spec["cell"] == "lstm" else nn.GRU

    class RecurrentLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(v, d)
            self.drop = nn.Dropout(spec["dropout"]) if spec["dropout"] else nn.Identity()
            self.rnn = rnn_cls(d, d, num_layers=n, batch_first=True)
            self.out = nn.Linear(d, v)

        def forward(self, tokens):
            x = F.pad(tokens, (1, 0))[:, :-1]   # Trax's ShiftRight
            y, _ = self.rnn(self.drop(self.embed(x)))
            return self.out(y)

    return RecurrentLM()


def child_torch(spec: dict[str, Any], variant: str, steps: dict[str, int],
                threads: int | None = None) -> dict[str, Any]:
    """One PyTorch measurement of an LM workload: variant ``eager`` or ``compile``.

    ``threads``: ``torch.set_num_threads`` (default: PyTorch's own choice, one
    per physical core). On a machine other jobs keep busy, PyTorch's OpenMP
    threads wait for each other and small steps get many times slower.
    """
    t_import = time.perf_counter()
    import torch
    from torch.nn import functional as F  # noqa: N812

    import_s = time.perf_counter() - t_import
    if threads:
        torch.set_num_threads(threads)
    if spec["kind"] != "lm":
        raise ValueError("the PyTorch peer covers the recurrent LM workloads only")
    res: dict[str, Any] = dict(impl="torch", variant=variant, cell=spec["cell"],
                               torch=torch.__version__, threads=torch.get_num_threads(),
                               mkldnn=torch.backends.mkldnn.is_available(), import_s=import_s,
                               steps=steps)
    batches = [tuple(torch.from_numpy(a) for a in b) for b in make_batches(spec)]
    batches = [(x.long(), y.long(), w) for x, y, w in batches]
    t0 = time.perf_counter()
    model = _torch_lm(spec)
    model.train()
    res["params_total"] = int(sum(p.numel() for p in model.parameters()))
    try:
        opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, eps=ADAM_EPS, fused=True)
        res["adam"] = "fused"
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, eps=ADAM_EPS)
        res["adam"] = "default"
    fwd = model
    if variant == "compile":
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor_"))
        fwd = torch.compile(model)
    v = spec["vocab"]

    def step(i: int) -> Any:
        x, y, w = batches[i % N_BATCHES]
        opt.zero_grad(set_to_none=True)
        logits = fwd(x)
        ce = F.cross_entropy(logits.reshape(-1, v), y.reshape(-1), reduction="none")
        loss = (ce * w.reshape(-1)).sum() / w.sum()
        loss.backward()
        opt.step()
        return loss

    def block(loss: Any) -> float:
        return float(loss.item())   # CPU tensors: the step has run when .item() returns

    res["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res["loss_first"] = block(step(0))
    res["first_step_s"] = time.perf_counter() - t0
    timing = time_steps(lambda i: step(i + 1), block, steps["warm"], steps["timed"],
                        steps["pipelined"])
    res["loss_last"] = timing.pop("last")
    res.update(timing)
    res["peak_rss_mib"] = common.peak_rss_mib()
    res["torch_ops"] = _recurrent_ops(lambda: block(step(0)))
    return res


def _recurrent_ops(run: Callable[[], Any]) -> list[str] | str:
    """Names of the recurrent kernels one profiled step runs (after timing; not timed)."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        names = {e.key for e in prof.key_averages()}
        keys = ("lstm", "gru", "rnn", "mkldnn")
        return sorted(n for n in names if any(k in n.lower() for k in keys))
    except Exception as err:  # noqa: BLE001 (diagnostic only)
        return f"profiler failed: {err!r}"


# --------------------------------------------------------------------------
# Command line (children)
# --------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", choices=["flax", "torch"], required=True)
    ap.add_argument("--spec", required=True, help="the workload as JSON (from rnn.py)")
    ap.add_argument("--variant", default=None,
                    help="flax: jit (default) or nnx_jit; torch: eager (default) or compile")
    ap.add_argument("--cell", default=None,
                    help="flax LM cell: lstm, lstm_optimized or gru (default: the spec's)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch: torch.set_num_threads (default: PyTorch's choice)")
    ap.add_argument("--steps", default='{"warm": 2, "timed": 10, "pipelined": 5}',
                    help="JSON: warm-up, timed and pipelined step counts")
    ap.add_argument("--breakdown", action="store_true",
                    help="flax jit: also the compile breakdown and XLA's program profile")
    args = ap.parse_args()
    spec, steps = json.loads(args.spec), json.loads(args.steps)
    if args.child == "flax":
        res = child_flax(spec, args.variant or "jit", args.cell, steps, args.breakdown)
    else:
        res = child_torch(spec, args.variant or "eager", steps, args.threads)
    res["spec"] = spec
    print(json.dumps(res, default=jsonable), flush=True)


if __name__ == "__main__":
    main()
