"""Layer trees, SVG layer diagrams, training-history plots and the Loop callback."""

from __future__ import annotations

import io
import json
import re
import sys

import numpy as np
import pytest

import retrax as trax
from retrax import layers as tl
from retrax import shapes, visualize
from retrax.supervised import training
from retrax.supervised.history import History

RECT = re.compile(r'<rect class="(layer [a-z]+|identity)" data-layer="([^"]*)" '
                  r'data-path="([^"]*)" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" '
                  r'height="([\d.]+)"')


def small_model():
    model = tl.Serial(tl.Dense(4), tl.Relu(), tl.Branch(tl.Dense(2), [tl.Dense(3), tl.Relu()]),
                      tl.Concatenate(), tl.Residual(tl.Dense(5)))
    model.init(shapes.ShapeDtype((1, 3)))
    return model


def test_layer_tree_follows_the_printed_tree():
    tree = visualize.layer_tree(small_model())
    got = [(n.path, n.name, n.kind, n.n_in, n.n_out, n.weight_shapes) for n in tree.walk()]
    assert got == [
        ("", "Serial", "serial", 1, 1, []),
        ("0", "Dense_4", "leaf", 1, 1, [(3, 4), (4,)]),
        ("1", "Serial", "serial", 1, 1, []),        # Relu is Serial[Relu], as in Trax.
        ("1.0", "Relu", "leaf", 1, 1, []),
        ("2", "Branch_out2", "parallel", 1, 2, []),
        ("2.0", "Dense_2", "leaf", 1, 1, [(4, 2), (2,)]),
        ("2.1", "Serial", "serial", 1, 1, []),      # The list [Dense_3, Relu].
        ("2.1.0", "Dense_3", "leaf", 1, 1, [(4, 3), (3,)]),
        ("2.1.1", "Serial", "serial", 1, 1, []),
        ("2.1.1.0", "Relu", "leaf", 1, 1, []),
        ("3", "Concatenate_in2", "leaf", 2, 1, []),
        ("4", "Serial", "serial", 1, 1, []),
        ("4.0", "Branch_out2", "parallel", 1, 2, []),
        ("4.0.0", "identity", "identity", 1, 1, []),
        ("4.0.1", "Dense_5", "leaf", 1, 1, [(5, 5), (5,)]),
        ("4.1", "Add_in2", "leaf", 2, 1, []),
    ]
    assert tree.children[4].residual and not tree.children[2].residual
    params = {n.path: n.n_params for n in tree.walk() if n.n_params}
    assert params == {"0": 16, "2.0": 10, "2.1.0": 15, "4.0.1": 30}


def test_layer_tree_total_equals_the_model_weights():
    model = trax.models.TransformerLM(vocab_size=32, d_model=32, d_ff=128, n_layers=2)
    model.init(shapes.ShapeDtype((1, 6), np.int32))
    tree = visualize.layer_tree(model)
    flat = trax.layers.base.flatten_weights_and_state(model.weights, ())[0]
    assert sum(n.n_params for n in tree.walk()) == sum(int(np.size(w)) for w in flat) == 93088
    assert sum(len(n.weight_shapes) for n in tree.walk()) == len(flat)
    assert sum(n.residual for n in tree.walk()) == 4  # Two per decoder block.


def test_shared_layer_is_counted_once():
    dense = tl.Dense(3)
    model = tl.Serial(dense, dense)
    model.init(shapes.ShapeDtype((1, 3)))
    a, b = visualize.layer_tree(model).children
    assert a.n_params == 12 and b.n_params == 0 and b.shared_with == "0"


def test_uninitialized_model_has_no_shapes():
    tree = visualize.layer_tree(tl.Serial(tl.Dense(3)))
    assert [n.weight_shapes for n in tree.walk()] == [[], []]
    with pytest.raises(TypeError, match="expected a retrax Layer"):
        visualize.layer_tree("Serial")


def _rects(svg):
    return [(m.group(1), m.group(2), m.group(3), *map(float, m.groups()[3:]))
            for m in RECT.finditer(svg)]


def test_diagram_has_one_box_per_layer_nested_in_its_parent(tmp_path):
    model = small_model()
    path = tmp_path / "m.svg"
    svg = visualize.layer_diagram(model, path)
    assert path.read_text() == svg and svg.startswith("<svg xmlns=")
    tree = visualize.layer_tree(model)
    layers = [n for n in tree.walk() if n.is_layer]
    assert len(layers) == 15
    assert svg.count('<rect class="layer') == len(layers)
    rects = {r[2]: r for r in _rects(svg)}
    assert len(rects) == 16 and rects["4.0.0"][0] == "identity"
    assert [rects[n.path][1] for n in tree.walk()] == [n.name for n in tree.walk()]
    for node in tree.walk():  # Every box lies inside its parent's box.
        for child in node.children:
            _, _, _, x, y, w, h = rects[node.path]
            _, _, _, cx, cy, cw, ch = rects[child.path]
            assert x < cx and y < cy and cx + cw < x + w and cy + ch < y + h, child.path
    for i, a in enumerate(node.children for node in tree.walk()):  # Siblings do not overlap.
        boxes = [rects[c.path][3:] for c in a]
        for j, (x1, y1, w1, h1) in enumerate(boxes):
            for x2, y2, w2, h2 in boxes[j + 1:]:
                assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1, i
    # Labels: name, n_in/n_out, weight shapes with the parameter count.
    assert ">Dense_4</text>" in svg and ">in 1 \u2192 out 1</text>" in svg
    assert ">(3, 4) (4,)  [16]</text>" in svg
    assert ">Concatenate_in2</text>" in svg and ">in 2 \u2192 out 1</text>" in svg
    assert "Serial \u00b7 residual" in svg
    assert "Serial \u2014 71 parameters" in svg


