"""Saving and loading layer weights: retrax's native format and Trax's files.

The native format (one safetensors file with JSON metadata, written
atomically) is :mod:`retrax.native_format`; its public names are re-exported
here. This module puts checkpoints into layers and takes them out.

``save_layer`` and ``load_layer`` implement ``Layer.save_to_file`` and
``Layer.init_from_file``: this module registers them in
:mod:`retrax.layers.file_io` when it is imported (``import retrax`` does), so
the layers never import it. ``load_layer`` also reads Trax's ``.pkl.gz``
layouts (``Layer.save_to_file``, ``training.Loop`` and the 2020 trainer) with a
restricted unpickler, see :mod:`retrax.compat.trax_pickle`.

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
import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np

from retrax import models, shapes
from retrax.io import CheckpointError, expansion_limit, filesystem
from retrax.io import read_bytes as read_bytes  # re-exported: callers use checkpoints.read_bytes
from retrax.io import write_bytes_atomic as write_bytes_atomic  # re-exported, as read_bytes
from retrax.layers import base, file_io
from retrax.native_format import (
    FORMAT_VERSION,
    is_trax_pickle,
    leaf_paths,
    read_any,
    read_native,
    save_native,
)

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

#: Model-config arguments that may differ between a checkpoint and the model it
#: is loaded into: they change training or decoding only, never what the
#: weights mean (``load_layer`` compares every other recorded argument).
CONFIG_KEYS_THAT_MAY_DIFFER = frozenset(
    {"mode", "dropout", "dropout_shared_axes", "max_inference_length"})


# --------------------------------------------------------------------------
# Layer methods
# --------------------------------------------------------------------------


def save_layer(layer: base.Layer, file_name: str, weights_only: bool = False,
               input_signature: Any = None) -> None:
    """Implements ``Layer.save_to_file`` in the native format."""
    if not layer.initialized:
        raise ValueError(
            f"{layer.name_with_arity} has no weights to save; call init() or init_from_file() first."
        )
    save_native(file_name, layer.weights, None if weights_only else layer.state,
                input_signature=input_signature,
                model_config=models.config_of(layer))


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

    A config recorded by an older retrax (its CLI) holds only the arguments
    that were given; the rest are the model function's defaults.
    """
    fn = models.REGISTRY.get(name)
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
    ``retrax.models.config_of(layer)`` is recorded by the functions in
    :mod:`retrax.models`. Nothing is checked when either side records no config.
    Arguments in ``CONFIG_KEYS_THAT_MAY_DIFFER`` are ignored, and an argument
    recorded on one side only is compared with the model function's default.

    Raises:
      CheckpointError: the model names or any other argument differ.
    """
    own = models.config_of(layer)
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
        differs from ``models.config_of(layer)`` (see :func:`check_model_config`).
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
    if sig is None and not layer.initialized:
        raise ValueError(
            f"{file_name} stores no input signature and {layer.name_with_arity} is not "
            f"initialized; pass input_signature=trax.shapes.ShapeDtype(...)."
        )
    if sig is not None:
        sig = _model_signature(layer, sig, source)
        if weights_only or not layer.initialized:
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


# Layer.save_to_file / init_from_file call these (layers cannot import this
# module: it sits above them); see retrax.layers.file_io.
file_io.register(save=save_layer, load=load_layer)


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
        if parent.hidden_in_path:
            if hidden_index is None:
                hidden_index = index
            continue
        if hidden_index is not None:
            index, hidden_index = hidden_index, None
        parts.insert(0, f"{parent.name_with_arity or type(parent).__name__}[{index}]")
    return " > ".join(parts + [leaf.name_with_arity or type(leaf).__name__])


def leaf_names(layer: base.Layer, tree: Any, what: str) -> list[str]:
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
        for p in leaf_paths(t):
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
    names = leaf_names(layer, tree, "weights" if what == "weight" else "state")
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
    layer.weights, _ = base.unflatten_weights_and_state(
        fixed, (), (expected, ()), weights_only=True)
    return layer.weights


def assign_flat_state(layer: base.Layer, flat: list[Any], source: str = "checkpoint") -> Any:
    """Puts flat state arrays (Trax order) into ``layer``; checks counts and shapes."""
    expected = layer.state
    _, exp_flat = base.flatten_weights_and_state((), expected)
    fixed = _matched(flat, exp_flat, "state", source, layer, expected, _STATE_FIX,
                     " (the state differs between modes, e.g. predict-mode caches)")
    _, layer.state = base.unflatten_weights_and_state((), fixed, ((), expected))
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
