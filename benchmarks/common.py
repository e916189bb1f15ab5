"""Shared helpers of the retrax benchmarks (``train.py``, ``decode.py``).

Everything that is measured runs in a child process of its own (this same
Python interpreter, ``script --child ...``), so that compile times, caches and
peak RSS belong to one configuration only. A child prints exactly one JSON
line (starting with ``{``) as its last line on stdout; the parent collects
those lines, runs the Flax peer (``../shared/peer_bench/bench_flax.py``) the
same way, prints a table and writes one JSON file.

The workloads, the FLOP formula and the MFU definition are those of
``../shared/BENCHMARKS.md``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
# The peer scripts live beside the repository: <repo>/../shared/peer_bench.
PEER_DIR = os.environ.get(
    "RETRAX_PEER_DIR", os.path.normpath(os.path.join(REPO, "..", "shared", "peer_bench")))

# The workloads of BENCHMARKS.md (TransformerLM as the seed defines it).
CONFIGS: dict[str, dict[str, int]] = {
    "S": dict(vocab=32, d_model=32, d_ff=128, n_layers=2, n_heads=8, batch=16, seq=10),
    "M": dict(vocab=256, d_model=256, d_ff=1024, n_layers=4, n_heads=4, batch=16, seq=256),
    "L": dict(vocab=256, d_model=512, d_ff=2048, n_layers=6, n_heads=8, batch=8, seq=512),
}
DROPOUT = 0.1
MAX_LEN = 2048


# --------------------------------------------------------------------------
# FLOPs (BENCHMARKS.md)
# --------------------------------------------------------------------------


def matmul_params(cfg: dict[str, int]) -> int:
    """``N_matmul = n_layers * (4 d^2 + 2 d d_ff) + d * vocab`` (Dense kernels only)."""
    d, f, v, n = cfg["d_model"], cfg["d_ff"], cfg["vocab"], cfg["n_layers"]
    return n * (4 * d * d + 2 * d * f) + d * v


def train_step_flops(cfg: dict[str, int]) -> int:
    """``6 N_matmul B T + 12 n_layers d B T^2`` (forward + backward, full T x T attention)."""
    b, t = cfg["batch"], cfg["seq"]
    return 6 * matmul_params(cfg) * b * t + 12 * cfg["n_layers"] * cfg["d_model"] * b * t * t


def decode_flops_per_token(cfg: dict[str, int], cache_len: int) -> int:
    """Forward FLOPs of one decoded token with a (masked, full) cache of ``cache_len``."""
    return 2 * matmul_params(cfg) + 4 * cfg["n_layers"] * cfg["d_model"] * cache_len


# --------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------


def summarize(times: Sequence[float]) -> dict[str, Any]:
    """Median, min and max (seconds) of a list of timings."""
    times = list(times)
    if not times:
        return dict(n=0, median=None, min=None, max=None)
    return dict(n=len(times), median=statistics.median(times), min=min(times), max=max(times))


def time_repeats(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall time of ``repeats`` calls of ``fn`` (which must block until its work is done)."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux: ru_maxrss is KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


# --------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------


def last_json_line(text: str) -> dict[str, Any] | None:
    """The last stdout line that parses as a JSON object, or None."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def run_child(argv: Sequence[str], timeout: float | None = None,
              env: dict[str, str] | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """Runs ``python argv...``; returns ``(its JSON line, None)`` or ``(None, error text)``."""
    cmd = [sys.executable, *argv]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=REPO)
    except subprocess.TimeoutExpired as err:
        tail = (err.stderr or b"")[-2000:]
        if isinstance(tail, bytes):
            tail = tail.decode("utf-8", "replace")
        return None, f"timed out after {timeout} s: {' '.join(cmd)}\n{tail}"
    result = last_json_line(proc.stdout)
    if proc.returncode != 0 or result is None:
        return None, (f"exit code {proc.returncode}: {' '.join(cmd)}\n"
                      + (proc.stderr or proc.stdout)[-3000:])
    return result, None


def run_flax_peer(args: Sequence[str], timeout: float | None = None
                  ) -> tuple[dict[str, Any] | None, str | None]:
    """Runs ``bench_flax.py args...`` (e.g. ``--child train --config M``) and parses its JSON."""
    script = os.path.join(PEER_DIR, "bench_flax.py")
    if not os.path.exists(script):
        return None, (f"Flax peer not found at {script}; set RETRAX_PEER_DIR to the folder "
                      f"holding bench_flax.py, or pass --no-peer.")
    return run_child([script, *args], timeout=timeout)


def child_matmul_peak(n: int = 4096, repeats: int = 5) -> dict[str, Any]:
    """Median float32 ``n x n`` jitted ``jnp.dot`` throughput (the MFU denominator)."""
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(n))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    mm = jax.jit(jnp.dot)
    mm(a, b).block_until_ready()
    times = time_repeats(lambda: mm(a, b).block_until_ready(), repeats)
    flops = 2.0 * n ** 3
    s = summarize(times)
    return dict(source="jnp.dot", n=n, repeats=repeats, s=s,
                gflops_median=flops / s["median"] / 1e9, gflops_best=flops / s["min"] / 1e9,
                gflops_worst=flops / s["max"] / 1e9)


