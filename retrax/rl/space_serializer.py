"""Elements of spaces as fixed-length token sequences (Trax's ``trax.rl.space_serializer``).

A serializer turns a batch of space elements into a ``(B, R)`` int32 array of
tokens in ``[0, vocab_size)`` (``R = representation_length``) and back, so a
sequence model over tokens can model observations and actions:

- :class:`BoxSpaceSerializer`: each real entry, rescaled from ``[low, high]`` to
  ``[0, 1]``, written as ``precision`` base-``vocab_size`` digits, most
  significant first. Bounds wider than ``max_range`` are clipped to it first
  (gym gives some spaces infinite bounds). Deserializing gives the lower edge
  of the digit's bin; values outside the bounds serialize as the bound.
- :class:`DiscreteSpaceSerializer`: the element itself, one token.
- :class:`MultiDiscreteSpaceSerializer`: one token per entry.

``significance_map[i]`` says how significant token ``i`` is (0 the most):
the digit position for a box, 0 for the others.

Spaces are duck-typed (retrax does not depend on gym): a box has ``shape``,
``dtype``, ``low``, ``high``; a discrete space ``n`` (and ``shape == ()``,
optionally ``start``); a multi-discrete one ``nvec``. Gym's and gymnasium's
spaces work as they are; :mod:`retrax.rl.spaces` has stand-ins. ``serialize``
and ``deserialize`` are written with ``jax.numpy``, so they run inside
compiled layers too (then out-of-range integers are not checked).

>>> import numpy as np
>>> from retrax.rl import space_serializer, spaces
>>> srl = space_serializer.create(spaces.Box(low=0.0, high=1.0, shape=(2,)), vocab_size=4,
...                               precision=2)
>>> tokens = srl.serialize(np.array([[0.5625, 1.0]]))
>>> tokens.tolist()
[[2, 1, 3, 3]]
>>> srl.deserialize(tokens).tolist()
[[0.5625, 0.9375]]
>>> srl.significance_map.tolist()
[0, 1, 0, 1]
"""

from __future__ import annotations

import logging
from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = ["SpaceSerializer", "BoxSpaceSerializer", "DiscreteSpaceSerializer",
           "MultiDiscreteSpaceSerializer", "create", "space_kind"]

_log = logging.getLogger(__name__)

_EXPECTED = ("a Box-like space (attributes shape, dtype, low, high), a Discrete-like one "
             "(n, with shape ()) or a MultiDiscrete-like one (nvec)")


def space_kind(space: Any) -> str | None:
    """``'box'``, ``'discrete'``, ``'multi_discrete'`` or None, from the space's attributes.

    >>> from retrax.rl import spaces
    >>> space_kind(spaces.Discrete(2)), space_kind(spaces.MultiDiscrete([2])), space_kind(3)
    ('discrete', 'multi_discrete', None)
    """
    if hasattr(space, "nvec"):
        return "multi_discrete"
    if all(hasattr(space, a) for a in ("shape", "dtype", "low", "high")):
        return "box"
    if hasattr(space, "n") and getattr(space, "shape", ()) in ((), None):
        return "discrete"
    return None


def _check_vocab(owner: str, vocab_size: Any, least: int) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
            or vocab_size < least:
        raise ValueError(f"{owner}: vocab_size must be an int >= {least}; got {vocab_size!r}.")
    return int(vocab_size)


def _batch_of(owner: str, data: Any, element_shape: tuple, what: str) -> Any:
    """``data`` as an array ``(B, *element_shape)``, or a clear error."""
    data = jnp.asarray(data)
    if data.ndim < 1 or tuple(data.shape[1:]) != tuple(element_shape):
        expected = "(batch" + "".join(f", {d}" for d in element_shape) + ")"
        raise ValueError(f"{owner}.{what}: expected a batch of shape {expected}; got shape "
                         f"{tuple(data.shape)}.")
    return data


