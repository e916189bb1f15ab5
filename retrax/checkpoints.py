"""Saving and loading layer weights: retrax's native format and Trax's files.

Native format: one safetensors file holding the depth-first leaves of the
weight tree (``w/00000``, ...) and of the state tree (``s/00000``, ...), with
JSON metadata in the safetensors header (key ``retrax``): format version,
retrax version, the model's class and config when known, each leaf's tree path,
shape and dtype, and the input signature. Nothing in it is executable.

Writes are atomic: a temporary file in the same directory is written, fsync'd
and renamed over the target (remote fsspec paths are uploaded in one piece).
Paths go through fsspec, so ``gs://``, ``s3://`` ... work when that backend is
installed.

``load_layer`` also reads Trax's ``.pkl.gz`` layouts (``Layer.save_to_file``,
``training.Loop`` and the 2020 trainer) with a restricted unpickler, see
:mod:`retrax.compat.trax_pickle`.

>>> import os, tempfile
>>> from retrax import layers as tl, shapes
>>> model = tl.Serial(tl.Dense(3), tl.Dropout(0.1))
>>> _ = model.init(shapes.ShapeDtype((1, 2)))
>>> path = os.path.join(tempfile.mkdtemp(), 'm.safetensors')
>>> model.save_to_file(path, input_signature=shapes.ShapeDtype((1, 2)))
>>> fresh = tl.Serial(tl.Dense(3), tl.Dropout(0.1))
>>> w, s = fresh.init_from_file(path)
>>> bool((w[0][0] == model.weights[0][0]).all())
True
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from retrax import shapes
from retrax.io import filesystem, read_bytes, write_bytes_atomic
from retrax.layers import base

__all__ = [
    "FORMAT_VERSION",
    "save_layer",
    "load_layer",
    "save_native",
    "read_native",
    "read_any",
    "trax_to_native",
    "native_to_trax",
    "is_trax_pickle",
]

FORMAT_VERSION = 1
_GZIP_MAGIC = b"\x1f\x8b"


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def is_trax_pickle(data: bytes) -> bool:
    return data[:2] == _GZIP_MAGIC


# --------------------------------------------------------------------------
# Native format
# --------------------------------------------------------------------------


def _leaf_paths(tree: Any, prefix: str = "") -> list[str]:
    """Tree paths (``0/1/0``) of the leaves, in ``flatten_weights_and_state`` order."""
    if base._is_weights_marker(tree) or base._is_state_marker(tree):
        return []
    if isinstance(tree, (tuple, list)):
        out: list[str] = []
        for i, sub in enumerate(tree):
            out.extend(_leaf_paths(sub, f"{prefix}/{i}" if prefix else str(i)))
        return out
    if isinstance(tree, dict):
        out = []
        for k, sub in tree.items():
            out.extend(_leaf_paths(sub, f"{prefix}/{k}" if prefix else str(k)))
        return out
    return [prefix]


def _to_numpy(x: Any) -> tuple[np.ndarray, str]:
    arr = np.asarray(jax.device_get(x))
    dtype_name = str(arr.dtype)
    if dtype_name == "bfloat16":
        arr = arr.view(np.uint16)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"Cannot save an array of dtype {arr.dtype} in a checkpoint.")
    # (np.ascontiguousarray would turn a 0-d array into shape (1,).)
    return np.require(arr, requirements="C"), dtype_name


def _from_numpy(arr: np.ndarray, entry: dict) -> np.ndarray:
    # safetensors may hand 0-d tensors back as shape (1,); the metadata is the truth.
    arr = arr.reshape(tuple(entry["shape"]))
    if entry["dtype"] == "bfloat16":
        return arr.view(jnp.bfloat16)
    return arr


def _sig_to_json(sig: Any) -> Any:
    if sig is None:
        return None
    if isinstance(sig, shapes.ShapeDtype):
        return {"shape": list(sig.shape), "dtype": np.dtype(sig.dtype).name}
    if isinstance(sig, (tuple, list)):
        return [_sig_to_json(s) for s in sig]
    return _sig_to_json(shapes.signature(sig))


def _sig_from_json(obj: Any) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return shapes.ShapeDtype(tuple(obj["shape"]), np.dtype(obj["dtype"]))
    return tuple(_sig_from_json(o) for o in obj)


def save_native(path: str | os.PathLike, weights: Any, state: Any = None, *,
                input_signature: Any = None, model_config: dict | None = None,
                extra: dict | None = None, arrays: dict[str, Any] | None = None) -> None:
    """Writes weight/state trees (and optional extra named arrays) atomically."""
    flat_w, flat_s = base.flatten_weights_and_state(weights, () if state is None else state)
    tensors: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {
        "format": "retrax",
        "format_version": FORMAT_VERSION,
        "retrax_version": _version(),
        "model": model_config,
        "input_signature": _sig_to_json(input_signature),
        "weights": [],
        "state": None if state is None else [],
        "arrays": [],
        "extra": extra or {},
    }
    for i, (p, x) in enumerate(zip(_leaf_paths(weights), flat_w)):
        arr, dtype_name = _to_numpy(x)
        tensors[f"w/{i:05d}"] = arr
        meta["weights"].append({"path": p, "shape": list(arr.shape), "dtype": dtype_name})
    if state is not None:
        for i, (p, x) in enumerate(zip(_leaf_paths(state), flat_s)):
            arr, dtype_name = _to_numpy(x)
            tensors[f"s/{i:05d}"] = arr
            meta["state"].append({"path": p, "shape": list(arr.shape), "dtype": dtype_name})
    for name, x in (arrays or {}).items():
        arr, dtype_name = _to_numpy(x)
        tensors[f"a/{name}"] = arr
        meta["arrays"].append({"name": name, "shape": list(arr.shape), "dtype": dtype_name})
    data = st_save(tensors, metadata={"retrax": json.dumps(meta)})
    write_bytes_atomic(path, data)


def _header(data: bytes) -> dict:
    if len(data) < 8:
        raise ValueError("file too short to be a safetensors checkpoint")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("corrupt safetensors header length")
    return json.loads(data[8:8 + n].decode("utf-8"))


def read_native(data: bytes, source: str = "<bytes>") -> dict[str, Any]:
    """Parses a native checkpoint: ``{'meta', 'flat_weights', 'flat_state', 'arrays'}``."""
    try:
        header = _header(data)
        meta = json.loads(header.get("__metadata__", {}).get("retrax", "null"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{source} is neither a retrax checkpoint (safetensors) nor a Trax .pkl.gz file: {err}"
        ) from err
    if not isinstance(meta, dict) or meta.get("format") != "retrax":
        raise ValueError(f"{source} is a safetensors file without retrax metadata.")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{source} was written by a newer retrax (format {meta['format_version']}); "
            f"upgrade retrax to read it."
        )
    tensors = st_load(data)
    flat_w = [_from_numpy(tensors[f"w/{i:05d}"], e) for i, e in enumerate(meta["weights"])]
    flat_s = None
    if meta.get("state") is not None:
        flat_s = [_from_numpy(tensors[f"s/{i:05d}"], e) for i, e in enumerate(meta["state"])]
    arrays = {e["name"]: _from_numpy(tensors[f"a/{e['name']}"], e)
              for e in meta.get("arrays", [])}
    return {"meta": meta, "flat_weights": flat_w, "flat_state": flat_s, "arrays": arrays,
            "input_signature": _sig_from_json(meta.get("input_signature"))}


def read_any(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a native or Trax checkpoint into flat lists (no model needed)."""
    data = read_bytes(path)
    if is_trax_pickle(data):
        from retrax.compat import trax_pickle

        ckpt = trax_pickle.read_trax_checkpoint(path)
        return {"meta": {"format": "trax", "layout": ckpt.layout, "step": ckpt.step},
                "flat_weights": list(ckpt.flat_weights),
                "flat_state": None if ckpt.flat_state is None else list(ckpt.flat_state),
                "arrays": {}, "input_signature": ckpt.input_signature, "trax": ckpt}
    return read_native(data, os.fspath(path))


