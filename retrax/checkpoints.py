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

Faults: every file that cannot be loaded raises :class:`CheckpointError` (a
``ValueError``, defined in :mod:`retrax.io`) with the file's name: random or
truncated bytes, damaged safetensors, metadata with missing or ill-typed
fields or with shapes/dtypes that disagree with the stored tensors, hostile
pickles, decompression and memory bombs (the size cap is
``max(retrax.io.MAX_EXPANSION * size on disk, retrax.io.EXPANSION_FLOOR)``,
see :func:`retrax.io.expansion_limit`), and checkpoints of another model: a
weight of the wrong shape is named by its layer's path (``Serial[2] > Dense_4,
weights[0]``), and a native checkpoint whose recorded ``model_config`` differs
from the model's own (``n_heads=2`` against ``n_heads=4``) is refused even when
the shapes agree (``load_layer(..., check_config=False)`` loads it anyway).

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

import inspect
import json
import math
import os
import struct
import sys
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from retrax import shapes
from retrax.io import (
    CheckpointError,
    expansion_limit,
    filesystem,
    read_bytes,
    write_bytes_atomic,
)
from retrax.layers import base

__all__ = [
    "FORMAT_VERSION",
    "CONFIG_KEYS_THAT_MAY_DIFFER",
    "CheckpointError",
    "save_layer",
    "load_layer",
    "save_native",
    "read_native",
    "read_any",
    "check_model_config",
    "trax_to_native",
    "native_to_trax",
    "is_trax_pickle",
]

FORMAT_VERSION = 1
_GZIP_MAGIC = b"\x1f\x8b"
# safetensors' dtype codes and the NumPy dtype each loads as.
_ST_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
              "F16": "float16", "U32": "uint32", "I32": "int32", "F32": "float32",
              "U64": "uint64", "I64": "int64", "F64": "float64"}
# The dtype names save_native writes in the metadata -> how the tensor is stored.
_META_DTYPES = {name: code for code, name in _ST_DTYPES.items()} | {"bfloat16": "U16"}
_MAX_SIGNATURE_DEPTH = 8
#: Model-config arguments that may differ between a checkpoint and the model it
#: is loaded into: they change training or decoding only, never what the
#: weights mean (``load_layer`` compares every other recorded argument).
CONFIG_KEYS_THAT_MAY_DIFFER = frozenset(
    {"mode", "dropout", "dropout_shared_axes", "max_inference_length"})


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
    # Old safetensors versions hand 0-d tensors back as shape (1,); the
    # metadata (checked against the header in _check_tensor) is the truth.
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


