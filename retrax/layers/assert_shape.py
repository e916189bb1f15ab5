"""Shape assertions with an einsum-like spec, as Trax's ``assert_shape``.

A spec such as ``'...a->...b'`` or ``'bld,b11l->bld,b11l'`` names each
dimension: a letter must have the same size everywhere it appears, a digit is
a literal size, and ``...`` (at most once per tensor) stands for any leading
dimensions, which must agree between tensors. ``assert_shape(spec)`` applied
to a function returning a layer wraps it as
``Serial(AssertShape(in), layer, AssertShape(out))``; the assertion layers
have an empty name, so with one input they do not show when printed.

>>> import numpy as np
>>> from retrax import layers as tl
>>> check = tl.AssertShape('ab,b', visible_layer=True)
>>> _ = check((np.zeros((2, 3)), np.zeros(3)))
>>> check((np.zeros((2, 3)), np.zeros(4)))
Traceback (most recent call last):
...
retrax.layers.base.LayerError: ...
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from retrax.layers.base import Layer, _as_stack, _find_caller, _pack

__all__ = ["AssertShape", "AssertFunction", "assert_shape"]


def _parse(spec: str) -> list[list[str]]:
    tensors = []
    for part in spec.split(","):
        part = part.strip()
        tokens: list[str] = []
        i = 0
        while i < len(part):
            if part.startswith("...", i):
                tokens.append("...")
                i += 3
            elif part[i].isalnum():
                tokens.append(part[i])
                i += 1
            else:
                raise ValueError(f"assert_shape: bad character {part[i]!r} in spec {spec!r}.")
        if tokens.count("...") > 1:
            raise ValueError(f"assert_shape: '...' may appear once per tensor; spec {spec!r}.")
        tensors.append(tokens)
    return tensors


class AssertShape(Layer):
    """Checks the shapes of the top inputs against ``spec`` and passes them on.

    ``n_in == n_out ==`` the number of tensors in the spec. The name is empty
    unless ``visible_layer`` (Trax prints these wrappers only by their arity).
    """

    def __init__(self, spec: str, message: str | None = None, visible_layer: bool = False,
                 linked: dict | None = None, starts_check: bool = True):
        tensors = _parse(spec)
        name = "AssertShape" if visible_layer else ""
        super().__init__(n_in=len(tensors), n_out=len(tensors), name=name)
        self._spec = spec
        self._tensors = tensors
        self._message = message
        self._defined_at = _find_caller()
        # Shared with the partner assertion of an AssertFunction so that letters
        # bound on the inputs are checked on the outputs.
        self._linked = linked if linked is not None else {}
        self._starts_check = starts_check

    def forward(self, xs: Any) -> Any:
        items = _as_stack(xs) if self._n_in != 1 else [xs]
        shapes_ = [tuple(getattr(x, "shape", ())) for x in items]
        if self._starts_check:
            self._linked.clear()
        bindings: dict[str, int] = dict(self._linked.get("bindings", {}))
        ellipsis = self._linked.get("ellipsis")
        for tokens, shape in zip(self._tensors, shapes_):
            n_named = len([t for t in tokens if t != "..."])
            if "..." in tokens:
                if len(shape) < n_named:
                    self._fail(shapes_, bindings)
                k = tokens.index("...")
                n_ell = len(shape) - n_named
                ell = shape[k:k + n_ell]
                if ellipsis is not None and len(ellipsis) == len(ell) and ellipsis != ell:
                    self._fail(shapes_, bindings)
                ellipsis = ell if ellipsis is None or len(ell) == len(ellipsis) else ellipsis
                dims = list(shape[:k]) + list(shape[k + n_ell:])
                named = [t for t in tokens if t != "..."]
            else:
                if len(shape) != n_named:
                    self._fail(shapes_, bindings)
                dims, named = list(shape), tokens
            for t, d in zip(named, dims):
                if t.isdigit():
                    if int(t) != d:
                        self._fail(shapes_, bindings)
                elif bindings.setdefault(t, d) != d:
                    self._fail(shapes_, bindings)
        self._linked["bindings"] = bindings
        self._linked["ellipsis"] = ellipsis
        return _pack(items)

    def _fail(self, got: list, bindings: dict) -> None:
        filename, line = self._defined_at
        msg = f"{self._message} " if self._message else ""
        raise ValueError(
            f"{msg}AssertShape Error. Expected {self._spec!r}, got {got} with dict {bindings}. "
            f"Defined at {filename}:{line}."
        )


def AssertFunction(specification: str, layer: Layer, message: str | None = None) -> Layer:  # noqa: N802
    """``Serial(AssertShape(inputs), layer, AssertShape(outputs))`` with shared letters."""
    from retrax.layers.combinators import Serial

    if "->" not in specification:
        raise ValueError(f"AssertFunction: spec needs '->'; got {specification!r}.")
    spec_in, spec_out = specification.split("->")
    linked: dict = {}
    first = AssertShape(spec_in, message, linked=linked)
    last = AssertShape(spec_out, message, linked=linked, starts_check=False)
    return Serial(first, layer, last)


def assert_shape(specification: str) -> Callable[[Callable[..., Layer]], Callable[..., Layer]]:
    """Decorator for functions that build a layer: checks its input/output shapes."""

    def wrap(fn: Callable[..., Layer]) -> Callable[..., Layer]:
        @functools.wraps(fn)
        def build(*args: Any, **kwargs: Any) -> Layer:
            return AssertFunction(specification, fn(*args, **kwargs))

        return build

    return wrap