class SpaceSerializer:
    """Base class: a space and a vocabulary; subclasses define the encoding.

    Attributes (subclasses): ``representation_length`` (tokens per element)
    and ``significance_map`` (an int array of that length; 0 = most
    significant). ``space_kind`` names the kind of space accepted.
    """

    space_kind: str = ""
    representation_length: int = 0

    def __init__(self, space: Any, vocab_size: int):
        kind = space_kind(space)
        if kind != self.space_kind:
            raise TypeError(
                f"{type(self).__name__}: expected a {self.space_kind.replace('_', '-')} space; "
                f"got {type(space).__name__} ({'not a supported space' if kind is None else kind})."
                f" Use space_serializer.create(space, vocab_size) to pick the serializer; "
                f"supported: {_EXPECTED}.")
        self._space = space
        self._vocab_size = vocab_size

    @property
    def space(self) -> Any:
        """The space serialized (as given)."""
        return self._space

    @property
    def vocab_size(self) -> int:
        """Number of distinct tokens; every token is in ``[0, vocab_size)``."""
        return self._vocab_size

    @property
    def significance_map(self) -> np.ndarray:
        """Per token, its significance (0 the most significant); int32 ``(R,)``."""
        return np.zeros(self.representation_length, np.int32)

    def serialize(self, data: Any) -> Any:
        """A batch of ``B`` elements -> int32 tokens ``(B, representation_length)``."""
        raise NotImplementedError(f"{type(self).__name__} does not define serialize(data).")

    def deserialize(self, representation: Any) -> Any:
        """Tokens ``(B, representation_length)`` -> a batch of ``B`` elements."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define deserialize(representation).")


class BoxSpaceSerializer(SpaceSerializer):
    """Fixed-point digits of each entry of a bounded box (see the module docstring).

    Args:
      space: a box space.
      vocab_size: the base of the digits (>= 2).
      precision: digits per entry.
      max_range: ``(lowest, highest)`` representable bound; wider bounds are
        clipped to it (with a logged warning).
    """

    space_kind = "box"

    def __init__(self, space: Any, vocab_size: int, precision: int = 2,
                 max_range: tuple[float, float] = (-100.0, 100.0)):
        owner = "BoxSpaceSerializer"
        super().__init__(space, _check_vocab(owner, vocab_size, 2))
        if isinstance(precision, bool) or not isinstance(precision, (int, np.integer)) \
                or precision < 1:
            raise ValueError(f"{owner}: precision must be a positive int; got {precision!r}.")
        lowest, highest = (float(v) for v in max_range)
        if not lowest < highest:
            raise ValueError(f"{owner}: max_range must be (low, high) with low < high; "
                             f"got {max_range!r}.")
        self._precision = int(precision)
        self._shape = tuple(int(d) for d in space.shape)
        low = np.broadcast_to(np.asarray(space.low, np.float64), self._shape)
        high = np.broadcast_to(np.asarray(space.high, np.float64), self._shape)
        clipped_low, clipped_high = np.maximum(low, lowest), np.minimum(high, highest)
        if not (np.array_equal(clipped_low, low) and np.array_equal(clipped_high, high)):
            _log.warning("BoxSpaceSerializer: the space's bounds [%s, %s] exceed max_range %s; "
                         "serializing within [%s, %s].", low, high, (lowest, highest),
                         clipped_low, clipped_high)
        if np.any(clipped_high <= clipped_low):
            raise ValueError(f"{owner}: every entry needs low < high within max_range "
                             f"{(lowest, highest)}; got low={clipped_low}, high={clipped_high}.")
        self._low = clipped_low.astype(np.float32)
        self._high = clipped_high.astype(np.float32)

    @property
    def precision(self) -> int:
        """Digits per entry."""
        return self._precision

    @property
    def low(self) -> np.ndarray:
        """The lower bounds used (after clipping to ``max_range``)."""
        return self._low

    @property
    def high(self) -> np.ndarray:
        """The upper bounds used (after clipping to ``max_range``)."""
        return self._high

    @property
    def representation_length(self) -> int:  # type: ignore[override]
        return self._precision * int(np.prod(self._shape, dtype=np.int64))

    @property
    def significance_map(self) -> np.ndarray:
        n = int(np.prod(self._shape, dtype=np.int64))
        return np.tile(np.arange(self._precision, dtype=np.int32), n)

    def serialize(self, data: Any) -> Any:
        x = _batch_of("BoxSpaceSerializer", data, self._shape, "serialize")
        batch = x.shape[0]
        u = jnp.clip((x.astype(jnp.float32) - self._low) / (self._high - self._low), 0.0, 1.0)
        u = jnp.reshape(u, (batch, -1))
        digits = []
        for _ in range(self._precision):
            scaled = u * self._vocab_size
            # u == 1 (the upper bound) gives the top digit at every position.
            digit = jnp.clip(jnp.floor(scaled), 0, self._vocab_size - 1)
            digits.append(digit.astype(jnp.int32))
            u = scaled - digit
        return jnp.reshape(jnp.stack(digits, axis=-1), (batch, self.representation_length))

    def deserialize(self, representation: Any) -> Any:
        tokens = _batch_of("BoxSpaceSerializer", representation,
                           (self.representation_length,), "deserialize")
        batch = tokens.shape[0]
        digits = jnp.reshape(tokens, (batch, -1, self._precision)).astype(jnp.float32)
        scales = float(self._vocab_size) ** -np.arange(1, self._precision + 1)
        u = jnp.sum(digits * jnp.asarray(scales, jnp.float32), axis=-1)
        u = jnp.reshape(u, (batch,) + self._shape)
        return u * (self._high - self._low) + self._low


class DiscreteSpaceSerializer(SpaceSerializer):
    """One token per element: the element minus the space's ``start`` (default 0).

    ``n`` must fit the vocabulary (``n <= vocab_size``).
    """

    space_kind = "discrete"
    representation_length = 1

    def __init__(self, space: Any, vocab_size: int):
        owner = "DiscreteSpaceSerializer"
        super().__init__(space, _check_vocab(owner, vocab_size, 1))
        if int(space.n) > vocab_size:
            raise ValueError(f"{owner}: the space has {int(space.n)} elements but the "
                             f"vocabulary only {vocab_size} tokens; use vocab_size >= "
                             f"{int(space.n)}.")
        self._start = int(getattr(space, "start", 0) or 0)

    def serialize(self, data: Any) -> Any:
        x = jnp.asarray(data)
        if x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
        x = _batch_of("DiscreteSpaceSerializer", x, (), "serialize")
        return jnp.reshape(x.astype(jnp.int32) - self._start, (-1, 1))

    def deserialize(self, representation: Any) -> Any:
        tokens = _batch_of("DiscreteSpaceSerializer", representation, (1,), "deserialize")
        return tokens[:, 0].astype(jnp.int32) + self._start


class MultiDiscreteSpaceSerializer(SpaceSerializer):
    """One token per entry of ``nvec`` (row-major); every ``nvec[i] <= vocab_size``."""

    space_kind = "multi_discrete"

    def __init__(self, space: Any, vocab_size: int):
        owner = "MultiDiscreteSpaceSerializer"
        super().__init__(space, _check_vocab(owner, vocab_size, 1))
        self._nvec = np.asarray(space.nvec)
        if self._nvec.size == 0:
            raise ValueError(f"{owner}: the space's nvec is empty.")
        if int(self._nvec.max()) > vocab_size:
            raise ValueError(f"{owner}: an entry has {int(self._nvec.max())} values but the "
                             f"vocabulary only {vocab_size} tokens; use vocab_size >= "
                             f"{int(self._nvec.max())}.")
        start = getattr(space, "start", None)
        self._start = (np.zeros(self._nvec.shape, np.int32) if start is None
                       else np.broadcast_to(np.asarray(start, np.int32), self._nvec.shape))

    @property
    def representation_length(self) -> int:  # type: ignore[override]
        return int(self._nvec.size)

    def serialize(self, data: Any) -> Any:
        x = _batch_of("MultiDiscreteSpaceSerializer", data, self._nvec.shape, "serialize")
        return jnp.reshape(x.astype(jnp.int32) - self._start, (x.shape[0], -1))

    def deserialize(self, representation: Any) -> Any:
        tokens = _batch_of("MultiDiscreteSpaceSerializer", representation,
                           (self.representation_length,), "deserialize")
        shaped = jnp.reshape(tokens.astype(jnp.int32), (tokens.shape[0],) + self._nvec.shape)
        return shaped + self._start


_SERIALIZERS = {"box": BoxSpaceSerializer, "discrete": DiscreteSpaceSerializer,
                "multi_discrete": MultiDiscreteSpaceSerializer}


def create(space: Any, vocab_size: int, **options: Any) -> SpaceSerializer:
    """The serializer for ``space``: box, discrete or multi-discrete (by its attributes).

    ``options`` go to the serializer: ``precision`` and ``max_range`` for a
    box (Trax set them with gin).

    >>> from retrax.rl import spaces
    >>> type(create(spaces.Discrete(3), vocab_size=3)).__name__
    'DiscreteSpaceSerializer'
    """
    kind = space_kind(space)
    if kind is None:
        raise TypeError(f"space_serializer.create: cannot serialize a {type(space).__name__}; "
                        f"expected {_EXPECTED}.")
    return _SERIALIZERS[kind](space, vocab_size, **options)
