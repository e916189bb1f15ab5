"""Pictures of models and runs: layer diagrams (SVG) and training curves.

* :func:`layer_tree` — the printed layer tree (what ``print(model)`` shows) as
  :class:`LayerNode` objects with arity, weight shapes and parameter counts.
* :func:`layer_diagram` — that tree drawn as nested boxes in hand-written SVG
  (no dependency): ``Serial`` stacks its children top to bottom,
  ``Branch``/``Parallel`` put them side by side, a residual block is a
  ``Serial`` of a ``Branch`` with an identity path and an ``Add``.
* :func:`plot_history` — loss and metrics against steps, as PNG, SVG or PDF
  (needs matplotlib: ``pip install 'retrax[viz]'``).
* :class:`PlotHistoryCallback` — lets a ``training.Loop`` redraw
  ``output_dir/history.png`` at every checkpoint:
  ``Loop(..., callbacks=[PlotHistoryCallback])``.

>>> import numpy as np
>>> from retrax import layers as tl, shapes
>>> model = tl.Serial(tl.Dense(4), tl.Residual(tl.Dense(4)))
>>> _ = model.init(shapes.ShapeDtype((1, 3)))
>>> tree = layer_tree(model)
>>> [(n.path, n.name, n.n_params) for n in tree.walk() if n.weight_shapes]
[('0', 'Dense_4', 16), ('1.0.1', 'Dense_4', 20)]
>>> svg = layer_diagram(model)
>>> svg.count('<rect class="layer') == sum(1 for n in tree.walk() if n.is_layer)
True
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np

from retrax.layers import base
from retrax.supervised.callbacks import TrainingStepCallback

__all__ = ["LayerNode", "layer_tree", "layer_diagram", "plot_history", "load_history",
           "PlotHistoryCallback"]


# --------------------------------------------------------------------------
# The layer tree
# --------------------------------------------------------------------------


@dataclass
class LayerNode:
    """One entry of the printed layer tree.

    ``kind`` is ``'serial'`` (children run one after another), ``'parallel'``
    (``Branch``/``Parallel``: children side by side), ``'leaf'``, or
    ``'identity'`` (a ``None`` in a ``Branch``, e.g. a residual's shortcut;
    not a layer). ``path`` lists child indices from the root, ``'.'``-joined
    (the root is ``''``). ``shared_with`` is the path of the first occurrence
    of a layer used twice; its weights are counted there only.
    """

    name: str
    kind: str
    n_in: int
    n_out: int
    path: str
    weight_shapes: list[tuple[int, ...]] = field(default_factory=list)
    n_params: int = 0
    shared_with: str | None = None
    residual: bool = False
    children: list[LayerNode] = field(default_factory=list)

    @property
    def is_layer(self) -> bool:
        return self.kind != "identity"

    def walk(self) -> Iterator[LayerNode]:
        """This node and its descendants, depth first, parents before children."""
        yield self
        for child in self.children:
            yield from child.walk()


def _printed_children(layer: base.Layer) -> list[Any]:
    children = layer.sublayers_to_print
    if children is None:
        children = layer.sublayers
    # Layers whose repr is empty (e.g. shape checks) are not printed; skip them too.
    return [c for c in children if not (isinstance(c, base.Layer) and str(c) == "")]


def _serial_arity(children: list[LayerNode]) -> tuple[int, int]:
    """``(n_in, n_out)`` of running ``children`` one after another on the stack."""
    n_in = depth = 0
    for c in children:
        if depth < c.n_in:
            n_in += c.n_in - depth
            depth = c.n_in
        depth += c.n_out - c.n_in
    return n_in, depth


def _is_parallel(layer: base.Layer) -> bool:
    from retrax.layers.combinators import Parallel

    if isinstance(layer, Parallel):
        return True
    # Branch is Serial(Select, Parallel) printed as its branches.
    subs = layer.sublayers
    return (layer.sublayers_to_print is not None and len(subs) == 2
            and isinstance(subs[1], Parallel))


def _shapes(tree: Any) -> list[tuple[int, ...]]:
    flat, _ = base.flatten_weights_and_state(tree, ())
    return [tuple(int(d) for d in np.shape(w)) for w in flat if hasattr(w, "shape")]


def layer_tree(model: base.Layer) -> LayerNode:
    """The tree ``print(model)`` shows, with arity, weight shapes and parameter counts.

    Initialize the model first (``model.init(...)`` or ``init_from_file``) to
    get weight shapes; an uninitialized model gives the tree without them.
    """
    if not isinstance(model, base.Layer):
        raise TypeError(f"layer_tree: expected a retrax Layer; got {type(model).__name__}.")
    seen: dict[int, str] = {}

    def visit(item: Any, path: str) -> LayerNode:
        if item is None:
            return LayerNode("identity", "identity", 1, 1, path)
        if isinstance(item, (list, tuple)):  # A list inside Branch/Parallel is a Serial.
            kids = [visit(c, _join(path, i)) for i, c in enumerate(item)]
            n_in, n_out = _serial_arity(kids)
            return LayerNode("Serial", "serial", n_in, n_out, path, children=kids)
        if not isinstance(item, base.Layer):
            return LayerNode(type(item).__name__, "leaf", 1, 1, path)
        node = LayerNode(item.name_with_arity, "leaf", item.n_in, item.n_out, path)
        if id(item) in seen:
            node.shared_with = seen[id(item)]
            return node
        seen[id(item)] = path
        printed = _printed_children(item)
        if not printed:
            node.weight_shapes = _shapes(item.weights)
            node.n_params = int(sum(int(np.prod(s)) for s in node.weight_shapes))
            return node
        node.kind = "parallel" if _is_parallel(item) else "serial"
        node.children = [visit(c, _join(path, i)) for i, c in enumerate(printed)]
        first = node.children[0]
        node.residual = (node.kind == "serial" and len(node.children) >= 2
                         and first.kind == "parallel"
                         and any(c.kind == "identity" for c in first.children)
                         and node.children[1].name.startswith("Add"))
        return node

    return visit(model, "")


def _join(path: str, index: int) -> str:
    return f"{path}.{index}" if path else str(index)


def format_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


# --------------------------------------------------------------------------
# SVG diagram
# --------------------------------------------------------------------------

_CHAR_W = 7.0   # width of one character of the 12px monospace font
_LINE_H = 15.0
_PAD = 8.0
_GAP = 12.0
_STYLE = {  # kind -> (fill, stroke)
    "serial": ("#eef3fb", "#4a6fa5"),
    "parallel": ("#fff5e6", "#c77c02"),
    "leaf": ("#f4f4f4", "#777777"),
    "weights": ("#e7f5ea", "#2e7d32"),
    "identity": ("#ffffff", "#999999"),
}


def _arity(node: LayerNode) -> str:
    return f"in {node.n_in} \u2192 out {node.n_out}"


def _lines(node: LayerNode) -> list[str]:
    if node.kind == "identity":
        return ["identity"]
    title = node.name + (" \u00b7 residual" if node.residual else "")
    lines = [title, _arity(node)]
    if node.shared_with is not None:
        lines.append(f"shared with {node.shared_with or 'root'}")
    if node.weight_shapes:
        shapes_text = " ".join(format_shape(s) for s in node.weight_shapes)
        lines.append(f"{shapes_text}  [{node.n_params:,}]")
    return lines


def _text_w(lines: list[str]) -> float:
    return max(len(s) for s in lines) * _CHAR_W + 2 * _PAD


def _measure(node: LayerNode, sizes: dict[int, tuple[float, float]]) -> tuple[float, float]:
    lines = _lines(node)
    head_h = len(lines) * _LINE_H + _PAD
    if not node.children:
        size = (_text_w(lines), head_h)
    else:
        kids = [_measure(c, sizes) for c in node.children]
        if node.kind == "parallel":
            w = sum(k[0] for k in kids) + _GAP * (len(kids) - 1) + 2 * _PAD
            h = head_h + max(k[1] for k in kids) + _PAD
        else:
            w = max(k[0] for k in kids) + 2 * _PAD
            h = head_h + sum(k[1] for k in kids) + _GAP * (len(kids) - 1) + _PAD
        size = (max(w, _text_w(lines)), h)
    sizes[id(node)] = size
    return size


def _draw(node: LayerNode, x: float, y: float, sizes: dict, out: list[str]) -> None:
    w, h = sizes[id(node)]
    lines = _lines(node)
    style = "weights" if node.weight_shapes else node.kind
    fill, stroke = _STYLE[style]
    title = escape(f"{node.path or 'root'}: {' | '.join(lines)}")
    if node.kind == "identity":
        cls, extra = "identity", ' stroke-dasharray="4 3"'
    else:
        cls, extra = f"layer {node.kind}", ""
    out.append(f'<g data-path="{escape(node.path)}"><title>{title}</title>')
    out.append(
        f'<rect class="{cls}" data-layer="{escape(node.name)}" data-path="{escape(node.path)}" '
        f'x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="4" fill="{fill}" '
        f'stroke="{stroke}"{extra}/>')
    for i, line in enumerate(lines):
        cls_t = "name" if i == 0 else "info"
        out.append(f'<text class="{cls_t}" x="{x + _PAD:.1f}" '
                   f'y="{y + _PAD / 2 + (i + 0.8) * _LINE_H:.1f}">{escape(line)}</text>')
    out.append("</g>")
    if not node.children:
        return
    top = y + len(lines) * _LINE_H + _PAD
    if node.kind == "parallel":
        cx = x + _PAD
        for child in node.children:
            _draw(child, cx, top, sizes, out)
            cx += sizes[id(child)][0] + _GAP
        return
    prev_bottom = None
    for child in node.children:
        cw, ch = sizes[id(child)]
        cx = x + (w - cw) / 2
        if prev_bottom is not None:  # Data flows down: an arrow between steps.
            mid = x + w / 2
            out.append(f'<line class="flow" x1="{mid:.1f}" y1="{prev_bottom:.1f}" x2="{mid:.1f}" '
                       f'y2="{top - 1:.1f}" stroke="#555" marker-end="url(#arrow)"/>')
        _draw(child, cx, top, sizes, out)
        prev_bottom = top + ch
        top += ch + _GAP


def layer_diagram(model: base.Layer, path: str | os.PathLike | None = None, *,
                  title: str | None = None) -> str:
    """Draws ``model``'s layer tree as nested boxes in SVG; returns the SVG text.

    Each layer of :func:`layer_tree` gets one ``<rect class="layer ...">`` with
    ``data-layer`` (its name) and ``data-path``; its label gives the name,
    ``n_in``/``n_out`` and the weight shapes with their parameter count. A
    ``None`` branch (the identity path of a residual) is a dashed box of class
    ``identity``. Writes the file when ``path`` is given.
    """
    tree = layer_tree(model)
    sizes: dict[int, tuple[float, float]] = {}
    w, h = _measure(tree, sizes)
    total = sum(n.n_params for n in tree.walk())
    heading = title if title is not None else f"{tree.name} \u2014 {total:,} parameters"
    margin, head_h = 10.0, 26.0
    width, height = w + 2 * margin, h + 2 * margin + head_h
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="monospace" font-size="12">',
        "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" "
        "markerWidth=\"6\" markerHeight=\"6\" orient=\"auto-start-reverse\">"
        "<path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#555\"/></marker></defs>",
        "<style>text.name{font-weight:bold;fill:#222}text.info{fill:#555}"
        "text.heading{font-size:14px;font-weight:bold}</style>",
        f'<rect class="background" x="0" y="0" width="{width:.0f}" height="{height:.0f}" '
        f'fill="white"/>',
        f'<text class="heading" x="{margin}" y="{margin + 14}">{escape(heading)}</text>',
    ]
    _draw(tree, margin, margin + head_h, sizes, out)
    out.append("</svg>")
    svg = "\n".join(out) + "\n"
    if path is not None:
        from retrax import checkpoints

        checkpoints.write_bytes_atomic(path, svg.encode("utf-8"))
    return svg


# --------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------


def _matplotlib_figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "plot_history needs matplotlib, which is not installed. Install it with: "
            "pip install 'retrax[viz]'  (or: pip install matplotlib)"
        ) from err
    return Figure


def load_history(source: Any) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{mode: {metric: [(step, value), ...]}}`` from a History, dict, Loop or directory.

    ``source`` may be a ``History``, its ``to_dict()``, a ``training.Loop``
    (its ``history``), an output directory (its ``metrics.jsonl``) or the path
    of a ``metrics.jsonl`` file. Repeated steps (a resumed run that logged a
    step twice) keep the last value.
    """
    from retrax.supervised.history import History

    if hasattr(source, "history") and isinstance(source.history, History):
        source = source.history
    if isinstance(source, History):
        return source.to_dict()["_values"]
    if isinstance(source, dict):
        return History.from_dict(source).to_dict()["_values"]
    if isinstance(source, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(source))
        if os.path.isdir(path):
            path = os.path.join(path, "metrics.jsonl")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"No training history at {path}: expected an output directory of "
                f"training.Loop (with metrics.jsonl) or a metrics.jsonl file."
            )
        values: dict[str, dict[str, dict[int, float]]] = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                r = json.loads(line)
                values.setdefault(r["mode"], {}).setdefault(r["name"], {})[int(r["step"])] = \
                    float(r["value"])
        return {mode: {name: sorted(points.items()) for name, points in metrics.items()}
                for mode, metrics in values.items()}
    raise TypeError(
        f"plot_history: expected a History, a dict, a Loop or an output directory; got "
        f"{type(source).__name__}."
    )


