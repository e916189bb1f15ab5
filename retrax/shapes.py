"""Shapes and dtypes of (trees of) arrays, as Trax's ``trax.shapes``.

A *signature* is a ``ShapeDtype`` or a tuple/list/dict of them; it describes
the inputs a layer will receive without holding any data.

>>> import numpy as np
>>> from retrax import shapes
>>> shapes.ShapeDtype((2, 3))
ShapeDtype{shape:(2, 3), dtype:<class 'numpy.float32'>}
>>> shapes.signature(np.zeros((4, 5), np.int32))
ShapeDtype{shape:(4, 5), dtype:int32}
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "ShapeDtype",
    "signature",
    "splice_signatures",
    "assert_shape_equals",
    "assert_same_shape",
]


class ShapeDtype:
    """The shape and dtype of one array, with no data (Trax's ``ShapeDtype``).

    ``dtype`` is stored as given (``np.float32`` the type, or ``np.dtype('int32')``
    the instance), so it prints the way Trax prints it.
    """

    __slots__ = ["shape", "dtype"]

    def __init__(self, shape: tuple[int, ...] | list[int], dtype: Any = np.float32):
        if isinstance(shape, list):
            shape = tuple(shape)
        if not isinstance(shape, tuple):
            raise TypeError(f"shape must be tuple or list; got: {shape!r}")
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype

    # Pickles written by Trax restore a ShapeDtype through __setstate__ with
    # (None, {'shape': ..., 'dtype': ...}) (slots) or a plain dict.
    def __getstate__(self):
        return (None, {"shape": self.shape, "dtype": self.dtype})

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:
            d = dict(state[0] or {})
            d.update(state[1] or {})
            state = d
        if not isinstance(state, dict):
            raise TypeError(f"cannot restore ShapeDtype from {type(state).__name__}")
        self.shape = tuple(int(d) for d in state["shape"])
        self.dtype = state["dtype"]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ShapeDtype)
            and self.shape == other.shape
            and np.dtype(self.dtype) == np.dtype(other.dtype)
        )

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((self.shape, np.dtype(self.dtype).str))

    def __repr__(self) -> str:
        return f"ShapeDtype{{shape:{self.shape}, dtype:{self.dtype}}}"

    def __len__(self) -> int:
        # Trax: "a signature has length 1".
        return 1

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def as_tuple(self) -> tuple[tuple[int, ...], Any]:
        return self.shape, self.dtype

    def replace(self, **kwargs: Any) -> ShapeDtype:
        shape = kwargs.pop("shape", self.shape)
        dtype = kwargs.pop("dtype", self.dtype)
        if kwargs:
            raise TypeError(f"ShapeDtype.replace got unknown fields {sorted(kwargs)}")
        return ShapeDtype(shape, dtype)


def signature(obj: Any) -> Any:
    """Returns the signature of an array or of a tuple/list/dict of arrays."""
    if isinstance(obj, ShapeDtype):
        return obj
    if isinstance(obj, tuple):
        return tuple(signature(x) for x in obj)
    if isinstance(obj, list):
        return [signature(x) for x in obj]
    if isinstance(obj, dict):
        return {k: signature(v) for k, v in obj.items()}
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        return ShapeDtype(tuple(obj.shape), obj.dtype)
    arr = np.asarray(obj)
    return ShapeDtype(arr.shape, arr.dtype)


def splice_signatures(*sigs: Any) -> Any:
    """Concatenates signatures one level deep; a single result is unwrapped."""
    result: list[Any] = []
    for sig in sigs:
        if isinstance(sig, (list, tuple)):
            result.extend(sig)
        else:
            result.append(sig)
    return result[0] if len(result) == 1 else tuple(result)


def assert_shape_equals(array: Any, shape: tuple[int, ...]) -> None:
    if tuple(array.shape) != tuple(shape):
        raise AssertionError(f"Invalid shape {tuple(array.shape)}; expected {tuple(shape)}.")


def assert_same_shape(array1: Any, array2: Any) -> None:
    if tuple(array1.shape) != tuple(array2.shape):
        raise AssertionError(
            f"Shapes {tuple(array1.shape)} and {tuple(array2.shape)} differ; expected them equal."
        )
