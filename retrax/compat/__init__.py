"""Compatibility with files written by the original Trax library."""

from retrax.compat.safe_unpickle import (
    ALLOWED_GLOBALS,
    TraxHistory,
    TraxUnpickler,
    load_trax_pickle,
)
from retrax.compat.trax_pickle import (
    TraxCheckpoint,
    read_trax_checkpoint,
    write_trax_loop_checkpoint,
)

__all__ = [
    "ALLOWED_GLOBALS",
    "TraxCheckpoint",
    "TraxHistory",
    "TraxUnpickler",
    "load_trax_pickle",
    "read_trax_checkpoint",
    "write_trax_loop_checkpoint",
]