def matmul_peak(script: str, use_bench_matmul: bool, timeout: float = 600
                ) -> tuple[dict[str, Any] | None, str | None]:
    """The machine's float32 matmul peak, GFLOP/s, measured in a child process.

    ``use_bench_matmul``: run the peer suite's ``bench_matmul.py`` (jax, numpy
    and torch if installed; slower) and take its jax 4096 median; otherwise a
    quick 4096^2 ``jnp.dot`` median in a child of ``script``.
    """
    if use_bench_matmul:
        path = os.path.join(PEER_DIR, "bench_matmul.py")
        res, err = run_child([path], timeout=timeout)
        if res is None:
            return None, err
        try:
            jx = res["jax"]["jax_jit"]["4096"]
        except KeyError:
            return None, f"bench_matmul.py gave no jax 4096 result: {res.get('errors')}"
        return dict(source="bench_matmul.py", n=4096, gflops_median=jx["gflops_median"],
                    gflops_best=jx["gflops_best"], gflops_worst=jx["gflops_worst"],
                    full=res), None
    return run_child([script, "--child", "matmul"], timeout=timeout)


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def compile_breakdown(fn: Callable, args: Sequence[Any], donate_argnums: tuple = ()
                      ) -> tuple[dict[str, Any], Any]:
    """Times a fresh ``jax.jit`` of ``fn`` on ``args`` in its three stages.

    Returns ``({trace_s, lower_s, xla_compile_s, hlo_fusions, xla_flops,
    xla_bytes_accessed, temp_bytes, alias_bytes}, traced)`` (``temp_bytes``:
    XLA's scratch memory; ``alias_bytes``: donated inputs reused as outputs);
    a cost or memory analysis the backend refuses is recorded as
    ``cost_analysis_error``.
    """
    import jax

    res: dict[str, Any] = {}
    fresh = jax.jit(lambda *a: fn(*a), donate_argnums=donate_argnums)
    t0 = time.perf_counter()
    traced = fresh.trace(*args)
    res["trace_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lowered = traced.lower()
    res["lower_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    res["xla_compile_s"] = time.perf_counter() - t0
    res["hlo_fusions"] = compiled.as_text().count(" fusion(")
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        res["xla_flops"] = float(cost.get("flops", float("nan")))
        res["xla_bytes_accessed"] = float(cost.get("bytes accessed", float("nan")))
        mem = compiled.memory_analysis()
        res["temp_bytes"] = int(mem.temp_size_in_bytes)
        res["alias_bytes"] = int(mem.alias_size_in_bytes)
    except Exception as err:  # noqa: BLE001 (diagnostic only)
        res["cost_analysis_error"] = repr(err)
    return res, traced


def machine_info() -> dict[str, Any]:
    """CPU model, core count (and the cores this process may use), load average, versions."""
    info: dict[str, Any] = dict(python=platform.python_version(), platform=platform.platform(),
                                cpu_count=os.cpu_count())
    if hasattr(os, "sched_getaffinity"):  # e.g. 1 under `taskset -c 0`: one XLA thread
        info["cores_allowed"] = len(os.sched_getaffinity(0))
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f
                      if line.startswith("model name")]
        info["cpu_model"] = models[0] if models else None
    except OSError:
        pass
    info["loadavg_start"] = loadavg()
    try:
        import jax

        info["jax"] = jax.__version__
        info["device"] = str(jax.devices()[0])
    except Exception as err:  # noqa: BLE001 (record, do not fail the benchmark)
        info["jax_error"] = repr(err)
    for pkg in ("flax", "optax", "retrax"):
        try:
            mod = __import__(pkg)
            info[pkg] = getattr(mod, "__version__", "?")
        except Exception:  # noqa: BLE001
            info[pkg] = None
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=REPO, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=REPO, timeout=10).stdout
        info["git_dirty"] = bool(dirty.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def write_json(path: str, obj: Any) -> str:
    """Writes ``obj`` as indented JSON (atomically: temp file + rename); returns the path."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _json_default(x: Any) -> Any:
    try:
        return float(x)
    except (TypeError, ValueError):
        return repr(x)


def fmt_s(x: float | None) -> str:
    """Seconds as ms below 1 s, else s."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x * 1e3:.2f} ms" if x < 1.0 else f"{x:.2f} s"


def fmt_range(s: dict[str, Any] | None) -> str:
    """``median (min-max)`` of a :func:`summarize` dict."""
    if not s or s.get("median") is None:
        return "-"
    return f"{fmt_s(s['median'])} ({fmt_s(s['min'])}-{fmt_s(s['max'])})"


def fmt_ratio_range(s: dict[str, Any] | None) -> str:
    """``median (min-max)`` of a :func:`summarize` dict of ratios: ``1.21x (1.05-1.30x)``."""
    if not s or s.get("median") is None:
        return "-"
    if s.get("n", 1) < 2:
        return fmt_ratio(s["median"])
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f}x)"


def loadavg() -> list[float] | None:
    """``os.getloadavg()`` (1, 5, 15 minutes) rounded to 2 digits; None where unsupported."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def fmt_num(x: float | None, digits: int = 0, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}{suffix}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pipes), columns padded for reading in a terminal."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r]
                                             for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells[1:]]
    return "\n".join(lines)


def log(msg: str) -> None:
    """Progress messages go to stderr (stdout of a child is its JSON line)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