def test_diagram_of_transformer_lm(tmp_path):
    model = trax.models.TransformerLM(vocab_size=32, d_model=32, d_ff=128, n_layers=2)
    model.init(shapes.ShapeDtype((1, 6), np.int32))
    svg = visualize.layer_diagram(model, tmp_path / "tlm.svg", title="TransformerLM")
    n_layers = sum(1 for n in visualize.layer_tree(model).walk() if n.is_layer)
    assert svg.count('<rect class="layer') == n_layers
    assert svg.count('<rect class="identity"') == 4
    assert ">TransformerLM</text>" in svg and ">(32, 32)  [1,024]</text>" in svg
    import xml.dom.minidom

    xml.dom.minidom.parseString(svg)  # Well-formed.


def history():
    h = History()
    for step, loss in ((1, 4.0), (10, 1.0), (20, 0.1)):
        h.append("train", "metrics/CrossEntropyLoss", step, loss)
        h.append("train", "training/learning_rate", step, 0.01)
        h.append("eval", "metrics/CrossEntropyLoss", step, loss * 1.1)
        h.append("eval", "metrics/Accuracy", step, 1 - loss / 4)
    return h


def test_load_history_from_every_source(tmp_path):
    h = history()
    values = visualize.load_history(h)
    assert values["eval"]["metrics/Accuracy"] == [(1, 0.0), (10, 0.75), (20, 0.975)]
    assert visualize.load_history(h.to_dict()) == values
    lines = [{"step": s, "mode": m, "name": n, "value": v}
             for m, metrics in values.items() for n, pts in metrics.items() for s, v in pts]
    lines.append({"step": 20, "mode": "eval", "name": "metrics/Accuracy", "value": 1.0})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    from_dir = visualize.load_history(tmp_path)
    assert from_dir["eval"]["metrics/Accuracy"][-1] == (20, 1.0)  # The last value wins.
    with pytest.raises(FileNotFoundError, match="No training history"):
        visualize.load_history(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="expected a History"):
        visualize.load_history(3)


def test_plot_history_writes_png_and_svg(tmp_path):
    pytest.importorskip("matplotlib")
    png = visualize.plot_history(history(), tmp_path / "h.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    svg = visualize.plot_history(history(), str(tmp_path / "h.svg"), title="run")
    text = open(svg).read()
    assert "<svg" in text and "CrossEntropyLoss" in text and "Accuracy" in text
    assert "learning_rate" not in text  # Only loss and metrics.
    with pytest.raises(ValueError, match=r"must end in \.png, \.svg or \.pdf"):
        visualize.plot_history(history(), tmp_path / "h.jpg")
    with pytest.raises(ValueError, match="no loss or metric values"):
        visualize.plot_history(History(), tmp_path / "e.png")
    with pytest.raises(ValueError, match=r"no values for \['BLEU'\]"):
        visualize.plot_history(history(), tmp_path / "b.png", metrics=["BLEU"])


def test_plot_history_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'retrax\[viz\]'"):
        visualize.plot_history(history(), tmp_path / "h.png")


def _tiny_loop(tmp_path, callbacks):
    rng = np.random.default_rng(0)

    def batches():
        while True:
            x = rng.normal(size=(8, 3)).astype(np.float32)
            y = (x[:, 0] > 0).astype(np.int32)
            yield x, y, np.ones(8, np.float32)

    data = batches()
    task = training.TrainTask(data, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01),
                              n_steps_per_checkpoint=2)
    eval_task = training.EvalTask(data, [tl.CrossEntropyLoss(), tl.Accuracy()])
    return training.Loop(tl.Serial(tl.Dense(2), tl.LogSoftmax()), task, eval_tasks=[eval_task],
                         output_dir=str(tmp_path), callbacks=callbacks, stdout=io.StringIO())


def test_plot_callback_writes_the_plot_at_each_checkpoint(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    plotted = []
    real = visualize.plot_history
    monkeypatch.setattr(visualize, "plot_history",
                        lambda h, p, **kw: plotted.append(p) or real(h, p, **kw))
    svg_cb = visualize.PlotHistoryCallback.configured(filename="history.svg", every=3)
    loop = _tiny_loop(tmp_path, [visualize.PlotHistoryCallback, svg_cb])
    loop.run(4)
    png = tmp_path / "history.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "history.svg").exists()
    assert [p.rsplit("/", 1)[1] for p in plotted] == [
        "history.png", "history.png", "history.svg", "history.png"]  # Steps 1, 2, 3, 4.
    with pytest.raises(ValueError, match="every must be a positive int"):
        visualize.PlotHistoryCallback.configured(every=0)
