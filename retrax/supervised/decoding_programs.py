"""The compiled programs of decoding and what they feed the model.

A program cache per model (held weakly), how a decoding loop is compiled
(``jit_decoding_program``: on CPU without YNNPACK fusions), a fresh predict-mode
state made for each call, and ``Setup``: the one place where a language model
(prefilled with ``[start_id] + prompt``) and an encoder-decoder (the prompt in
its encoder) differ. Used by ``retrax.supervised.decoding`` and
``retrax.supervised.beam_search``.
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from retrax import shapes
from retrax.layers import base, core
from retrax.layers.attention import predict_cache_length
from retrax.layers.stack_combinators import Serial

__all__ = ["compiled_programs", "program", "fresh_state", "batched_state_leaves", "Setup",
           "make_setup", "model_inputs", "ends_in_log_softmax", "last_log_probs",
           "without_log_softmax", "last_logits",
           "LOOP_PREFILL_POSITIONS", "PREFILL_CHOICES", "prefill_in_loop",
           "StateStructureError", "note_state_structure_changes", "jit_decoding_program",
           "DECODING_COMPILER_OPTIONS"]

# Up to this many decoder prefill positions ([start] + prompt, so prompts of
# up to 7 tokens), prefill='auto' feeds them through the decoding loop itself
# instead of a batched forward pass before it. The batched pass puts a second
# copy of the model graph in the program: on config M (4 layers, d_model 256)
# that is ~0.7 s more XLA compile, the time of ~900 one-token steps, paid by
# every first call. Feeding P positions in the loop costs P - 1 one-token steps
# where a short batched pass costs about one or two: at P = 8 about 6 steps, ~5%
# of a 128-token call, paid by every call. Longer prompts pay more per call
# (hundreds of tokens fed one by one are slow), so they keep the batched pass.
# 8 is also CACHE_BUCKET: every short prompt then shares one program.
LOOP_PREFILL_POSITIONS = 8
PREFILL_CHOICES = ("auto", "batched", "loop")

# XLA options of decoding's programs (the sampling loop, the stream's step,
# beam search), on CPU. XLA:CPU hands dot products and reductions to YNNPACK,
# which dispatches each one to its thread pool: for the few rows of a decoding
# step (the batch, or batch x beams) that hand-off costs more than the work.
# Without it (XLA's own kernels and Eigen) config M's greedy decoding took
# 10-18% less time per token at batch 8 (same tokens; three same-process A/B
# runs, 1,220-1,317 -> 1,081-1,103 us per token), the stream 10% less (8 rows)
# and beam search 9% less (8 beams); at batch 1 (where XLA keeps YNNPACK out of
# one-row products anyway) it made no difference. Training keeps YNNPACK:
# config S's step took 28% longer without it. Programs on other backends
# compile as usual; a jaxlib that does not know an option compiles without
# them (``jit_decoding_program``).
DECODING_COMPILER_OPTIONS: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": ""}


# The compiled programs of each model, {model: {key: program}}, owned by this
# module: nothing is stored on the model. The model is a weak key, so its
# programs go when it does; for that, a program reaches its model only through
# a weak reference (a strong one inside the value would keep the key alive).
_programs: weakref.WeakKeyDictionary[base.Layer, dict[Any, Any]] = weakref.WeakKeyDictionary()


def compiled_programs(model: base.Layer | None = None) -> int:
    """How many decoding programs this module holds for ``model`` (for every model: None).

    Decoding makes one jitted program per model and kind of call (sampling
    settings, batch, cache length) and reuses it for the next such call. The
    programs are kept for the model weakly, so they go when the model does; this
    count shows both. (One program compiles again for a new prompt shape: count
    XLA compilations with ``jax.log_compiles`` or a ``jax.monitoring`` listener.)
    """
    if model is None:
        return sum(len(programs) for programs in _programs.values())
    return len(_programs.get(model, ()))


def jit_decoding_program(fn: Any, **jit_kwargs: Any) -> Any:
    """``jax.jit(fn, **jit_kwargs)``, compiled with ``DECODING_COMPILER_OPTIONS`` on CPU.

    A jaxlib that does not know an option refuses it when the first such
    program compiles: that program is compiled again without the options, and
    so is every later one. Nothing else is compiled to find out (a cold first
    call compiles exactly its own program). ``.lower(...)`` lowers for the
    options unless they were refused before.
    """
    if jax.default_backend() != "cpu" or _options_refused:
        return jax.jit(fn, **jit_kwargs)
    return _WithOptions(fn, jit_kwargs)


# True once a jaxlib refused DECODING_COMPILER_OPTIONS (its error names one).
_options_refused = False


class _WithOptions:
    """``jax.jit(fn)`` with ``DECODING_COMPILER_OPTIONS``; a plain one after a refusal."""

    def __init__(self, fn: Any, jit_kwargs: dict[str, Any]):
        self._fn, self._jit_kwargs = fn, jit_kwargs
        self._with = jax.jit(fn, compiler_options=DECODING_COMPILER_OPTIONS, **jit_kwargs)
        self._plain = None

    def _jitted(self) -> Any:
        if not _options_refused:
            return self._with
        if self._plain is None:
            self._plain = jax.jit(self._fn, **self._jit_kwargs)
        return self._plain

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        global _options_refused
        try:
            return self._jitted()(*args, **kwargs)
        except RuntimeError as e:  # JaxRuntimeError; a refused option fails before anything runs
            if _options_refused or not any(name in str(e) for name in DECODING_COMPILER_OPTIONS):
                raise
            _options_refused = True
            return self._jitted()(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        return self._jitted().lower(*args, **kwargs)


def program(model: base.Layer, key: Any, make: Any) -> Any:
    """``model``'s program ``key``: ``make(model_ref)`` on first use, the same one after.

    ``make`` receives a ``weakref.ref`` to the model and must not keep the
    model itself; the programs call ``model_ref()`` when they trace.
    """
    programs = _programs.get(model)
    if programs is None:
        programs = _programs[model] = {}
    if key not in programs:
        programs[key] = make(weakref.ref(model))
    return programs[key]


def fresh_state(model: base.Layer, signature: Any, cache_len: int) -> Any:
    """A new predict-mode state for ``signature`` with caches of ``cache_len``.

    The cache length is an option of this init pass (``predict_cache_length``);
    no layer of the model is changed.
    """
    def make(model_ref):
        def state_only():
            with predict_cache_length(cache_len):
                with base.new_pass() as ctx:
                    return ctx.init_layer(model_ref(), signature, jax.random.PRNGKey(0))[1]

        # Under jit the weight initializers are dead code and XLA drops them.
        return jax.jit(state_only)

    return program(model, ("state", repr(signature), cache_len), make)()


def batched_state_leaves(model: base.Layer, setup: Setup, cache_len: int) -> list[bool]:
    """Which leaves of the state *after the prefill* have the batch as first axis.

    Beam search reorders those rows. The state is compared for batch sizes 2
    and 3 by shape only (``jax.eval_shape``): the prefill can change the state's
    structure (an encoder-decoder's ``Cache`` fills in), so it is run too.
    """
    def shapes_for(b):
        state = jax.eval_shape(lambda: fresh_state(model, setup.signature(b), cache_len))
        after = jax.eval_shape(lambda s, x: model.pure_fn(x, model.weights, s, None)[1],
                               state, setup.abstract_inputs(b))
        return [getattr(x, "shape", ()) for x in jax.tree_util.tree_leaves(after)]

    return [x != y for x, y in zip(shapes_for(2), shapes_for(3))]


class Setup(NamedTuple):
    """What decoding feeds a model, made by ``make_setup``.

    ``enc``: the encoder's input tokens ``(B, S)`` of an encoder-decoder
    (``None`` for a language model); ``first``: the decoder tokens of the
    prefill, ``(B, P)``.
    """

    enc: Any
    first: np.ndarray

    @property
    def positions(self) -> int:
        """Decoder positions the prefill fills (the first sampled token comes after)."""
        return self.first.shape[1]

    def signature(self, batch: int) -> Any:
        """The init signature of a predict-mode state for ``batch`` rows."""
        step = shapes.ShapeDtype((batch, 1), np.int32)
        if self.enc is None:
            return step
        return shapes.ShapeDtype((batch, self.enc.shape[1]), np.int32), step

    def abstract_inputs(self, batch: int) -> Any:
        """The prefill's inputs for ``batch`` rows, as ``jax.ShapeDtypeStruct``."""
        first = jax.ShapeDtypeStruct((batch, self.positions), jnp.int32)
        if self.enc is None:
            return first
        return jax.ShapeDtypeStruct((batch, self.enc.shape[1]), jnp.int32), first


# Language models whose predict-mode state changes structure on its first call
# (an RNN's hidden state appears then), found when a loop prefill fails to
# trace: their first call cannot be a loop iteration. Held weakly.
_changing_state: weakref.WeakSet[base.Layer] = weakref.WeakSet()


class StateStructureError(Exception):
    """Raised while tracing a loop prefill when a step changes the state's structure."""


def note_state_structure_changes(model: base.Layer) -> None:
    """Remembers that ``model``'s first call changes its state's structure (see above)."""
    _changing_state.add(model)


def prefill_in_loop(model: base.Layer, setup: Setup | None, prefill: str, where: str) -> bool:
    """Whether decoding feeds ``setup.first`` through its loop (else a batched prefill).

    ``prefill``: ``'loop'``, ``'batched'``, or ``'auto'`` (the loop for at most
    ``LOOP_PREFILL_POSITIONS`` positions). An encoder-decoder always prefills
    in a batched pass: its first call fills the encoder's ``Cache``, which
    changes the state's structure, so that call cannot be a loop iteration.
    So does a language model found to change it (an RNN's hidden state, made
    by its first call: ``note_state_structure_changes``).

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> lm = tl.Serial(tl.Embedding(8, 4), tl.Dense(8))
    >>> short, long = (make_setup(lm, np.zeros((1, n), np.int32), 0) for n in (7, 8))
    >>> prefill_in_loop(lm, short, "auto", "doc"), prefill_in_loop(lm, long, "auto", "doc")
    (True, False)
    """
    if prefill not in PREFILL_CHOICES:
        raise ValueError(f"{where}: prefill must be one of {PREFILL_CHOICES}; got {prefill!r}.")
    encoder = setup is not None and setup.enc is not None
    if encoder or model in _changing_state:
        if prefill == "loop":
            why = ("an encoder-decoder runs its encoder once in a batched prefill" if encoder
                   else "this model's first call changes its state's structure (e.g. an RNN's "
                   "hidden state appears then), so it must be a batched prefill")
            raise ValueError(f"{where}: prefill='loop' is not possible: {why}. Use "
                             f"prefill='auto' or 'batched'.")
        return False
    if prefill == "auto":
        return setup.positions <= LOOP_PREFILL_POSITIONS
    return prefill == "loop"


def make_setup(model: base.Layer, prompt: np.ndarray, start_id: int) -> Setup:
    """The one place where a language model and an encoder-decoder differ in setup.

    A language model (``n_in == 1``) is prefilled with ``[start_id] + prompt``;
    an encoder-decoder (``n_in == 2``) reads ``prompt`` in its encoder and is
    prefilled with ``[start_id]``. ``prompt``: ``(B, L)`` int32, ``L`` may be 0
    for a language model.
    """
    start = np.full((prompt.shape[0], 1), start_id, np.int32)
    if model.n_in == 1:
        return Setup(None, np.concatenate([start, prompt], axis=1))
    # NumPy, not jnp.asarray: the programs take it as it is (no eager staging program).
    return Setup(np.asarray(prompt, np.int32), start)


def model_inputs(enc: Any, tokens: Any) -> Any:
    """The model's inputs for decoder ``tokens`` (``enc`` as in ``Setup``)."""
    return tokens if enc is None else (enc, tokens)


def ends_in_log_softmax(model: base.Layer) -> bool:
    """Whether the model's last layer is ``LogSoftmax`` over the vocabulary (last) axis."""
    layer = model
    while type(layer).__name__ == "Serial" and layer.sublayers:
        layer = layer.sublayers[-1]
    # (B, L, V) outputs: axis -1 or 2 is the vocabulary.
    return isinstance(layer, core.LogSoftmax) and layer.axis in (-1, 2)


def without_log_softmax(model: base.Layer) -> tuple[base.Layer, Any]:
    """``model`` without its final ``LogSoftmax``, and the map to its weight/state trees.

    For a model that ``ends_in_log_softmax``: a ``Serial`` of the same
    sublayers but the last ``LogSoftmax`` (in the innermost trailing
    ``Serial``), and ``trim(tree)``, which maps ``model``'s weights or state
    to the new model's (the entry of the ``LogSoftmax`` dropped). The new
    model outputs the logits the ``LogSoftmax`` would have normalized.
    Decoding calls that need no log-probabilities run it: greedy and sampled
    tokens are the same from logits (``sampling``), and each step saves the
    normalization (two reductions over the vocabulary).

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> lm = tl.Serial(tl.Embedding(8, 4), [tl.Dense(8), tl.LogSoftmax()])
    >>> _ = lm.init(np.zeros((1, 1), np.int32))
    >>> head, trim = without_log_softmax(lm)
    >>> x = np.array([[3]], np.int32)
    >>> logits = head.pure_fn(x, trim(lm.weights), trim(lm.state), None)[0]
    >>> bool(np.allclose(lm(x), logits - jax.nn.logsumexp(logits, -1, keepdims=True), atol=1e-6))
    True
    """
    if not ends_in_log_softmax(model):
        raise ValueError(f"without_log_softmax: {model.name_with_arity} does not end in "
                         f"LogSoftmax over its last axis; check ends_in_log_softmax first.")
    if not isinstance(model, Serial):  # the model is the LogSoftmax itself
        return Serial(), lambda tree: ()
    layers = model.sublayers
    if isinstance(layers[-1], core.LogSoftmax):
        return Serial(*layers[:-1]), lambda tree: tuple(tree[:-1])
    inner, trim_inner = without_log_softmax(layers[-1])
    return (Serial(*layers[:-1], inner),
            lambda tree: (*tree[:-1], trim_inner(tree[-1])))


def last_logits(model: base.Layer, outputs: Any) -> Any:
    """The model's outputs at the last position, ``(B, V)`` float32, not normalized."""
    return (outputs[0] if model.n_in == 2 else outputs)[:, -1].astype(jnp.float32)


def last_log_probs(model: base.Layer, outputs: Any) -> Any:
    """Log-probabilities of the model's outputs at the last position, ``(B, V)``."""
    logits = last_logits(model, outputs)
    if ends_in_log_softmax(model):
        return logits  # TransformerLM / Transformer: already log_softmax'ed
    return jax.nn.log_softmax(logits, axis=-1)
