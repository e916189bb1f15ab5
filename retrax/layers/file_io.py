"""Where ``Layer.save_to_file`` and ``Layer.init_from_file`` send their work.

Saving and loading need the checkpoint formats, the model configs and the
pretrained stand-ins, which sit above the layers: ``retrax.checkpoints``
imports ``retrax.models``, which imports ``retrax.layers``. Layers never
import upward, so the dependency is inverted: ``retrax.checkpoints`` registers
its ``save_layer`` and ``load_layer`` here when it is imported, and the
``Layer`` methods call what is registered.

``retrax/__init__.py`` imports ``retrax.checkpoints``, and Python runs a
package's ``__init__`` before any of its modules, so in every program that
imports anything from retrax the methods work as they always did. Another
implementation (a different format, a test double) can be put in place with
``register``.

>>> from retrax.layers import file_io
>>> [f"{f.__module__}.{f.__name__}" for f in file_io.registered()]
['retrax.checkpoints.save_layer', 'retrax.checkpoints.load_layer']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["register", "registered", "save", "load"]

Saver = Callable[[Any, str, bool, Any], None]
Loader = Callable[[Any, str, bool, Any], tuple[Any, Any]]

_saver: Saver | None = None
_loader: Loader | None = None


def register(save: Saver, load: Loader) -> None:
    """Makes ``save(layer, file_name, weights_only, input_signature)`` and
    ``load(layer, file_name, weights_only, input_signature) -> (weights, state)``
    the implementations of ``Layer.save_to_file`` and ``Layer.init_from_file``."""
    global _saver, _loader
    _saver, _loader = save, load


def registered() -> tuple[Saver, Loader] | None:
    """The registered ``(save, load)``, or None before any registration."""
    if _saver is None or _loader is None:
        return None
    return _saver, _loader


def _missing() -> RuntimeError:
    return RuntimeError(
        "No checkpoint implementation is registered for Layer.save_to_file/init_from_file; "
        "`import retrax.checkpoints` registers retrax's (importing retrax does it)."
    )


def save(layer: Any, file_name: str, weights_only: bool, input_signature: Any) -> None:
    """``Layer.save_to_file``: calls the registered saver."""
    if _saver is None:
        raise _missing()
    return _saver(layer, file_name, weights_only, input_signature)


def load(layer: Any, file_name: str, weights_only: bool, input_signature: Any) -> tuple[Any, Any]:
    """``Layer.init_from_file``: calls the registered loader."""
    if _loader is None:
        raise _missing()
    return _loader(layer, file_name, weights_only, input_signature)