def _sig_from_json(obj: Any, depth: int = 0) -> Any:
    """The input signature from metadata; raises ValueError describing a bad entry."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        shape, dtype = obj.get("shape"), obj.get("dtype")
        if not _is_shape(shape) or dtype not in _META_DTYPES:
            raise ValueError(f"its input_signature entry {json.dumps(obj)[:200]} is not "
                             f"{{'shape': [ints >= 0], 'dtype': a numeric dtype name}}")
        return shapes.ShapeDtype(tuple(shape), np.dtype(dtype))
    if isinstance(obj, list) and depth < _MAX_SIGNATURE_DEPTH:
        return tuple(_sig_from_json(o, depth + 1) for o in obj)
    raise ValueError(f"its input_signature holds {json.dumps(obj)[:200]}, where retrax writes "
                     f"{{'shape': ..., 'dtype': ...}} or a list of those")


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


def _not_a_checkpoint(source: str, detail: str) -> CheckpointError:
    return CheckpointError(
        f"{source} is neither a retrax checkpoint (safetensors) nor a Trax .pkl.gz file: "
        f"{detail}. Check that the path names a checkpoint and that the file was copied "
        f"completely.")


def _invalid(source: str, detail: str) -> CheckpointError:
    return CheckpointError(
        f"{source} is not a valid retrax checkpoint: {detail}. The file is damaged or was "
        f"not written by retrax; save the model again, or restore the file from a copy.")


def _json(text: bytes | str, source: str, what: str, error: Any) -> Any:
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except RecursionError:
        raise error(source, f"its {what} nests JSON too deeply to read") from None
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise error(source, f"its {what} is not valid JSON ({err})") from None


def _header(data: bytes, source: str = "<bytes>") -> tuple[dict, int]:
    """The safetensors header of ``data`` and the offset at which tensor data starts."""
    if len(data) < 8:
        raise _not_a_checkpoint(source, f"file too short to be a safetensors checkpoint "
                                        f"({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise _not_a_checkpoint(source, f"corrupt safetensors header length (it claims {n} "
                                        f"bytes, but only {len(data) - 8} follow)")
    header = _json(data[8:8 + n], source, "safetensors header", _not_a_checkpoint)
    if not isinstance(header, dict):
        raise _not_a_checkpoint(source, f"its safetensors header is a JSON "
                                        f"{type(header).__name__}, not an object")
    return header, 8 + n


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)


def _entries(meta: dict, key: str, source: str) -> list[dict] | None:
    """The metadata list ``key`` (``weights``/``state``/``arrays``), each entry checked."""
    if key not in meta and key != "weights":
        return [] if key == "arrays" else None
    entries = meta.get(key)
    if entries is None and key == "state":
        return None
    if not isinstance(entries, list):
        found = "missing" if key not in meta else f"a {type(entries).__name__}"
        raise _invalid(source, f"its metadata field {key!r} is {found}, where retrax writes "
                               f"a list with one entry per array")
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise _invalid(source, f"metadata entry {where} is a {type(entry).__name__}, not "
                                   f"an object with 'shape' and 'dtype'")
        if not _is_shape(entry.get("shape")):
            raise _invalid(source, f"metadata entry {where} has shape {entry.get('shape')!r}, "
                                   f"not a list of ints >= 0")
        if entry.get("dtype") not in _META_DTYPES:
            raise _invalid(source, f"metadata entry {where} has dtype {entry.get('dtype')!r}, "
                                   f"not one of {sorted(_META_DTYPES)}")
        if key == "arrays" and not isinstance(entry.get("name"), str):
            raise _invalid(source, f"metadata entry {where} has name {entry.get('name')!r}, "
                                   f"not a string")
        if not isinstance(entry.get("path", ""), str):
            raise _invalid(source, f"metadata entry {where} has path {entry.get('path')!r}, "
                                   f"not a string")
    return entries


def _check_tensor(header: dict, data_size: int, tensor: str, entry: dict, where: str,
                  source: str) -> None:
    """Checks that the header's tensor ``tensor`` is what metadata entry ``entry`` says."""
    info = header.get(tensor)
    if not isinstance(info, dict):
        raise _invalid(source, f"metadata entry {where} names tensor {tensor!r}, which the "
                               f"file does not hold")
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if code != _META_DTYPES[entry["dtype"]]:
        raise _invalid(source, f"metadata entry {where} says dtype {entry['dtype']} (stored as "
                               f"{_META_DTYPES[entry['dtype']]}), but tensor {tensor!r} is "
                               f"stored as {code!r}")
    want = entry["shape"]
    if not _is_shape(shape) or (shape != want and not (want == [] and shape == [1])):
        raise _invalid(source, f"metadata entry {where} says shape {tuple(want)}, but tensor "
                               f"{tensor!r} has shape {shape!r}")
    n_bytes = math.prod(shape) * np.dtype(_ST_DTYPES[code]).itemsize
    what = f"tensor {tensor!r} (shape {tuple(shape)}, {code}) needs {n_bytes} bytes, but"
    if not (isinstance(offsets, list) and len(offsets) == 2 and _is_shape(offsets)
            and offsets[0] <= offsets[1] <= data_size):
        raise _invalid(source, f"{what} its data_offsets {offsets!r} do not lie within the "
                               f"{data_size} bytes of tensor data in the file (is it "
                               f"truncated?)")
    if offsets[1] - offsets[0] != n_bytes:
        raise _invalid(source, f"{what} its data_offsets {offsets!r} hold "
                               f"{offsets[1] - offsets[0]}")


