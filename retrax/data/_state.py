"""JSON-safe encoding of pipeline buffers (examples held by Shuffle, Batch, ...).

A pipeline's position goes into the Loop's checkpoint metadata, which is JSON,
so buffered examples are encoded as tagged values: every container or array is
a one-key dict (``{"t": [...]}`` a tuple, ``{"nd": [dtype, shape, base64]}`` an
array, ``"nz"`` the same zlib-compressed, ...); scalars stay bare. Nothing in
it is executable.

>>> import numpy as np
>>> x = (np.arange(3, dtype=np.int32), "text", {"label": 2}, [1.5, None])
>>> y = decode(encode(x))
>>> y[0].dtype, y[0].tolist(), y[1:]
(dtype('int32'), [0, 1, 2], ('text', {'label': 2}, [1.5, None]))
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import numpy as np

__all__ = ["encode", "decode", "EncodeCache"]


def encode(obj: Any) -> Any:
    """``obj`` (nested tuples/lists/dicts of arrays, strings, numbers) as JSON-safe data."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "OUSV":
            return {"na": [obj.dtype.str, [encode(v) for v in obj.ravel().tolist()],
                           list(obj.shape)]}
        raw = np.ascontiguousarray(obj).tobytes()
        packed = zlib.compress(raw, 1) if len(raw) > 512 else raw  # Token arrays shrink ~3x.
        tag = "nz" if len(packed) < len(raw) else "nd"
        data = base64.b64encode(packed if tag == "nz" else raw).decode("ascii")
        return {tag: [obj.dtype.str, list(obj.shape), data]}
    if isinstance(obj, np.generic):
        return {"ns": [obj.dtype.str, encode(np.asarray(obj))]}
    if isinstance(obj, tuple):
        return {"t": [encode(v) for v in obj]}
    if isinstance(obj, list):
        return {"l": [encode(v) for v in obj]}
    if isinstance(obj, dict):
        return {"d": [[encode(k), encode(v)] for k, v in obj.items()]}
    if isinstance(obj, bytes):
        return {"b": base64.b64encode(obj).decode("ascii")}
    raise TypeError(
        f"Cannot save a pipeline position holding a {type(obj).__name__}: buffered examples "
        f"must be made of NumPy arrays, str, bytes, numbers, tuples, lists and dicts."
    )


def decode(obj: Any) -> Any:
    """Inverse of :func:`encode`."""
    if not isinstance(obj, dict):
        return obj
    (tag, value), = obj.items()
    if tag in ("nd", "nz"):
        dtype, shape, data = value
        raw = base64.b64decode(data)
        raw = zlib.decompress(raw) if tag == "nz" else raw
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
    if tag == "na":
        dtype, items, shape = value
        return np.array([decode(v) for v in items], dtype=np.dtype(dtype)).reshape(shape)
    if tag == "ns":
        return decode(value[1])[()]
    if tag == "t":
        return tuple(decode(v) for v in value)
    if tag == "l":
        return [decode(v) for v in value]
    if tag == "d":
        return {_hashable(decode(k)): decode(v) for k, v in value}
    if tag == "b":
        return base64.b64decode(value)
    raise ValueError(f"Unknown tag {tag!r} in a saved pipeline position.")


class EncodeCache:
    """Encodes lists of examples, re-using the encoding of items seen in the last call.

    A Shuffle buffer changes by a few examples per batch; with this cache a
    position snapshot per batch costs the new examples, not the whole buffer.
    """

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Any, Any]] = {}

    def encode_list(self, items: list[Any]) -> dict:
        cache: dict[int, tuple[Any, Any]] = {}
        out = []
        for x in items:
            hit = self._cache.get(id(x))
            if hit is None or hit[0] is not x:
                hit = (x, encode(x))
            cache[id(x)] = hit
            out.append(hit[1])
        self._cache = cache  # Holds the items, so their ids cannot be reused meanwhile.
        return {"l": out}


def _hashable(key: Any) -> Any:
    return key.item() if isinstance(key, np.generic) else key
