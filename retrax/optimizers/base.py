"""Optimizer base class and tree utilities, built on optax.

An :class:`Optimizer` keeps Trax's interface (``tree_init`` / ``tree_update``
with hyperparameters in an ``opt_params`` dict) but does all of its math with
an ``optax.GradientTransformation``.  That transformation is wrapped in
``optax.inject_hyperparams``, so every hyperparameter (the learning rate in
particular) is an array in the optimizer state and can change from step to
step without recompiling a jitted update.

The slots returned by :meth:`Optimizer.tree_init` are exactly the optax state
of :meth:`Optimizer.to_optax`; :func:`flat_slots` and :func:`unflat_slots`
convert them to and from a flat list of arrays for checkpoints.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from retrax.optimizers import per_weight
from retrax.optimizers.norms import l2_norm

__all__ = [
    'Optimizer',
    'clip_grads',
    'flat_slots',
    'l2_norm',
    'unflat_slots',
]

_HPARAM_FIELDS = ('hyperparams', 'hyperparams_states')


def check_number(optimizer: str, name: str, value: Any,
                 ok: Callable[[float], bool], expected: str) -> None:
    """Raises a ``ValueError`` unless ``value`` is a number accepted by ``ok``.

    Traced values (inside ``jax.jit``) are not checked.

    >>> check_number('Adam', 'b1', 0.9, lambda v: 0 <= v < 1, 'in [0, 1)')
    >>> check_number('Adam', 'b1', 1.5, lambda v: 0 <= v < 1, 'in [0, 1)')
    Traceback (most recent call last):
    ...
    ValueError: Adam: b1 must be in [0, 1), got 1.5.
    """
    if isinstance(value, jax.core.Tracer):
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or math.isnan(number) or not ok(number):
        raise ValueError(f'{optimizer}: {name} must be {expected}, got {value!r}.')


def check_unit(optimizer: str, name: str, value: Any) -> None:
    """Checks that ``value`` is a number in ``[0, 1)``.

    >>> check_unit('Momentum', 'mass', 0.9)
    """
    check_number(optimizer, name, value, lambda v: 0.0 <= v < 1.0,
                 'a number in [0, 1)')


# Hyperparameters live in float32 arrays: a larger number would become inf.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_nonnegative(optimizer: str, name: str, value: Any) -> None:
    """Checks that ``value`` is a number ``>= 0`` that is finite in float32.

    >>> check_nonnegative('Adam', 'eps', 1e-5)
    >>> check_nonnegative('Adam', 'learning_rate', 1e39)
    Traceback (most recent call last):
    ...
    ValueError: Adam: learning_rate must be a finite number >= 0 (float32: at most 3.4e+38), got 1e+39.
    """
    check_number(optimizer, name, value, lambda v: 0.0 <= v <= FLOAT32_MAX,
                 'a finite number >= 0 (float32: at most 3.4e+38)')


def check_positive(optimizer: str, name: str, value: Any) -> None:
    """Checks that ``value`` is a number ``> 0`` that is finite in float32.

    >>> check_positive('SGD', 'clip_grad_norm', 1.0)
    """
    check_number(optimizer, name, value, lambda v: 0.0 < v <= FLOAT32_MAX,
                 'a finite number > 0 (float32: at most 3.4e+38)')


def clip_grads(grad_tree: Any, max_norm: float) -> Any:
    """Scales ``grad_tree`` by ``max_norm / norm`` if its global norm exceeds it.

    >>> g = clip_grads((jnp.array([3.0, 4.0]),), 1.0)
    >>> [round(float(x), 6) for x in g[0]]
    [0.6, 0.8]
    """
    check_positive('clip_grads', 'max_norm', max_norm)
    clipped, _ = optax.clip_by_global_norm(max_norm).update(
        grad_tree, optax.EmptyState())
    return clipped


class Optimizer:
    """Base class of retrax optimizers: Trax's interface on top of optax.

    Subclasses implement :meth:`make_transform`, which builds the optax
    transformation from the values in ``opt_params``; everything else
    (gradient clipping, hyperparameter injection, stats) is shared. A
    subclass written for Trax, defining ``init(weights)`` and
    ``update(step, grads, weights, slots, opt_params)`` for one weight array
    instead, works too (see :mod:`retrax.optimizers.per_weight`).

    Args:
      learning_rate: initial value of ``opt_params['learning_rate']``; the
        training loop usually overwrites it each step from a schedule.
        Must be ``>= 0`` (Trax's legacy trainer builds optimizers with 0.0).
      clip_grad_norm: if set, gradients are rescaled by
        ``clip_grad_norm / norm`` when their global norm is at least that
        (``optax.clip_by_global_norm``).
      **init_opt_params: further numeric hyperparameters; they become entries
        of ``opt_params`` and keyword arguments of :meth:`make_transform`.

    >>> class PlainSGD(Optimizer):
    ...     def make_transform(self, learning_rate):
    ...         return optax.sgd(learning_rate)
    >>> opt = PlainSGD(learning_rate=0.5)
    >>> slots, opt_params = opt.tree_init((jnp.array([1.0]),))
    >>> w, slots, stats = opt.tree_update(1, (jnp.array([2.0]),),
    ...                                   (jnp.array([1.0]),), slots, opt_params)
    >>> float(w[0][0]), float(stats['gradients_l2'])
    (0.0, 2.0)
    """

    def __init__(self, learning_rate: float = 0.01,
                 clip_grad_norm: float | None = None,
                 **init_opt_params: float) -> None:
        name = type(self).__name__
        check_nonnegative(name, 'learning_rate', learning_rate)
        if clip_grad_norm is not None:
            check_positive(name, 'clip_grad_norm', clip_grad_norm)
        self._clip_grad_norm = clip_grad_norm
        self._init_opt_params = {'learning_rate': learning_rate,
                                 **init_opt_params}
        self._tx: optax.GradientTransformationExtraArgs | None = None
        self._slots: Any = None  # The last slots made or stored (Trax's ``slots``).
        self._n_weights = 0

    def __getstate__(self) -> dict[str, Any]:
        # The cached optax transformation holds closures; rebuild it lazily.
        return {**self.__dict__, '_tx': None}

    def __repr__(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in self._init_opt_params.items())
        if self._clip_grad_norm is not None:
            args += f', clip_grad_norm={self._clip_grad_norm!r}'
        return f'{type(self).__name__}({args})'

    @property
    def opt_params(self) -> dict[str, jax.Array]:
        """Initial hyperparameters as float32 scalars (a fresh dict each time).

        >>> class PlainSGD(Optimizer):
        ...     def make_transform(self, learning_rate):
        ...         return optax.sgd(learning_rate)
        >>> PlainSGD(0.5).opt_params
        {'learning_rate': Array(0.5, dtype=float32)}
        """
        return {k: jnp.asarray(v, jnp.float32)
                for k, v in self._init_opt_params.items()}

    @opt_params.setter
    def opt_params(self, opt_params: dict[str, Any]) -> None:
        unknown = sorted(set(opt_params) - set(self._init_opt_params))
        if unknown:
            raise ValueError(
                f'{type(self).__name__}: opt_params has unknown keys {unknown}; expected '
                f'a subset of {sorted(self._init_opt_params)}.')
        self._init_opt_params = {**self._init_opt_params, **opt_params}
        self._tx = None  # Rebuilt with the new initial values.

    @property
    def slots(self) -> Any:
        """The slots of the last ``tree_init``/``tree_update`` (None before), as Trax shows
        them: a tuple with one entry per weight array (None, an array, or a tuple).

        Updates inside ``jax.jit`` are not stored (their values are traced). For
        the optax-backed built-ins this is a view of the optax state (``Adafactor``
        and ``AdamW`` keep their own layout and show it whole).
        """
        if self._slots is None or self.uses_per_weight_protocol:
            return self._slots
        view = per_weight.per_weight_view(flat_slots(self._slots), self._n_weights)
        return self._slots if view is None else view

    @slots.setter
    def slots(self, slots: Any) -> None:
        self._slots = slots

    @property
    def uses_per_weight_protocol(self) -> bool:
        """True for a Trax-style subclass: it defines ``init`` and ``update`` (one weight
        array at a time) instead of ``make_transform``."""
        cls = type(self)
        return (cls.make_transform is Optimizer.make_transform
                and cls.init is not Optimizer.init)

    def init(self, weights: Any) -> Any:
        """Trax's hook: the slots for one weight array. Override it with ``update``
        (or override ``make_transform`` instead, the optax way)."""
        raise NotImplementedError(
            f'{type(self).__name__} must implement make_transform() (optax) or init() and '
            f'update() (Trax\'s per-weight protocol).')

    def update(self, step: Any, grads: Any, weights: Any, slots: Any,
               opt_params: dict[str, Any]) -> tuple[Any, Any]:
        """Trax's hook: ``(new_weights, new_slots)`` for one weight array."""
        raise NotImplementedError(
            f'{type(self).__name__} defines init() but not update(step, grads, weights, '
            f'slots, opt_params).')

    def _store(self, slots: Any, weight_tree: Any) -> None:
        if not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(slots)):
            self._slots = slots
            self._n_weights = len(jax.tree_util.tree_leaves(weight_tree))

    @property
    def clip_grad_norm(self) -> float | None:
        """The global-norm clipping threshold, or ``None``.

        >>> class PlainSGD(Optimizer):
        ...     def make_transform(self, learning_rate):
        ...         return optax.sgd(learning_rate)
        >>> PlainSGD(0.5, clip_grad_norm=1.0).clip_grad_norm
        1.0
        """
        return self._clip_grad_norm

    def make_transform(self, learning_rate: Any,
                       **opt_params: Any) -> optax.GradientTransformation:
        """Builds the optax transformation for the given hyperparameter values.

        The values may be traced arrays, so implementations must not branch on
        them in Python. Static options belong in attributes set in
        ``__init__``. Clipping is added by the base class.

        >>> class PlainSGD(Optimizer):
        ...     def make_transform(self, learning_rate):
        ...         return optax.sgd(learning_rate)
        >>> tx = PlainSGD().make_transform(learning_rate=0.1)
        >>> isinstance(tx, optax.GradientTransformation)
        True
        """
        raise NotImplementedError(
            f'{type(self).__name__} must implement make_transform() (optax) or init() and '
            f'update() (Trax\'s per-weight protocol).')

    def to_optax(self) -> optax.GradientTransformationExtraArgs:
        """The underlying optax transformation (with injected hyperparameters).

        Its state is what :meth:`tree_init` returns as slots; the
        hyperparameters live in ``state.hyperparams`` as float32 arrays.

        >>> class PlainSGD(Optimizer):
        ...     def make_transform(self, learning_rate):
        ...         return optax.sgd(learning_rate)
        >>> tx = PlainSGD(0.5).to_optax()
        >>> state = tx.init(jnp.ones(2))
        >>> updates, state = tx.update(jnp.ones(2), state, jnp.ones(2))
        >>> updates.tolist()
        [-0.5, -0.5]
        """
        if self._tx is None:
            names = list(self._init_opt_params)

            def factory(**hparams):
                tx = self.make_transform(**hparams)
                if self._clip_grad_norm is not None:
                    tx = optax.chain(
                        optax.clip_by_global_norm(self._clip_grad_norm), tx)
                return tx

            factory.__signature__ = inspect.Signature([
                inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY)
                for n in names])
            self._tx = optax.inject_hyperparams(
                factory, hyperparam_dtype=jnp.float32)(**self._init_opt_params)
        return self._tx

    def tree_init(self, weight_tree: Any) -> tuple[Any, dict[str, jax.Array]]:
        """Returns ``(slots, opt_params)`` for ``weight_tree``.

        >>> class PlainSGD(Optimizer):
        ...     def make_transform(self, learning_rate):
        ...         return optax.sgd(learning_rate)
        >>> slots, opt_params = PlainSGD().tree_init((jnp.ones(3), ()))
        >>> sorted(opt_params)
        ['learning_rate']
        """
        if self.uses_per_weight_protocol:
            slots = per_weight.tree_init(self.init, weight_tree)
        else:
            slots = self.to_optax().init(weight_tree)
        self._store(slots, weight_tree)
        return slots, self.opt_params

    def tree_update(self, step: Any, grad_tree: Any, weight_tree: Any,
                    slots: Any, opt_params: dict[str, Any],
                    store_slots: bool = True,
                    ) -> tuple[Any, Any, dict[str, jax.Array]]:
        """One optimizer step; pure and jit-able.

        Args:
          step: the training step, passed to a per-weight ``update``. The
            optax-backed optimizers do not use it: step-dependent terms (Adam's
            bias correction, Adafactor's decay) use the update counters kept
            inside ``slots`` by optax.
          grad_tree: gradients, same structure as ``weight_tree``.
          weight_tree: current weights (nested tuples; ``()`` leaves are fine).
          slots: the optimizer state from :meth:`tree_init` or a prior update.
          opt_params: hyperparameters; values here override those in
            ``slots`` (so changing ``opt_params['learning_rate']`` takes
            effect immediately, without retracing). Missing keys keep the
            value stored in ``slots``.
          store_slots: if False, the input ``slots`` are returned unchanged.

        Returns:
          ``(new_weights, new_slots, stats)`` where ``stats`` holds
          ``'gradients_l2'`` (before clipping) and ``'weights_l2'`` (before the
          update). Weight dtypes are preserved.

        >>> class PlainSGD(Optimizer):
        ...     def make_transform(self, learning_rate):
        ...         return optax.sgd(learning_rate)
        >>> opt = PlainSGD()
        >>> slots, opt_params = opt.tree_init(jnp.ones(2))
        >>> opt_params['learning_rate'] = jnp.array(0.25)
        >>> w, slots, _ = opt.tree_update(1, jnp.ones(2), jnp.ones(2),
        ...                               slots, opt_params)
        >>> w.tolist()
        [0.75, 0.75]
        """
        if self.uses_per_weight_protocol:
            params = {k: jnp.asarray(v) for k, v in {**self.opt_params, **opt_params}.items()}
            new_weights, new_slots, stats = per_weight.tree_update(
                type(self).__name__, self.update, self._clip_grad_norm, step, grad_tree,
                weight_tree, slots, params)
            if store_slots:
                self._store(new_slots, weight_tree)
            return new_weights, (new_slots if store_slots else slots), stats
        del step
        stats = {'gradients_l2': l2_norm(grad_tree),
                 'weights_l2': l2_norm(weight_tree)}
        state = self._with_opt_params(slots, opt_params)
        updates, new_state = self.to_optax().update(grad_tree, state,
                                                    weight_tree)
        new_weights = optax.apply_updates(weight_tree, updates)
        if store_slots:
            self._store(new_state, weight_tree)
        return new_weights, (new_state if store_slots else slots), stats

    def _with_opt_params(self, slots: Any, opt_params: dict[str, Any]) -> Any:
        hparams = dict(slots.hyperparams)
        unknown = sorted(set(opt_params) - set(hparams))
        if unknown:
            raise ValueError(
                f'{type(self).__name__}: opt_params has unknown keys {unknown};'
                f' expected a subset of {sorted(hparams)}.')
        for k, v in opt_params.items():
            hparams[k] = jnp.asarray(v, jnp.float32)
        return slots._replace(hyperparams=hparams)