def _check_meta(meta: Any, source: str) -> None:
    if not isinstance(meta, dict) or meta.get("format") != "retrax":
        raise CheckpointError(
            f"{source} is a safetensors file without retrax metadata, so retrax cannot tell "
            f"which model's weights it holds. Convert it with the program that wrote it, or "
            f"load its tensors with safetensors directly.")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _invalid(source, f"its metadata field 'format_version' is {version!r}, where "
                               f"retrax writes a positive integer (this retrax writes "
                               f"{FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{source} was written by a newer retrax (format {version}, this retrax reads "
            f"format {FORMAT_VERSION}); upgrade retrax to read it.")
    model = meta.get("model")
    if model is not None and not isinstance(model, dict):
        raise _invalid(source, f"its metadata field 'model' is a {type(model).__name__}, "
                               f"where retrax writes {{'name': ..., 'kwargs': {{...}}}} or null")
    if not isinstance(meta.get("extra", {}), dict):
        raise _invalid(source, "its metadata field 'extra' is not an object")


def read_native(data: bytes, source: str = "<bytes>") -> dict[str, Any]:
    """Parses a native checkpoint: ``{'meta', 'flat_weights', 'flat_state', 'arrays'}``.

    Raises:
      CheckpointError: ``data`` is not a retrax checkpoint or is damaged; the
        message names ``source``.
    """
    header, data_start = _header(data, source)
    metadata = header.get("__metadata__")
    raw = metadata.get("retrax") if isinstance(metadata, dict) else None
    meta = None if not isinstance(raw, str) else _json(raw, source, "retrax metadata", _invalid)
    _check_meta(meta, source)
    groups = [("w", "weights", _entries(meta, "weights", source)),
              ("s", "state", _entries(meta, "state", source))]
    arrays_meta = _entries(meta, "arrays", source)
    signature = meta.get("input_signature")
    try:
        input_signature = _sig_from_json(signature)
    except ValueError as err:
        raise _invalid(source, str(err)) from None
    data_size = len(data) - data_start
    named: list[tuple[str, dict, str]] = []
    for prefix, key, entries in groups:
        for i, entry in enumerate(entries or ()):
            named.append((f"{prefix}/{i:05d}", entry, f"{key}[{i}]"))
    for i, entry in enumerate(arrays_meta or ()):
        named.append((f"a/{entry['name']}", entry, f"arrays[{i}]"))
    for tensor, entry, where in named:
        _check_tensor(header, data_size, tensor, entry, where, source)
    try:
        tensors = st_load(data)
    except Exception as err:  # safetensors raises its own SafetensorError, and others
        raise _invalid(source, f"safetensors cannot read its tensors "
                               f"({type(err).__name__}: {err})") from err

    def load(prefix: str, entries: list[dict] | None) -> list[np.ndarray] | None:
        if entries is None:
            return None
        return [_from_numpy(tensors[f"{prefix}/{i:05d}"], e) for i, e in enumerate(entries)]

    arrays = {e["name"]: _from_numpy(tensors[f"a/{e['name']}"], e) for e in arrays_meta or ()}
    return {"meta": meta, "flat_weights": load("w", groups[0][2]),
            "flat_state": load("s", groups[1][2]), "arrays": arrays,
            "input_signature": input_signature}


def read_any(path: str | os.PathLike, *, max_expansion: float | None = None) -> dict[str, Any]:
    """Reads a native or Trax checkpoint into flat lists (no model needed).

    ``max_expansion`` caps what a Trax ``.pkl.gz`` file and its side files may
    decompress to (default ``retrax.io.MAX_EXPANSION``, see :func:`retrax.io.expansion_limit`).

    Raises:
      CheckpointError: the file is damaged, hostile or not a checkpoint.
      FileNotFoundError: the file (or a Trax side file it needs) is missing.
    """
    data = read_bytes(path)
    if is_trax_pickle(data) or os.fspath(path).endswith(".pkl.gz"):
        from retrax.compat import trax_pickle

        ckpt = trax_pickle.read_trax_checkpoint(path, max_expansion=max_expansion)
        ckpt_dict = {"meta": {"format": "trax", "layout": ckpt.layout, "step": ckpt.step},
                     "flat_weights": list(ckpt.flat_weights),
                     "flat_state": None if ckpt.flat_state is None else list(ckpt.flat_state),
                     "arrays": {}, "input_signature": ckpt.input_signature, "trax": ckpt}
    else:
        ckpt_dict = read_native(data, os.fspath(path))
    ckpt_dict["file_size"] = len(data)
    return ckpt_dict


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


