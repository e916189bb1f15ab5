"""The data stack: how ``n_in`` inputs and ``n_out`` outputs are passed around.

A layer takes ``n_in`` items from the top of the stack and pushes ``n_out``.
On the way in and out, one item travels as a bare array and several as a
tuple (Trax's convention), so a stack is written as a bare item or a tuple,
top first. ``as_stack`` turns either into a list, ``pack`` turns a list back.

>>> from retrax.layers import stack
>>> stack.as_stack(('a', 'b', 'c'))
['a', 'b', 'c']
>>> stack.pack(['a']), stack.pack(['a', 'b'])
('a', ('a', 'b'))
>>> stack.outputs_onto_stack('z', ('a', 'b', 'c'), 2)   # pop 2, push 1
('z', 'c')
"""

from __future__ import annotations

from typing import Any

__all__ = ["as_stack", "pack", "inputs_from_stack", "outputs_onto_stack", "outputs_as_list"]


def as_stack(x: Any) -> list[Any]:
    """A tuple or list of items as a list; anything else as a one-item list.

    For a layer with ``n_in == 1`` the bare input may itself be a tuple (a
    tuple-valued input); such callers write ``as_stack(x) if n_in != 1 else [x]``.
    """
    return list(x) if isinstance(x, (tuple, list)) else [x]


def pack(items: list[Any]) -> Any:
    """The inverse of ``as_stack``: one item bare, several (or none) as a tuple."""
    return items[0] if len(items) == 1 else tuple(items)


def inputs_from_stack(stack: Any, n: int) -> Any:
    """The top ``n`` items of ``stack``: ``()``, a bare item, or a tuple."""
    return pack(as_stack(stack)[:n])


def outputs_onto_stack(outputs: Any, stack: Any, n: int) -> Any:
    """Replaces the top ``n`` items of ``stack`` with ``outputs``."""
    return pack(as_stack(outputs) + as_stack(stack)[n:])


def outputs_as_list(layer: Any, outputs: Any) -> list[Any]:
    """Checks that ``layer`` returned ``layer.n_out`` items; returns them as a list."""
    n_out = layer.n_out
    if n_out == 1:
        return [outputs]
    if not isinstance(outputs, (tuple, list)) or len(outputs) != n_out:
        got = f"{len(outputs)} items" if isinstance(outputs, (tuple, list)) else "one array"
        raise ValueError(
            f"{layer.name_with_arity} declares n_out={n_out} but its forward returned {got}. "
            f"Return a tuple of {n_out} arrays or change n_out."
        )
    return list(outputs)