def _slot_layout(slots: Any) -> tuple[list[tuple[Any, Any]], Any, list[int],
                                      list[int]]:
    """Leaves, treedef, indices of slot arrays (checkpoint order), counters."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(slots)
    groups: dict[str, list[int]] = {}
    counters = []
    for i, (path, _) in enumerate(leaves):
        attr_pos = [j for j, k in enumerate(path)
                    if isinstance(k, jax.tree_util.GetAttrKey)]
        last = path[attr_pos[-1]].name if attr_pos else None
        if attr_pos and attr_pos[-1] == len(path) - 1 and last == 'count':
            counters.append(i)
            continue
        if any(path[j].name in _HPARAM_FIELDS for j in attr_pos):
            continue
        cut = attr_pos[-1] + 1 if attr_pos else 0
        groups.setdefault(jax.tree_util.keystr(path[:cut]), []).append(i)
    lists = list(groups.values())
    if lists and all(len(g) == len(lists[0]) for g in lists):
        order = [g[i] for i in range(len(lists[0])) for g in lists]
    else:
        order = [i for g in lists for i in g]
    return leaves, treedef, order, counters


def flat_slots(slots: Any) -> list[np.ndarray]:
    """Flattens optimizer slots to a list of arrays, in checkpoint order.

    Update counters and hyperparameters are left out. Per-weight slots are
    interleaved weight by weight, e.g. Adam gives ``[m_0, v_0, m_1, v_1, ...]``
    in weight order and ``()`` weights contribute nothing. This is exactly
    Trax's ``opt_slots`` order for ``SGD`` (empty), ``Momentum`` (``[v_i]``),
    ``RMSProp`` (``[avg_sq_i]``) and ``Adam``; for ``Adafactor`` (optax keeps
    ``v_row, v_col, v`` with ``(1,)`` placeholders for every weight) and
    ``AdamW`` the layout is retrax's own.

    >>> from retrax.optimizers.adam import Adam
    >>> w = (jnp.ones(2), (), (jnp.ones(3),))
    >>> slots, _ = Adam().tree_init(w)
    >>> [a.shape for a in flat_slots(slots)]
    [(2,), (2,), (3,), (3,)]
    """
    leaves, _, order, _ = _slot_layout(slots)
    return [np.asarray(leaves[i][1]) for i in order]


def unflat_slots(flat: Sequence[Any], slots_template: Any,
                 count: int | None = None) -> Any:
    """Inverse of :func:`flat_slots`: fills ``slots_template`` with ``flat``.

    Args:
      flat: arrays in :func:`flat_slots` order.
      slots_template: slots of the same optimizer and weights (from
        :meth:`Optimizer.tree_init`).
      count: if given, every update counter in the slots is set to it (use the
        number of updates already done when resuming, so that Adam's bias
        correction continues instead of restarting).

    >>> from retrax.optimizers.adam import Adam
    >>> slots, _ = Adam().tree_init((jnp.ones(2),))
    >>> restored = unflat_slots([np.full(2, 1.0), np.full(2, 2.0)], slots, 10)
    >>> [a.tolist() for a in flat_slots(restored)], int(restored.count)
    ([[1.0, 1.0], [2.0, 2.0]], 10)
    """
    leaves, treedef, order, counters = _slot_layout(slots_template)
    if len(flat) != len(order):
        raise ValueError(
            f'unflat_slots: got {len(flat)} arrays, expected {len(order)}.')
    new = [leaf for _, leaf in leaves]
    for i, array in zip(order, flat):
        old = new[i]
        if np.shape(array) != np.shape(old):
            raise ValueError(
                f'unflat_slots: slot {jax.tree_util.keystr(leaves[i][0])} has '
                f'shape {np.shape(old)}, got an array of shape '
                f'{np.shape(array)}.')
        new[i] = jnp.asarray(array, dtype=jnp.asarray(old).dtype)
    if count is not None:
        for i in counters:
            new[i] = jnp.asarray(count, dtype=jnp.asarray(new[i]).dtype)
    return jax.tree_util.tree_unflatten(treedef, new)