def plot_history(history_or_output_dir: Any, path: str | os.PathLike, *,
                 metrics: list[str] | None = None, title: str | None = None) -> str:
    """Draws loss and metrics against steps into ``path`` (.png, .svg or .pdf).

    One panel per metric (``metrics/<name>`` entries of the history; pass
    ``metrics`` to choose), with a line per mode (train, eval). Losses are
    drawn on a log scale. Returns ``path``. Needs matplotlib
    (``pip install 'retrax[viz]'``).
    """
    path = os.path.expanduser(os.fspath(path))
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"plot_history: {path!r} must end in .png, .svg or .pdf.")
    figure_cls = _matplotlib_figure()
    values = load_history(history_or_output_dir)
    panels: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for mode in sorted(values, key=lambda m: (m != "train", m)):
        for tag, points in values[mode].items():
            if tag.startswith("metrics/") and points:
                panels.setdefault(tag[len("metrics/"):], {})[mode] = points
    if metrics is not None:
        missing = [m for m in metrics if m not in panels]
        if missing:
            raise ValueError(f"plot_history: no values for {missing}; have {sorted(panels)}.")
        panels = {m: panels[m] for m in metrics}
    if not panels:
        raise ValueError("plot_history: the history holds no loss or metric values yet.")
    fig = figure_cls(figsize=(4.5 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, modes) in zip(axes, panels.items()):
        for mode, points in modes.items():
            steps, ys = zip(*points)
            ax.plot(steps, ys, marker="o" if len(points) <= 30 else None, markersize=3,
                    label=mode)
        all_y = [y for points in modes.values() for _, y in points]
        if "loss" in name.lower() and min(all_y) > 0:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt)
    from retrax import checkpoints

    checkpoints.write_bytes_atomic(path, buffer.getvalue())
    return path


