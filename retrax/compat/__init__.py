"""Compatibility with files written by the original Trax library."""

from retrax.compat.trax_pickle import (
    ALLOWED_GLOBALS,
    TraxCheckpoint,
    TraxHistory,
    TraxUnpickler,
    load_trax_pickle,
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