def _model_signature(layer: base.Layer, sig: Any, source: str) -> Any:
    """The part of a stored signature the model consumes (Trax stores whole batches)."""
    if isinstance(sig, (tuple, list)):
        sig = tuple(sig)[: max(layer.n_in, 1)]
        if len(sig) == 1:
            sig = sig[0]
    items = sig if isinstance(sig, tuple) else (sig,)
    if not items or not all(isinstance(s, shapes.ShapeDtype) for s in items):
        raise CheckpointError(
            f"{source} stores the input signature {sig!r}, where {layer.name_with_arity} "
            f"needs a ShapeDtype per input; pass input_signature=trax.shapes.ShapeDtype(...) "
            f"to init_from_file.")
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


def _config_value(value: Any) -> Any:
    """A config argument as JSON would store it (callables by name, tuples as lists)."""
    if callable(value):
        return getattr(value, "__name__", repr(value))
    if isinstance(value, (tuple, list)):
        return [_config_value(v) for v in value]
    return value


def _config_defaults(name: str) -> dict[str, Any]:
    """Default arguments of the model function ``name`` in retrax.models, if registered.

    A config recorded by the CLI holds only the arguments that were given.
    The registry is read from ``sys.modules``: a model that carries a config
    was built through retrax.models, so the module is already imported, and
    checkpoints never imports the model code itself.
    """
    registry = getattr(sys.modules.get("retrax.models.config"), "_REGISTRY", None) or {}
    fn = registry.get(name)
    if fn is None:
        return {}
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: _config_value(p.default) for p in params if p.default is not p.empty}


def check_model_config(layer: base.Layer, saved: Any, source: str) -> None:
    """Refuses a checkpoint whose recorded model config differs from ``layer``'s.

    ``saved`` is the checkpoint's ``meta['model']`` (``{'name', 'kwargs'}``);
    ``layer._model_config`` is set by the functions in :mod:`retrax.models`
    and by the CLI. Nothing is checked when either side records no config.
    Arguments in ``CONFIG_KEYS_THAT_MAY_DIFFER`` are ignored, and an argument
    recorded on one side only is compared with the model function's default.

    Raises:
      CheckpointError: the model names or any other argument differ.
    """
    own = getattr(layer, "_model_config", None)
    if not (isinstance(saved, dict) and isinstance(own, dict)):
        return
    saved_name, own_name = saved.get("name"), own.get("name")
    if not (isinstance(saved_name, str) and isinstance(own_name, str)):
        return
    rebuild = (f"Build the model from the checkpoint's own config with "
               f"retrax.models.from_config(retrax.checkpoints.read_any({source!r})['meta']"
               f"['model']), or pass check_config=False to retrax.checkpoints.load_layer to "
               f"load the weights anyway.")
    if saved_name != own_name:
        raise CheckpointError(
            f"{source} was saved from a {saved_name} model, but it is being loaded into a "
            f"{own_name}. {rebuild}")
    saved_kw, own_kw = saved.get("kwargs"), own.get("kwargs")
    if not (isinstance(saved_kw, dict) and isinstance(own_kw, dict)):
        return
    defaults = _config_defaults(own_name)
    missing = object()
    differences = []
    for key in sorted(set(saved_kw) | set(own_kw), key=str):
        if key in CONFIG_KEYS_THAT_MAY_DIFFER:
            continue
        a = _config_value(saved_kw.get(key, defaults.get(key, missing)))
        b = _config_value(own_kw.get(key, defaults.get(key, missing)))
        if a is missing or b is missing or a == b:
            continue
        differences.append(f"{key}={json.dumps(a, default=repr)} in the checkpoint but "
                           f"{key}={json.dumps(b, default=repr)} in the model")
    if differences:
        raise CheckpointError(
            f"{source} was saved from a {own_name} with another configuration: "
            f"{'; '.join(differences)}. Its weights would load into the wrong computation. "
            f"{rebuild}")


