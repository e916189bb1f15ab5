"""Shape assertions with an einsum-like spec, as Trax's ``assert_shape``.

A spec such as ``'...a->...b'`` or ``'bld,b11l->bld,b11l'`` names each
dimension: a letter must have the same size everywhere it appears, a digit is
a literal size, and ``...`` (at most once per tensor) stands for any number
of dimensions, the same ones in every tensor of the check (inputs and
outputs). ``assert_shape(spec)`` applied to a function returning a layer wraps
it as ``Serial(AssertShape(in), layer, AssertShape(out))``; the assertion
layers have an empty name, so with one input they do not show when printed.
Applied to a ``Layer`` subclass it checks inside ``forward`` and adds no
layer (Trax's behaviour for ``Dense``, ``Embedding``, ...).

>>> import numpy as np
>>> from retrax import layers as tl
>>> check = tl.AssertShape('ab,b', visible_layer=True)
>>> _ = check((np.zeros((2, 3)), np.zeros(3)))
>>> check((np.zeros((2, 3)), np.zeros(4)))
Traceback (most recent call last):
...
retrax.layers.errors.LayerError: ...
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from retrax.layers.base import Layer
from retrax.layers.errors import find_caller
from retrax.layers.stack import as_stack
from retrax.layers.stack_combinators import Serial

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


def _fail(spec: str, got: list, bindings: dict, defined_at: tuple[str, int], where: str,
          message: str | None) -> None:
    filename, line = defined_at
    msg = f"{message} " if message else ""
    raise ValueError(
        f"{msg}AssertShape Error. Expected {spec!r}, got {got} with dict {bindings}. "
        f"Defined at {filename}:{line} ({where})."
    )


def _check_shapes(spec: str, tensors: list[list[str]], items: list[Any], linked: dict,
                  defined_at: tuple[str, int], where: str, message: str | None) -> None:
    """Checks ``items`` against the parsed spec, extending the bindings in ``linked``."""
    got = [tuple(getattr(x, "shape", ())) for x in items]
    bindings: dict[str, int] = linked.setdefault("bindings", {})

    def fail() -> None:
        _fail(spec, got, bindings, defined_at, where, message)

    if len(items) != len(tensors):
        fail()
    for tokens, shape in zip(tensors, got):
        named = [t for t in tokens if t != "..."]
        if "..." in tokens:
            if len(shape) < len(named):
                fail()
            k = tokens.index("...")
            n_ell = len(shape) - len(named)
            ell = shape[k:k + n_ell]
            # Every '...' of one check (inputs and outputs) is the same dims.
            if linked.setdefault("ellipsis", ell) != ell:
                fail()
            dims = shape[:k] + shape[k + n_ell:]
        else:
            if len(shape) != len(named):
                fail()
            dims = shape
        for t, d in zip(named, dims):
            if t.isdigit():
                if int(t) != d:
                    fail()
            elif bindings.setdefault(t, d) != d:
                fail()


class AssertShape(Layer):
    """Checks the shapes of the top inputs against ``spec`` and passes them on.

    ``n_in == n_out ==`` the number of tensors in the spec. The name is empty
    unless ``visible_layer`` (Trax prints these wrappers only by their arity).

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.AssertShape('aa')(np.eye(2)).shape
    (2, 2)
    >>> tl.AssertShape('...a,...a', visible_layer=True)
    AssertShape_in2_out2
    """

    def __init__(self, spec: str, message: str | None = None, visible_layer: bool = False,
                 linked: dict | None = None, starts_check: bool = True,
                 defined_at: tuple[str, int] | None = None):
        tensors = _parse(spec)
        name = "AssertShape" if visible_layer else ""
        super().__init__(n_in=len(tensors), n_out=len(tensors), name=name)
        self._spec = spec
        self._tensors = tensors
        self._message = message
        self._defined_at = defined_at or find_caller()
        # Shared with the partner assertion of an AssertFunction so that letters
        # bound on the inputs are checked on the outputs. Only shapes are kept,
        # so tracing this layer never leaks values.
        self._linked = linked if linked is not None else {}
        self._starts_check = starts_check

    def forward(self, xs: Any) -> Any:
        items = as_stack(xs) if self._n_in != 1 else [xs]
        if self._starts_check:
            self._linked.clear()
        where = "input" if self._starts_check else "output"
        _check_shapes(self._spec, self._tensors, items, self._linked, self._defined_at, where,
                      self._message)
        return xs


def AssertFunction(specification: str, layer: Layer, message: str | None = None,  # noqa: N802
                   defined_at: tuple[str, int] | None = None) -> Layer:
    """``Serial(AssertShape(inputs), layer, AssertShape(outputs))`` with shared letters.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> checked = tl.AssertFunction('...a->...a', tl.Fn('Double', lambda x: 2 * x))
    >>> checked(np.ones((2, 3))).shape
    (2, 3)
    """
    spec_in, spec_out = _split_arrow(specification)
    defined_at = defined_at or find_caller()
    linked: dict = {}
    first = AssertShape(spec_in, message, linked=linked, defined_at=defined_at)
    last = AssertShape(spec_out, message, linked=linked, starts_check=False,
                       defined_at=defined_at)
    return Serial(first, layer, last)


def _split_arrow(specification: str) -> tuple[str, str]:
    if specification.count("->") != 1:
        raise ValueError(
            f"assert_shape: the spec needs exactly one '->' between inputs and outputs; "
            f"got {specification!r}."
        )
    spec_in, spec_out = specification.split("->")
    _parse(spec_in)  # Fail early on a malformed spec.
    _parse(spec_out)
    return spec_in, spec_out


def assert_shape(specification: str) -> Callable[[Any], Any]:
    """Decorator checking input/output shapes of a layer class or layer function.

    On a function returning a layer, the result is wrapped in
    ``AssertFunction`` (it prints as ``Serial[...]``). On a ``Layer``
    subclass, ``forward`` checks its inputs and outputs and the layer prints
    as before.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> @tl.assert_shape('...a->...a')
    ... def Double():
    ...     return tl.Fn('Double', lambda x: 2 * x)
    >>> print(Double())
    Serial[
      Double
    ]
    """
    spec_in, spec_out = _split_arrow(specification)
    tensors_in, tensors_out = _parse(spec_in), _parse(spec_out)
    caller = inspect.currentframe().f_back  # where the decorator is applied
    defined_at = (caller.f_code.co_filename, caller.f_lineno)

    def wrap(target: Any) -> Any:
        if isinstance(target, type) and issubclass(target, Layer):
            return _wrap_class(target)

        @functools.wraps(target)
        def build(*args: Any, **kwargs: Any) -> Layer:
            return AssertFunction(specification, target(*args, **kwargs),
                                  defined_at=defined_at)

        return build

    def _wrap_class(cls: type) -> type:
        forward = cls.forward

        @functools.wraps(forward)
        def checked_forward(self: Layer, xs: Any) -> Any:
            linked: dict = {}
            n_in = len(tensors_in)
            _check_shapes(spec_in, tensors_in, as_stack(xs) if n_in != 1 else [xs], linked,
                          defined_at, "input", None)
            ys = forward(self, xs)
            n_out = len(tensors_out)
            _check_shapes(spec_out, tensors_out, as_stack(ys) if n_out != 1 else [ys],
                          linked, defined_at, "output", None)
            return ys

        cls.forward = checked_forward
        return cls

    return wrap
