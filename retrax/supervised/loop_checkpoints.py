"""What a Loop writes to its ``output_dir`` and how it resumes from it.

:class:`LoopCheckpoints` holds what does not change during a run (the
directory, the model, the input signature, the seed, the layout settings);
the Loop hands it what does (step, weights, optimizer slots, history, data
streams) at each save and gets back a :class:`Resumed` from each load. The
files themselves are described in :mod:`retrax.supervised.training`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import pickle
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from retrax import checkpoints, models
from retrax.compat import trax_pickle
from retrax.data import counters
from retrax.io import CheckpointError
from retrax.layers import base
from retrax.optimizers.base import flat_slots, unflat_slots
from retrax.supervised.history import History
from retrax.supervised.streams import Stream
from retrax.supervised.train_step import Placement

__all__ = ["LoopCheckpoints", "Resumed", "ModelMismatchError", "native_checkpoints",
           "metric_checkpoint_names"]


class ModelMismatchError(CheckpointError, IndexError):
    """A Loop's checkpoint does not fit the Loop's model (another configuration or shape).

    A :class:`~retrax.io.CheckpointError` (so a ``ValueError``) whose message
    names the weight that does not fit, the shape the checkpoint holds and the
    one the model expects, and what to do. It is also an ``IndexError``: that
    is what Trax's Loop raised for this case, so Trax programs catching it
    keep working.
    """


@dataclasses.dataclass
class Resumed:
    """What a checkpoint restored; a field left at None is the Loop's to keep.

    ``weights``, ``state`` and the values of ``slots`` (task index -> slots)
    are placed for the Loop (replicated); the model's own weights are already
    the checkpoint's.
    """

    path: str
    step: int
    weights: Any
    state: Any = None
    slots: dict[int, Any] = dataclasses.field(default_factory=dict)
    history: History | None = None


class LoopCheckpoints:
    """Writes a Loop's checkpoints and ``config.json``, finds and reads them back.

    Args:
      output_dir: the run's directory (None: nothing is written; :meth:`load`
        can still read another directory).
      model: the Loop's model (its config is saved; loading assigns into it).
      placement: how the Loop places arrays; restored arrays are replicated.
      input_signature: the model's input signature, saved with the weights.
      seed: the run's random seed.
      keep: how many ``checkpoint_<step>`` files to keep.
      write_trax: also write Trax's ``model.pkl.gz`` layout (and resume from it).
      print_fn: prints a note (a damaged file skipped, slots not used).
    """

    def __init__(self, output_dir: str | None, model: base.Layer, placement: Placement, *,
                 input_signature: Any, seed: int, keep: int, write_trax: bool,
                 print_fn: Callable[[str], None]):
        self.output_dir = output_dir
        self.model = model
        self.placement = placement
        self.input_signature = input_signature
        self.seed = seed
        self.keep = keep
        self.write_trax = write_trax
        self._print = print_fn
        # The newest checkpoint written or resumed from: named when training diverges.
        self.last_good: str | None = None

    # -- writing ------------------------------------------------------------------

    def save(self, basename: str, *, step: int, weights: Any, state: Any, slots: Sequence[Any],
             history: History, task_streams: Sequence[Stream],
             eval_streams: Sequence[Stream]) -> None:
        """Writes the native checkpoint (and Trax's layout) of ``step``.

        ``basename='model'`` writes ``checkpoint_<step>.safetensors`` (pruned to
        the last ``keep``), another one ``<basename>.safetensors``. ``slots``
        holds each task's optimizer slots; arrays may be on the device.
        """
        host_weights = jax.device_get(weights)
        host_state = jax.device_get(state)
        host_slots = [jax.device_get(s) for s in slots]
        self.check_finite(step, host_weights, host_state, host_slots)
        arrays: dict[str, Any] = {}
        for t, task_slots in enumerate(host_slots):
            for j, leaf in enumerate(jax.tree_util.tree_leaves(task_slots)):
                arrays[f"slots{t}/{j:05d}"] = leaf
        extra = {
            "step": step,
            "history": history.to_dict(),
            "consumed": {str(i): s.consumed for i, s in enumerate(task_streams)},
            "eval_consumed": {str(i): s.consumed for i, s in enumerate(eval_streams)},
            "data_state": {str(i): s.state() for i, s in enumerate(task_streams)
                           if s.resumable},
            "eval_data_state": {str(i): s.state() for i, s in enumerate(eval_streams)
                                if s.resumable},
            "n_tasks": len(task_streams),
            "seed": self.seed,
            # data.CountAndSkip's counters as they are now (batches training took).
            "data_counters": {str(k): int(v) for k, v in counters.data_counters.items()},
        }
        sig = self.input_signature
        if basename == "model":
            path = os.path.join(self.output_dir, f"checkpoint_{step:08d}.safetensors")
        else:
            path = os.path.join(self.output_dir, f"{basename}.safetensors")
        checkpoints.save_native(path, host_weights, host_state, input_signature=sig,
                                model_config=models.config_of(self.model),
                                extra=extra, arrays=arrays)
        if self.write_trax:
            self.write_trax_layout(basename, step, host_weights, host_state, slots[0], history)
            if counters.data_counters:  # Trax's file, which Trax's Loop reads back
                counters.save_data_counters(self.output_dir)
        if basename == "model":
            self.last_good = path
            self.prune()

    def check_finite(self, step: int, weights: Any, state: Any, slots: list) -> None:
        """Refuses to checkpoint a NaN or inf anywhere: the last good checkpoint stays good."""
        trees = [("weights", weights), ("state", state)]
        trees += [(f"optimizer slots of task {t}", s) for t, s in enumerate(slots)]
        for what, tree in trees:
            if what == "weights":  # the order checkpoints.leaf_names names
                leaves = base.flatten_weights_and_state(tree, ())[0]
            elif what == "state":
                leaves = base.flatten_weights_and_state((), tree)[1]
            else:
                leaves = jax.tree_util.tree_leaves(tree)
            bad = [i for i, leaf in enumerate(leaves)
                   if np.asarray(leaf).dtype.kind in "fc" and not np.isfinite(leaf).all()]
            if not bad:
                continue
            arr = np.asarray(leaves[bad[0]])
            value = arr[~np.isfinite(arr)].flat[0]
            if what in ("weights", "state"):  # named by layer: Serial[0] > Dense_4, weights[0]
                where = checkpoints.leaf_names(self.model, tree, what)[bad[0]]
            else:
                paths = [jax.tree_util.keystr(p) for p, _ in
                         jax.tree_util.tree_flatten_with_path(tree)[0]]
                where = f"{what}{paths[bad[0]]}"
            kept = (f"The last good checkpoint is {self.last_good}."
                    if self.last_good else "No checkpoint was written yet.")
            raise FloatingPointError(
                f"Loop: at step {step}, {where} (shape {arr.shape}) holds {value}"
                f"{f' ({len(bad)} arrays in all)' if len(bad) > 1 else ''}; training diverged "
                f"and no checkpoint was written from it. {kept} Lower the learning rate, clip "
                f"gradients (clip_grad_norm=...), or check the data."
            )

    def write_trax_layout(self, basename: str, step: int, weights: Any, state: Any,
                          slots: Any, history: History) -> None:
        """Writes ``<basename>.pkl.gz`` in Trax's Loop layout (``slots``: the first task's)."""
        flat_w, flat_s = base.flatten_weights_and_state(weights, state)
        trax_slots = None
        try:
            trax_slots = [flat_slots(slots)]
        except Exception:  # An optimizer without a Trax slot order: weights only.
            trax_slots = None
        sig = self.input_signature
        trax_pickle.write_trax_loop_checkpoint(
            os.path.join(self.output_dir, basename), flat_w, flat_state=flat_s,
            step=step, history=history.to_dict(),
            input_signature=sig if isinstance(sig, tuple) else (sig,),
            flat_slots=trax_slots[0] if trax_slots else None, inline=True)

    def prune(self) -> None:
        """Removes all but the last ``keep`` ``checkpoint_<step>`` files."""
        for _, path in native_checkpoints(self.output_dir)[:-self.keep]:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass

    def write_config(self, *, tasks: Sequence[Any], eval_tasks: Sequence[Any], n_devices: int,
                     run_config: dict | None, settings: dict | None = None) -> None:
        """Writes ``config.json``, the run's one config file (``settings``: more Loop settings)."""
        config = {
            "retrax_version": _version(),
            "jax_version": jax.__version__,
            "devices": [str(d) for d in jax.devices()[:n_devices]],
            "random_seed": self.seed,
            "model": models.config_of(self.model) or {"name": self.model.name},
            "input_signature": str(self.input_signature),
            "tasks": [{
                "loss": t.loss_name,
                "optimizer": type(t.optimizer).__name__,
                "opt_params": {k: float(v) for k, v in t.optimizer.opt_params.items()},
                "lr_schedule": repr(t.lr_schedule),
                "n_steps_per_checkpoint": t.n_steps_per_checkpoint,
                "n_steps_per_permanent_checkpoint": t.n_steps_per_permanent_checkpoint,
            } for t in tasks],
            "eval_tasks": [{"metrics": t.metric_names, "n_eval_batches": t.n_eval_batches}
                           for t in eval_tasks],
            "keep_checkpoints": self.keep,
            "write_trax_checkpoint": self.write_trax,
            **(settings or {}),
            "run": run_config,
        }
        checkpoints.write_bytes_atomic(os.path.join(self.output_dir, "config.json"),
                                       json.dumps(config, indent=2).encode("utf-8"))

    # -- resuming -----------------------------------------------------------------

    def load(self, directory: str | None, filename: str | None, *, slots: Sequence[Any],
             task_streams: Sequence[Stream], eval_streams: Sequence[Stream]) -> Resumed | None:
        """Restores the checkpoint in ``directory``; None when there is none.

        ``slots`` are the Loop's current optimizer slots (their structure and
        dtypes). The model gets the saved weights; the streams are moved to
        the saved data positions. See ``Loop.load_checkpoint`` for which file
        is read and what happens when one cannot be.
        """
        if directory is None:
            return None
        natives = dict(native_checkpoints(directory))
        newest_first = [natives[s] for s in sorted(natives, reverse=True)]
        read: dict[str, Any] = {}  # model.pkl.gz, once read for its step, is not read again
        if filename is not None:
            candidates = [os.path.join(directory, filename)]
        elif self.write_trax:
            trax_path = os.path.join(directory, "model.pkl.gz")
            if not os.path.exists(trax_path):
                return None
            try:
                read[trax_path] = trax_pickle.read_trax_checkpoint(trax_path)
                step = int(read[trax_path].step or -1)
                candidates = [natives[step], trax_path] if step in natives else [trax_path]
            except _UNREADABLE as err:
                self._print(f"Note: {trax_path} cannot be read ({_first_line(err)}); resuming "
                            f"from the newest intact native checkpoint instead.")
                candidates = newest_first
        else:
            candidates = newest_first
        if not candidates:
            return None
        failures = []
        for path in candidates:
            try:
                loaded = read.get(path) or (
                    trax_pickle.read_trax_checkpoint(path) if path.endswith(".pkl.gz")
                    else checkpoints.read_native(checkpoints.read_bytes(path), path))
            except _UNREADABLE as err:
                failures.append(f"{path} ({_first_line(err)})")
                self._print(f"Note: skipping {path}, which cannot be read ({_first_line(err)}).")
                continue
            if path.endswith(".pkl.gz"):
                resumed = self._load_trax(path, loaded, slots)
            else:
                resumed = self._load_native(path, loaded, slots, task_streams, eval_streams)
            if failures:
                self._print(f"Note: resumed from {path} (step {resumed.step}).")
            return resumed
        raise ValueError(
            f"Loop: no checkpoint in {directory} can be read: {'; '.join(failures)}. Move the "
            f"damaged files away to resume from an older one, or use a new output_dir."
        )

    def _load_native(self, path: str, ckpt: dict, slots: Sequence[Any],
                     task_streams: Sequence[Stream], eval_streams: Sequence[Stream]) -> Resumed:
        extra = ckpt["meta"].get("extra", {})
        try:
            # Same shapes are not enough: a run resumes exactly only into the model it saved.
            checkpoints.check_model_config(self.model, ckpt["meta"].get("model"), path)
            checkpoints.assign_flat_weights(self.model, ckpt["flat_weights"], source=path)
            grown = False
        except CheckpointError as err:
            if not self._load_prefix(path, ckpt["flat_weights"]):
                raise ModelMismatchError(str(err)) from err
            grown = True
        if ckpt["flat_state"] is not None and not grown:
            checkpoints.assign_flat_state(self.model, ckpt["flat_state"], source=path)
        resumed = Resumed(path, int(extra.get("step", 0)),
                          weights=self.placement.replicate(self.model.weights),
                          state=self.placement.replicate(self.model.state))
        for t, task_slots in enumerate([] if grown else slots):
            leaves, treedef = jax.tree_util.tree_flatten(task_slots)
            saved = [ckpt["arrays"].get(f"slots{t}/{j:05d}") for j in range(len(leaves))]
            if any(s is None for s in saved) or any(
                    np.shape(s) != np.shape(x) for s, x in zip(saved, leaves)):
                raise ValueError(
                    f"{path}: the optimizer state of task {t} does not match this Loop's "
                    f"optimizer. Resume with the same tasks and optimizers, or use a new output_dir."
                )
            restored = [jnp.asarray(s, dtype=x.dtype) for s, x in zip(saved, leaves)]
            resumed.slots[t] = self.placement.replicate(
                jax.tree_util.tree_unflatten(treedef, restored))
        resumed.history = History.from_dict(extra.get("history", {}))
        self.last_good = path
        with counters.changes_watched() as restored:
            self._restore_streams(extra, task_streams, eval_streams)
        # A counter its stream set while restoring (a position loaded, batches re-drawn to
        # skip them) is exact already; the others get the checkpoint's values.
        counters.data_counters.update(
            {k: v for k, v in extra.get("data_counters", {}).items() if k not in restored})
        return resumed

    @staticmethod
    def _restore_streams(extra: dict, task_streams: Sequence[Stream],
                         eval_streams: Sequence[Stream]) -> None:
        states = extra.get("data_state", {})
        for i, n in extra.get("consumed", {}).items():
            stream = task_streams[int(i)]
            if stream.resumable and i in states:
                stream.restore(states[i], n)
            elif stream.consumed < n:
                stream.skip(n - stream.consumed, f"the data of task {i}")
        states = extra.get("eval_data_state", {})
        for i, n in extra.get("eval_consumed", {}).items():
            if int(i) < len(eval_streams):
                stream = eval_streams[int(i)]
                if stream.resumable and i in states:
                    stream.restore(states[i], n)
                elif stream.consumed < n:
                    stream.skip(n - stream.consumed, f"the data of eval task {i}")

    def _load_prefix(self, path: str, flat: Sequence[Any]) -> bool:
        """Loads a smaller model's weights into the first arrays of this one (as Trax does).

        Only when the checkpoint's arrays equal, in shape, the model's first
        arrays (Trax's test_restores_from_smaller_model: a layer appended to
        the model). The other arrays keep their initial values, the optimizer
        starts fresh, and the Loop says so. Returns False when that is not
        the case (the caller raises the original error).
        """
        model_flat, _ = base.flatten_weights_and_state(self.model.weights, ())
        if not 0 < len(flat) < len(model_flat) or any(
                np.shape(a) != np.shape(b) for a, b in zip(flat, model_flat)):
            return False
        checkpoints.assign_flat_weights(self.model, list(flat) + list(model_flat[len(flat):]),
                                        source=path)
        self._print(
            f"Note: {path} holds the first {len(flat)} of this model's {len(model_flat)} "
            f"weight arrays (a smaller model): they are loaded; the other "
            f"{len(model_flat) - len(flat)} keep their initial values, and the optimizer "
            f"and the model state start fresh.")
        return True

    def _load_trax(self, path: str, ckpt: Any, slots: Sequence[Any]) -> Resumed:
        try:
            checkpoints.assign_flat_weights(self.model, ckpt.flat_weights, source=path)
            grown = False
        except CheckpointError as err:
            if not self._load_prefix(path, ckpt.flat_weights):
                raise ModelMismatchError(str(err)) from err
            grown = True
        resumed = Resumed(path, int(ckpt.step or 0),
                          weights=self.placement.replicate(self.model.weights))
        # Trax's Loop resumes the data through data.CountAndSkip and its counters file.
        counters.load_data_counters(os.path.dirname(path))
        if ckpt.history:
            resumed.history = History.from_dict({"_values": ckpt.history})
        if ckpt.slots and not grown:
            try:
                resumed.slots[0] = self.placement.replicate(
                    unflat_slots(ckpt.slots[0], slots[0], count=resumed.step))
            except Exception as err:  # Different optimizer: fresh slots, but say so.
                self._print(f"Note: optimizer slots in {path} not used ({err}).")
        return resumed