def _version() -> str:
    from retrax import __version__

    return __version__


# --------------------------------------------------------------------------
# Layer methods
# --------------------------------------------------------------------------


def save_layer(layer: base.Layer, file_name: str, weights_only: bool = False,
               input_signature: Any = None) -> None:
    """Implements ``Layer.save_to_file`` in the native format."""
    if not layer._initialized:
        raise ValueError(
            f"{layer.name_with_arity} has no weights to save; call init() or init_from_file() first."
        )
    save_native(file_name, layer.weights, None if weights_only else layer.state,
                input_signature=input_signature,
                model_config=getattr(layer, "_model_config", None))


def _model_signature(layer: base.Layer, sig: Any) -> Any:
    """The part of a stored signature the model consumes (Trax stores whole batches)."""
    if isinstance(sig, (tuple, list)):
        sig = tuple(sig)[: max(layer.n_in, 1)]
        if len(sig) == 1:
            sig = sig[0]
    return sig


def _resolve_notebook_url(file_name: str) -> str:
    """Google's notebook checkpoints: the real file if reachable, else our stand-in."""
    from retrax import pretrained

    name = pretrained.NOTEBOOK_URLS.get(os.fspath(file_name))
    if name is None:
        return file_name
    try:
        fs, p = filesystem(file_name)
        if fs.exists(p):
            return file_name
        reason = "it does not exist"
    except Exception as err:  # No gcsfs, no network, no credentials...
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    warnings.warn(
        f"{file_name} is not reachable ({reason}); loading retrax's own {name!r} model "
        f"instead ({pretrained.path(name)}), trained by retrax on the same task. It is not "
        f"Google's file.", stacklevel=3)
    return pretrained.path(name)


