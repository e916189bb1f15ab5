"""``retrax convert IN OUT``: a Trax ``.pkl.gz`` into a native ``.safetensors``, or back.

The direction follows the input. A model config known for the input (its
``config.json`` next to it) travels into the native file.
"""

from __future__ import annotations

import argparse
import os

from retrax.cli.errors import UsageError, check_output_path, write_failed
from retrax.cli.sources import resolve_checkpoint

__all__ = ["cmd_convert"]


def cmd_convert(args: argparse.Namespace) -> int:
    from retrax import checkpoints

    src, dst = args.input, args.output
    if os.path.isdir(src):
        raise UsageError(f"input checkpoint {src} is a directory; pass its model.pkl.gz or "
                         f"checkpoint_*.safetensors file.")
    if not (os.path.isfile(src) or "://" in src):
        raise UsageError(f"input checkpoint not found: {src}")
    info = resolve_checkpoint(src)  # Reads (and so checks) it; a config.json next to it too.
    to_native = info["ckpt"]["meta"].get("format") == "trax"
    if to_native and not dst.endswith(".safetensors"):
        raise UsageError(f"{src} is a Trax checkpoint; the output must be a native "
                         f".safetensors file, not {dst!r}.")
    if not to_native and not dst.endswith(".pkl.gz"):
        raise UsageError(f"{src} is a native checkpoint; the output must be a Trax "
                         f".pkl.gz file, not {dst!r}.")
    check_output_path(dst, "output")
    try:
        if to_native:
            checkpoints.trax_to_native(src, dst)
            if info["model"] is not None:  # The model config travels along.
                ckpt = checkpoints.read_any(dst)
                checkpoints.save_native(
                    dst, tuple(ckpt["flat_weights"]),
                    None if ckpt["flat_state"] is None else tuple(ckpt["flat_state"]),
                    input_signature=ckpt["input_signature"], model_config=info["model"],
                    extra=ckpt["meta"].get("extra"))
            print(f"Wrote {dst} (native) from Trax checkpoint {src}")
        else:
            written = checkpoints.native_to_trax(src, dst)
            print(f"Wrote {written} (Trax) from native checkpoint {src}")
    except OSError as err:
        raise write_failed(err, dst, "the output") from None
    return 0