def load_layer(layer: base.Layer, file_name: str, weights_only: bool = False,
               input_signature: Any = None, *, check_config: bool = True,
               max_expansion: float | None = None) -> tuple[Any, Any]:
    """Implements ``Layer.init_from_file`` for native and Trax checkpoints.

    Args:
      check_config: refuse a native checkpoint whose recorded model config
        differs from ``layer._model_config`` (see :func:`check_model_config`).
      max_expansion: see :func:`read_any`.

    Raises:
      CheckpointError: the file is damaged or hostile, or it holds the weights
        of another model (the message names the layer and the weight).
    """
    file_name = _resolve_notebook_url(file_name)
    source = os.fspath(file_name)
    ckpt = read_any(file_name, max_expansion=max_expansion)
    if check_config:
        check_model_config(layer, ckpt["meta"].get("model"), source)
    sig = input_signature if input_signature is not None else ckpt["input_signature"]
    if sig is None and not layer._initialized:
        raise ValueError(
            f"{file_name} stores no input signature and {layer.name_with_arity} is not "
            f"initialized; pass input_signature=trax.shapes.ShapeDtype(...)."
        )
    if sig is not None:
        sig = _model_signature(layer, sig, source)
        if weights_only or not layer._initialized:
            if input_signature is None:
                # The file chose the signature, and init makes weights to fit it.
                _check_signature_size(sig, ckpt["file_size"], max_expansion, source)
            layer.init(sig)
    weights = assign_flat_weights(layer, ckpt["flat_weights"], source=source)
    state = layer.state
    if not weights_only:
        flat_state = ckpt["flat_state"]
        if flat_state is None:
            raise ValueError(
                f"{file_name} holds weights only; load it with weights_only=True."
            )
        state = assign_flat_state(layer, flat_state, source=source)
    return weights, state


def _check_signature_size(sig: Any, file_size: int, max_expansion: float | None,
                          source: str) -> None:
    """Refuses a stored signature whose inputs claim more bytes than the file may expand to.

    ``init`` sizes weights from the signature (a Dense kernel is ``d_in x d_out``)
    and its initializers allocate eagerly, so a hostile signature must be
    refused before ``init`` runs, not after.
    """
    limit = expansion_limit(file_size, max_expansion)
    for item in sig if isinstance(sig, tuple) else (sig,):
        n_bytes = math.prod(item.shape) * np.dtype(item.dtype).itemsize
        if n_bytes > limit:
            raise CheckpointError(
                f"{source} stores an input signature of shape {item.shape} and dtype "
                f"{np.dtype(item.dtype).name}, an input of {n_bytes} bytes, "
                f"more than the {limit} bytes a file of {file_size} bytes may expand to "
                f"(retrax.io.MAX_EXPANSION); the model's weights would be sized from it, so "
                f"it is refused as a likely memory bomb. Pass "
                f"input_signature=trax.shapes.ShapeDtype(...) to init_from_file.")


_WEIGHTS_FIX = "Build the model with the configuration the checkpoint was trained with."
_STATE_FIX = "Load with weights_only=True to keep the model's fresh state."


def _layer_path(chain: list[tuple[base.Layer, int]], leaf: base.Layer) -> str:
    """``Serial[2] > Dense_4``: the path style of LayerError (hidden combinators skipped)."""
    parts: list[str] = []
    hidden_index = None
    for parent, index in reversed(chain):
        if getattr(parent, "_hidden_in_path", False):
            if hidden_index is None:
                hidden_index = index
            continue
        if hidden_index is not None:
            index, hidden_index = hidden_index, None
        parts.insert(0, f"{parent.name_with_arity or type(parent).__name__}[{index}]")
    return " > ".join(parts + [leaf.name_with_arity or type(leaf).__name__])


def _leaf_names(layer: base.Layer, tree: Any, what: str) -> list[str]:
    """For each leaf of ``tree`` (``layer``'s weights or state), in flat order, its
    layer's path and place: ``Serial[2] > Dense_4, weights[0]``."""
    names: list[str] = []

    def visit(lyr: base.Layer, t: Any, chain: list[tuple[base.Layer, int]]) -> None:
        subs = lyr.sublayers
        if subs and isinstance(t, (tuple, list)) and len(t) == len(subs):
            for i, (sub, sub_tree) in enumerate(zip(subs, t)):
                visit(sub, sub_tree, chain + [(lyr, i)])
            return
        where = _layer_path(chain, lyr)
        for p in _leaf_paths(t):
            names.append(f"{where}, {what}" + "".join(f"[{k}]" for k in p.split("/") if p))

    visit(layer, tree, [])
    return names