class PlotHistoryCallback(TrainingStepCallback):
    """A ``training.Loop`` callback drawing ``output_dir/history.png`` at each checkpoint.

    Pass the class: ``Loop(..., callbacks=[PlotHistoryCallback])`` (the Loop
    instantiates it with itself), or a configured subclass:
    ``callbacks=[PlotHistoryCallback.configured(filename='history.svg')]``.
    It draws when the Loop writes a checkpoint (after that step's evals), or
    every ``every`` steps when given. A plot that cannot be written warns and
    training goes on.
    """

    filename = "history.png"
    every: int | None = None

    def __init__(self, loop: Any):
        _matplotlib_figure()  # Fail at setup, not after the first checkpoint.
        super().__init__(loop)
        if getattr(loop, "output_dir", None) is None:
            warnings.warn("PlotHistoryCallback: the Loop has no output_dir; nothing will be "
                          "plotted.", stacklevel=2)

    @classmethod
    def configured(cls, filename: str = "history.png",
                   every: int | None = None) -> type[PlotHistoryCallback]:
        """A subclass with another file name (``.svg``/``.pdf`` too) or period."""
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(f"PlotHistoryCallback: every must be a positive int; got {every!r}.")
        return type(cls.__name__, (cls,), {"filename": filename, "every": every})

    @property
    def path(self) -> str | None:
        out = getattr(self._loop, "output_dir", None)
        return None if out is None else os.path.join(out, self.filename)

    def call_at(self, step: int) -> bool:
        if self.every is not None:
            return step % self.every == 0
        checkpoint_at = getattr(self._loop, "checkpoint_at", None)
        if checkpoint_at is not None:
            return bool(checkpoint_at(step))
        n = self._loop.tasks[0].n_steps_per_checkpoint
        return step == 1 or step % n == 0

    def on_step_end(self, step: int) -> None:
        del step
        if self.path is None or not getattr(self._loop, "is_chief", True):
            return
        try:
            plot_history(self._loop.history, self.path)
        except ValueError:  # Nothing logged yet at this step.
            pass
        except OSError as err:
            warnings.warn(f"PlotHistoryCallback: could not write {self.path}: {err}",
                          stacklevel=2)