def metric_checkpoint_names(history: History, low_metric: str | None,
                            high_metric: str | None) -> list[str]:
    """The ``lowest_<metric>``/``highest_<metric>`` checkpoints due now.

    One is due when the latest eval value of its metric is the best so far.
    """
    names = []
    for metric, best in ((low_metric, min), (high_metric, max)):
        if metric is None:
            continue
        tag = f"metrics/{metric}"
        if tag not in history.metrics_for_mode("eval"):
            continue
        values = [v for _, v in history.get("eval", tag)]
        if values[-1] == best(values):
            prefix = "lowest" if best is min else "highest"
            names.append(f"{prefix}_{metric}")
    return names


def native_checkpoints(directory: str) -> list[tuple[int, str]]:
    """``(step, path)`` of the ``checkpoint_<step>.safetensors`` files, oldest first."""
    found = []
    for path in glob.glob(os.path.join(directory, "checkpoint_*.safetensors")):
        m = re.search(r"checkpoint_(\d+)\.safetensors$", path)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


# What reading a damaged checkpoint file raises (a CheckpointError is a ValueError;
# OSError covers gzip's BadGzipFile and a file removed under us).
_UNREADABLE = (ValueError, OSError, EOFError, KeyError, pickle.UnpicklingError)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _version() -> str:
    from retrax.version import __version__

    return __version__