def _fits(got: tuple, want: tuple, what: str) -> bool:
    # Old Trax checkpoints store the positional-encoding table as (1, L, d).
    return got == want or (what == "weight" and got[:1] == (1,) and got[1:] == want)


def _check_shapes(flat: list[Any], expected: list[Any], what: str, source: str,
                  layer: base.Layer, tree: Any, fix: str, count_note: str = "") -> None:
    """Raises CheckpointError naming the layer of the first array that does not fit."""
    got_shapes = [tuple(np.shape(x)) for x in flat]
    want_shapes = [tuple(getattr(w, "shape", ())) for w in expected]
    if len(got_shapes) == len(want_shapes) and all(
            _fits(g, w, what) for g, w in zip(got_shapes, want_shapes)):
        return
    names = _leaf_names(layer, tree, "weights" if what == "weight" else "state")
    if len(names) != len(want_shapes):  # a layer with its own tree layout: plain indices
        names = [f"{what} array {i}" for i in range(len(want_shapes))]
    owner = layer.name_with_arity
    first = next((i for i, (g, w) in enumerate(zip(got_shapes, want_shapes))
                  if not _fits(g, w, what)), None)
    if len(got_shapes) != len(want_shapes):
        if first is not None:
            where = (f" The first difference is at {names[first]}: shape {got_shapes[first]} "
                     f"in the checkpoint, {want_shapes[first]} in the model.")
        elif len(got_shapes) < len(want_shapes):
            where = (f" The arrays agree up to {names[len(got_shapes)]}, the first the "
                     f"checkpoint has no array for.")
        else:
            where = (f" All {len(want_shapes)} arrays of the model agree; the checkpoint "
                     f"has {len(got_shapes) - len(want_shapes)} more.")
        raise CheckpointError(
            f"{source} holds {len(got_shapes)} {what} arrays but {owner} needs "
            f"{len(want_shapes)}{count_note}.{where} {fix}")
    assert first is not None
    raise CheckpointError(
        f"{source} does not fit {owner}: {names[first]} has shape {got_shapes[first]} in the "
        f"checkpoint but the model expects {want_shapes[first]} ({what} array {first} of "
        f"{len(want_shapes)}). {fix}")


def _matched(flat: list[Any], expected: list[Any], what: str, source: str,
             layer: base.Layer, tree: Any, fix: str, count_note: str = "") -> list[Any]:
    """``flat`` checked against ``expected`` (count and shapes), cast to its dtypes."""
    _check_shapes(flat, expected, what, source, layer, tree, fix, count_note)
    fixed = []
    for got, want in zip(flat, expected):
        got = np.asarray(got)
        want_shape = tuple(getattr(want, "shape", ()))
        if tuple(got.shape) != want_shape:
            got = got[0]  # (1, L, d) positional encodings, see _fits
        fixed.append(jnp.asarray(got, dtype=getattr(want, "dtype", got.dtype)))
    return fixed


def assign_flat_weights(layer: base.Layer, flat: list[Any], source: str = "checkpoint") -> Any:
    """Puts flat weight arrays (Trax order) into ``layer``; checks counts and shapes.

    Raises:
      CheckpointError: a count or shape differs; the message names the layer.
    """
    expected = layer.weights
    exp_flat, _ = base.flatten_weights_and_state(expected, ())
    fixed = _matched(flat, exp_flat, "weight", source, layer, expected, _WEIGHTS_FIX)
    layer.weights = base._fill(fixed, expected, "weights")
    return layer.weights


def assign_flat_state(layer: base.Layer, flat: list[Any], source: str = "checkpoint") -> Any:
    """Puts flat state arrays (Trax order) into ``layer``; checks counts and shapes."""
    expected = layer.state
    _, exp_flat = base.flatten_weights_and_state((), expected)
    fixed = _matched(flat, exp_flat, "state", source, layer, expected, _STATE_FIX,
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