def load_layer(layer: base.Layer, file_name: str, weights_only: bool = False,
               input_signature: Any = None) -> tuple[Any, Any]:
    """Implements ``Layer.init_from_file`` for native and Trax checkpoints."""
    file_name = _resolve_notebook_url(file_name)
    ckpt = read_any(file_name)
    sig = input_signature if input_signature is not None else ckpt["input_signature"]
    if sig is None and not layer._initialized:
        raise ValueError(
            f"{file_name} stores no input signature and {layer.name_with_arity} is not "
            f"initialized; pass input_signature=trax.shapes.ShapeDtype(...)."
        )
    if sig is not None:
        sig = _model_signature(layer, sig)
        if weights_only or not layer._initialized:
            layer.init(sig)
    weights = assign_flat_weights(layer, ckpt["flat_weights"], source=os.fspath(file_name))
    state = layer.state
    if not weights_only:
        flat_state = ckpt["flat_state"]
        if flat_state is None:
            raise ValueError(
                f"{file_name} holds weights only; load it with weights_only=True."
            )
        state = assign_flat_state(layer, flat_state, source=os.fspath(file_name))
    return weights, state


_WEIGHTS_FIX = "Build the model with the configuration the checkpoint was trained with."
_STATE_FIX = "Load with weights_only=True to keep the model's fresh state."


def _matched(flat: list[Any], expected: list[Any], what: str, source: str, owner: str,
             fix: str, count_note: str = "") -> list[Any]:
    """``flat`` checked against ``expected`` (count and shapes), cast to its dtypes."""
    if len(flat) != len(expected):
        raise ValueError(f"{source} holds {len(flat)} {what} arrays but {owner} needs "
                         f"{len(expected)}{count_note}. {fix}")
    fixed = []
    for i, (got, want) in enumerate(zip(flat, expected)):
        got = np.asarray(got)
        want_shape = tuple(getattr(want, "shape", ()))
        # Old Trax checkpoints store the positional-encoding table as (1, L, d).
        if what == "weight" and got.shape[:1] == (1,) and tuple(got.shape[1:]) == want_shape:
            got = got[0]
        if tuple(got.shape) != want_shape:
            raise ValueError(f"{source}: {what} array {i} has shape {tuple(got.shape)} but the "
                             f"model expects {want_shape}. {fix}")
        fixed.append(jnp.asarray(got, dtype=getattr(want, "dtype", got.dtype)))
    return fixed


def assign_flat_weights(layer: base.Layer, flat: list[Any], source: str = "checkpoint") -> Any:
    """Puts flat weight arrays (Trax order) into ``layer``; checks counts and shapes."""
    expected = layer.weights
    exp_flat, _ = base.flatten_weights_and_state(expected, ())
    fixed = _matched(flat, exp_flat, "weight", source, layer.name_with_arity, _WEIGHTS_FIX)
    layer.weights = base._fill(fixed, expected, "weights")
    return layer.weights


def assign_flat_state(layer: base.Layer, flat: list[Any], source: str = "checkpoint") -> Any:
    """Puts flat state arrays (Trax order) into ``layer``; checks counts and shapes."""
    expected = layer.state
    _, exp_flat = base.flatten_weights_and_state((), expected)
    fixed = _matched(flat, exp_flat, "state", source, layer.name_with_arity, _STATE_FIX,
                     " (the state differs between modes, e.g. predict-mode caches)")
    layer.state = base._fill(fixed, expected, "state")
    return layer.state


# --------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------


def trax_to_native(trax_path: str, native_path: str) -> None:
    """Converts a Trax ``.pkl.gz`` checkpoint into the native format (no model needed)."""
    ckpt = read_any(trax_path)
    if ckpt["meta"].get("format") != "trax":
        raise ValueError(f"{trax_path} is not a Trax .pkl.gz checkpoint.")
    save_native(native_path, tuple(ckpt["flat_weights"]),
                None if ckpt["flat_state"] is None else tuple(ckpt["flat_state"]),
                input_signature=ckpt["input_signature"],
                extra={"converted_from": "trax", "trax_layout": ckpt["meta"]["layout"],
                       "step": ckpt["meta"].get("step")})


def native_to_trax(native_path: str, trax_base_path: str) -> str:
    """Converts a native checkpoint into Trax's ``Loop`` layout; returns the .pkl.gz path."""
    from retrax.compat import trax_pickle

    ckpt = read_any(native_path)
    base_path = trax_base_path[:-7] if trax_base_path.endswith(".pkl.gz") else trax_base_path
    sig = ckpt["input_signature"]
    if isinstance(sig, shapes.ShapeDtype):
        sig = (sig,)
    return trax_pickle.write_trax_loop_checkpoint(
        base_path, ckpt["flat_weights"], flat_state=ckpt["flat_state"] or (),
        step=int(ckpt["meta"].get("extra", {}).get("step") or 0), input_signature=sig)
