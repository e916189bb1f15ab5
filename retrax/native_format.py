"""retrax's native checkpoint format: one safetensors file with JSON metadata.

Native format: one safetensors file holding the depth-first leaves of the
weight tree (``w/00000``, ...) and of the state tree (``s/00000``, ...), with
JSON metadata in the safetensors header (key ``retrax``): format version,
retrax version, the model's class and config when known, each leaf's tree path,
shape and dtype, and the input signature. Nothing in it is executable.

Writes are atomic: a temporary file in the same directory is written, fsync'd
and renamed over the target (remote fsspec paths are uploaded in one piece).
Paths go through fsspec, so ``gs://``, ``s3://`` ... work when that backend is
installed.

``read_any`` also reads Trax's ``.pkl.gz`` layouts into the same flat lists,
through :mod:`retrax.compat.trax_pickle`. Loading into a layer (shape checks,
model config) is :mod:`retrax.checkpoints`.

Faults: a file that cannot be read raises :class:`retrax.io.CheckpointError`
(a ``ValueError``) with the file's name: random or truncated bytes, damaged
safetensors, and metadata with missing or ill-typed fields or with
shapes/dtypes that disagree with the stored tensors.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from retrax import shapes
from retrax.io import CheckpointError, read_bytes, write_bytes_atomic
from retrax.layers import base

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "save_native",
    "read_native",
    "read_any",
    "is_trax_pickle",
    "leaf_paths",
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


def is_trax_pickle(data: bytes) -> bool:
    """Whether ``data`` starts as gzip does, as every Trax ``.pkl.gz`` checkpoint does."""
    return data[:2] == _GZIP_MAGIC


def leaf_paths(tree: Any, prefix: str = "") -> list[str]:
    """Tree paths (``0/1/0``) of the leaves, in ``flatten_weights_and_state`` order."""
    if isinstance(tree, dict) and tree in (base.GET_WEIGHTS_FROM_CACHE, base.GET_STATE_FROM_CACHE):
        return []
    if isinstance(tree, (tuple, list)):
        out: list[str] = []
        for i, sub in enumerate(tree):
            out.extend(leaf_paths(sub, f"{prefix}/{i}" if prefix else str(i)))
        return out
    if isinstance(tree, dict):
        out = []
        for k, sub in tree.items():
            out.extend(leaf_paths(sub, f"{prefix}/{k}" if prefix else str(k)))
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
    for i, (p, x) in enumerate(zip(leaf_paths(weights), flat_w)):
        arr, dtype_name = _to_numpy(x)
        tensors[f"w/{i:05d}"] = arr
        meta["weights"].append({"path": p, "shape": list(arr.shape), "dtype": dtype_name})
    if state is not None:
        for i, (p, x) in enumerate(zip(leaf_paths(state), flat_s)):
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
    # By content first: save_to_file('model.pkl.gz') writes the native format.
    ckpt_dict = None
    if not is_trax_pickle(data):
        try:
            ckpt_dict = read_native(data, os.fspath(path))
        except CheckpointError:
            if not os.fspath(path).endswith(".pkl.gz"):
                raise
            # Neither format: the Trax reader says what is wrong with a .pkl.gz file.
    if ckpt_dict is None:
        from retrax.compat import trax_pickle

        ckpt = trax_pickle.read_trax_checkpoint(path, max_expansion=max_expansion)
        ckpt_dict = {"meta": {"format": "trax", "layout": ckpt.layout, "step": ckpt.step},
                     "flat_weights": list(ckpt.flat_weights),
                     "flat_state": None if ckpt.flat_state is None else list(ckpt.flat_state),
                     "arrays": {}, "input_signature": ckpt.input_signature, "trax": ckpt}
    ckpt_dict["file_size"] = len(data)
    return ckpt_dict


def _version() -> str:
    from retrax.version import __version__

    return __version__
