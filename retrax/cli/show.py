"""``retrax show MODEL_OR_CHECKPOINT``: a model's layer tree, its weights and their total.

The model comes from a spec (``TransformerLM:d_model=32,...``), a pretrained
name, a checkpoint file or an output directory; without a model config a
checkpoint's arrays are still listed. ``--svg`` also draws the tree.
"""

from __future__ import annotations

import argparse
import os

from retrax.cli.errors import UsageError, check_output_path, write_failed
from retrax.cli.model_specs import build_model, model_from_args, parse_model_spec, signature_for
from retrax.cli.sources import is_pretrained, load_model, resolve_checkpoint

__all__ = ["cmd_show"]


def _print_weights_table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("path", "layer", "weight shapes", "params")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        print(f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  "
              f"{r[3]:>{widths[3]}}")


def cmd_show(args: argparse.Namespace) -> int:
    import numpy as np

    from retrax import models, visualize

    source = args.model_or_checkpoint
    if args.svg:  # Before any work: the error names the target.
        check_output_path(args.svg, "--svg")
    is_spec = not (os.path.exists(source) or "://" in source or is_pretrained(source))
    if is_spec and ":" not in source and source not in models.names():
        from retrax import pretrained

        raise UsageError(f"{source!r} is not a checkpoint file, an output directory, a pretrained "
                         f"model ({', '.join(pretrained.available())}) or a model spec such as "
                         f"TransformerLM:vocab_size=32,d_model=32.")
    if is_spec:
        config = model_from_args(args, parse_model_spec(source))
        model = build_model(config, args.mode, where=source)
        model.init(signature_for(model))
    else:
        info = resolve_checkpoint(source)
        config = model_from_args(args, info["model"])
        if config is None:  # Still useful: the arrays in the file.
            if args.svg:
                raise UsageError(f"{source}: drawing needs the model; pass --model NAME:k=v,...")
            flat = info["ckpt"]["flat_weights"]
            print(f"{source}: no model config (pass --model to see the layer tree); "
                  f"{len(flat)} weight arrays:")
            rows = [(str(i), "", visualize.format_shape(np.shape(w)), f"{int(np.size(w)):,}")
                    for i, w in enumerate(flat)]
            _print_weights_table(rows)
            print(f"Total: {sum(int(np.size(w)) for w in flat):,} parameters")
            return 0
        model = load_model(info, config, args.mode, source)
    print(model)
    print()
    tree = visualize.layer_tree(model)
    rows = [(n.path, n.name, " ".join(visualize.format_shape(s) for s in n.weight_shapes),
             f"{n.n_params:,}") for n in tree.walk() if n.weight_shapes]
    rows += [(n.path, n.name, f"shared with {n.shared_with}", "0")
             for n in tree.walk() if n.shared_with is not None]
    print(f"Layers with weights ({len(rows)}):")
    _print_weights_table(rows)
    total = sum(n.n_params for n in tree.walk())
    n_layers = sum(1 for n in tree.walk() if n.is_layer)
    print(f"Total: {total:,} parameters in {sum(len(n.weight_shapes) for n in tree.walk())} "
          f"arrays; {n_layers} layers in the tree")
    if args.svg:
        try:
            visualize.layer_diagram(model, args.svg)
        except OSError as err:
            raise write_failed(err, args.svg, "the --svg diagram") from None
        print(f"Wrote {args.svg}")
    return 0
