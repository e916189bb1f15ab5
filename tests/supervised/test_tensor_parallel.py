"""Loop(..., sharding='tensor:K'): Megatron-style tensor parallelism.

The layout rules are checked in this process (one device is enough to plan);
training runs in one subprocess with 8 host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``, set before JAX starts).
"""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
from host_devices import run_with_eight_devices
from jax.sharding import PartitionSpec

import retrax as trax
from retrax import cli, shapes
from retrax import layers as tl
from retrax.cli import config_files
from retrax.supervised import loop_settings, sharding, tensor_parallel
from retrax.supervised.train_step import Placement

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REP, COL_W, COL_B, ROW_W = (PartitionSpec(), PartitionSpec(None, "model"),
                            PartitionSpec("model"), PartitionSpec("model", None))


def lm(n_heads=4, d_ff=64, vocab=32, n_layers=1):
    model = trax.models.TransformerLM(vocab, d_model=32, d_ff=d_ff, n_layers=n_layers,
                                      n_heads=n_heads, max_len=16)
    model.init(shapes.ShapeDtype((2, 8), np.int32))
    return model


def named_specs(model, k):
    """``[(shape, spec)]`` of the plan, in the weights' leaf order."""
    plan = tensor_parallel.plan_model(model, k)
    return plan, list(zip(plan.shapes, plan.specs))


# -- the rules, read from the layers ---------------------------------------------------


def test_transformer_lm_is_split_megatron_style():
    plan, specs = named_specs(lm(), 2)
    # Trax's order: Embedding, PositionalEncoding, LayerNorm, Wq bq Wk bk Wv bv Wo bo,
    # LayerNorm, Dense(d_ff), Dense(d_model), final LayerNorm, Dense(vocab).
    assert specs == [
        ((32, 32), ROW_W),  # embedding: the vocabulary axis
        ((16, 32), REP), ((32,), REP), ((32,), REP),  # positions, LayerNorm
        ((32, 32), COL_W), ((32,), COL_B), ((32, 32), COL_W), ((32,), COL_B),  # Q, K
        ((32, 32), COL_W), ((32,), COL_B),  # V
        ((32, 32), ROW_W), ((32,), REP),  # output projection: rows, its bias replicated
        ((32,), REP), ((32,), REP),  # LayerNorm
        ((32, 64), COL_W), ((64,), COL_B), ((64, 32), ROW_W), ((32,), REP),  # feed-forward
        ((32,), REP), ((32,), REP),  # final LayerNorm
        ((32, 32), COL_W), ((32,), COL_B),  # vocabulary projection
    ]
    assert plan.summary == ("1 attention block, 1 feed-forward pair, 1 embedding, "
                            "1 output Dense split over 2 devices")
    assert plan.skipped == []


def test_heads_decide_not_shapes():
    # 2 heads over 4 devices: the 32-wide Q/K/V would divide, but heads would be cut,
    # so the block stays replicated while the feed-forward pair is split.
    plan, specs = named_specs(lm(n_heads=2), 4)
    assert all(spec == REP for _, spec in specs[4:12])
    assert specs[14][1] == COL_W and specs[16][1] == ROW_W
    assert plan.skipped == ["attention with 2 heads (4 does not divide the head count)"]


def test_indivisible_widths_fall_back_to_replicated():
    # K = 3: neither the 4 heads, the 64-wide hidden layer nor 32 divide; the vocabulary
    # of 33 does, on both the embedding and the output Dense.
    plan, specs = named_specs(lm(vocab=33), 3)
    assert [spec for _, spec in specs] == [ROW_W] + [REP] * 19 + [COL_W, COL_B]
    assert plan.skipped == ["attention with 4 heads (3 does not divide the head count)",
                            "feed-forward pair of width 64 (3 does not divide it)"]


def test_padding_mask_attention_and_encoder_decoder_are_recognised():
    model = trax.models.Transformer(32, d_model=32, d_ff=64, n_encoder_layers=1,
                                    n_decoder_layers=1, n_heads=4, max_len=16)
    model.init((shapes.ShapeDtype((2, 8), np.int32), shapes.ShapeDtype((2, 8), np.int32)))
    plan = tensor_parallel.plan_model(model, 2)
    # Encoder self-attention (PureAttention: its heads probed), decoder causal attention,
    # encoder-decoder attention (AttentionQKV), two feed-forward pairs.
    # The embedding is shared by encoder and decoder (its weights appear once).
    assert plan.summary == ("3 attention blocks, 2 feed-forward pairs, 1 embedding, "
                            "1 output Dense split over 2 devices")
    assert sum(spec != REP for spec in plan.specs) == 3 * 7 + 2 * 3 + 1 + 2


def test_a_model_without_recognised_layers_splits_nothing():
    model = tl.Serial(tl.Embedding(31, 7), tl.LayerNorm(), tl.Dense(31), tl.LogSoftmax())
    model.init(shapes.ShapeDtype((2, 3), np.int32))
    plan = tensor_parallel.plan_model(model, 2)
    assert not plan.splits_anything and plan.summary == "nothing split"
    assert plan.skipped == ["embedding of shape (31, 7) (2 divides no axis)",
                            "output Dense of shape (7, 31) (2 divides no axis)"]


def test_adam_moments_take_their_weights_layout():
    model = lm()
    plan = tensor_parallel.plan_model(model, 2)
    slots, _ = trax.optimizers.Adam(0.01).tree_init(model.weights)
    seen = []
    plan.map(lambda x, spec: seen.append((np.shape(x), spec)), slots)
    split = [(shape, spec) for shape, spec in seen if spec != REP]
    expected = [(shape, spec) for shape, spec in zip(plan.shapes, plan.specs) if spec != REP]
    assert split == expected * 2  # first and second moments; the counters replicated
    assert len(seen) > 2 * len(plan.specs)


# -- the setting ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["tensor", "tensor:0", "tensor:-2", "tensor:two", "Tensor:2",
                                 "tensor:2.0", 2])
def test_bad_tensor_values_are_refused(bad):
    with pytest.raises(ValueError, match=rf"sharding={bad!r} is not supported.*'tensor:K' with "
                                         r"K a positive integer, e.g. 'tensor:2'"):
        sharding.check_sharding(bad)


def test_values_are_normalised_and_give_the_model_axis():
    assert sharding.check_sharding("tensor:02") == "tensor:2"
    assert [sharding.model_axis_size(v) for v in ("tensor:8", "tensor:1", "fsdp")] == [8, 1, 1]


def test_a_model_axis_that_does_not_divide_the_devices_is_refused():
    with pytest.raises(ValueError, match=r"sharding='tensor:2' puts 2 devices on the 'model' "
                                         r"mesh axis, which must divide the 1 device\(s\) in "
                                         r"use \(n_devices=1\); choose 'tensor:K' with K one of "
                                         r"1 \(the divisors of 1\)"):
        Placement(1, sharding="tensor:2", model=lm())


def test_a_recorded_tensor_setting_is_resumed(tmp_path):
    (tmp_path / "model.pkl.gz").write_bytes(b"")  # a checkpoint to resume from
    (tmp_path / "config.json").write_text(json.dumps({"sharding": "tensor:4"}))
    settings, note = loop_settings.run_settings(str(tmp_path), None, None)
    assert settings == {"sharding": "tensor:4", "compute_dtype": "float32"} and note is None
    settings, note = loop_settings.run_settings(str(tmp_path), "tensor:2", None)
    assert settings["sharding"] == "tensor:2"
    assert "sharding='tensor:4' -> 'tensor:2'" in note
    # A recorded value that is not one is ignored (the default is taken).
    (tmp_path / "config.json").write_text(json.dumps({"sharding": "tensor:0"}))
    assert loop_settings.run_settings(str(tmp_path), None, None)[0]["sharding"] == "replicated"


def test_cli_accepts_tensor_values():
    base = {"model": {"name": "TransformerLM", "vocab_size": 32}, "task": {"name": "reverse"},
            "output_dir": "unused"}
    assert config_files.parse_value("tensor:2") == "tensor:2"  # what --set sharding=... gives
    assert cli.resolve_train_config({**base, "sharding": "tensor:2"})["sharding"] == "tensor:2"
    with pytest.raises(cli.UsageError, match=r'config sharding must be one of \["replicated", '
                                             r'"fsdp", "tensor:K"\].*got "tensor:0"'):
        cli.resolve_train_config({**base, "sharding": "tensor:0"})


# -- eight host devices -------------------------------------------------------------------

EIGHT_DEVICES = textwrap.dedent(r"""
    import io, json, re, sys
    sys.path.insert(0, {tests!r})
    import jax
    import numpy as np
    import retrax as trax
    from retrax import layers as tl
    from retrax.supervised import sharding
    from supervised.test_training import make_loop

    def lm():
        return trax.models.TransformerLM(32, d_model=32, d_ff=64, n_layers=2, n_heads=4,
                                         max_len=16, dropout=0.1)

    def losses(loop):
        return [v for _, v in loop.history.get('train', 'metrics/CrossEntropyLoss')]

    def leaves(tree):
        return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]

    out = {{}}
    runs = {{}}
    for mode in ('replicated', 'tensor:2', 'tensor:4'):
        log = io.StringIO()
        loop = make_loop(sys.argv[1] + '/' + mode.replace(':', ''), model=lm(),
                         steps_per_ckpt=3, sharding=mode, stdout=log)
        loop.run(6)
        w = jax.tree_util.tree_leaves(loop._weights)
        per_leaf = [[list(x.shape), list(x.sharding.spec), x.nbytes,
                     max(s.data.nbytes for s in x.addressable_shards)] for x in w]
        held = sharding.bytes_per_device(loop._weights)
        slots = sharding.bytes_per_device(loop._slots)
        out[mode] = dict(losses=losses(loop), per_leaf=per_leaf,
                         eval=[v for _, v in loop.history.get('eval', 'metrics/Accuracy')],
                         held=max(held.values()), total=sum(x.nbytes for x in w),
                         slots_held=max(slots.values()), n_held=len(held),
                         note=log.getvalue().splitlines()[0])
        runs[mode] = leaves(loop.model.weights)
        loop.close()
    # Each run's step-6 checkpoint loads into the other layout, whole and exact.
    for saved, other in (('tensor:2', 'replicated'), ('replicated', 'tensor:2')):
        loop = make_loop(sys.argv[1] + '/' + saved.replace(':', ''), model=lm(),
                         steps_per_ckpt=3, sharding=other)
        assert loop.step == 6 and loop.sharding == other
        same = all(np.array_equal(a, b) for a, b in zip(leaves(loop._weights), runs[saved]))
        specs = [list(x.sharding.spec) for x in jax.tree_util.tree_leaves(loop._weights)]
        loop.run(3)
        out['resumed_' + saved] = dict(exact=same, specs=specs, losses=losses(loop))
        loop.close()
    # The compiled step of a wider model: which arrays are all-gathered.
    loop = make_loop(None, steps_per_ckpt=3, sharding='tensor:2',
                     model=trax.models.TransformerLM(32, d_model=128, d_ff=256, n_layers=1,
                                                     n_heads=4, max_len=16))
    batch = loop._placement.put_batch(loop._task_streams[0].next(), 'train')
    hlo = loop._train_fns[0].lower(loop._weights, loop._state, loop._slots[0],
                                   loop._opt_params[0], batch, 1).compile().as_text()
    gathered = [int(np.prod([int(d) for d in dims.split(',') if d]))
                for dims in re.findall(r'= \w+\[([\d,]*)\]\S* all-gather(?:-start)?\(', hlo)]
    out['gathered'] = gathered
    # bfloat16 compute on split float32 masters.
    for mode in ('replicated', 'tensor:2'):
        loop = make_loop(None, model=lm(), steps_per_ckpt=3, sharding=mode,
                         compute_dtype='bfloat16')
        loop.run(6)
        out['bf16_' + mode] = losses(loop)
    # Nothing to split: data parallel over all 8 devices, with a note.
    small = lambda: tl.Serial(tl.Embedding(31, 7), tl.Dense(31), tl.LogSoftmax())
    for mode in ('replicated', 'tensor:2'):
        log = io.StringIO()
        loop = make_loop(None, model=small(), steps_per_ckpt=3, sharding=mode, stdout=log)
        loop.run(3)
        out['small_' + mode] = dict(losses=losses(loop), note=log.getvalue().splitlines()[0],
                                    batch=list(loop._placement.batch_sharding.spec))
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tensor")
    return run_with_eight_devices(EIGHT_DEVICES.format(tests=os.path.join(REPO, "tests")),
                                  tmp, timeout=600)


@pytest.mark.slow  # one 8-device subprocess, ~45 s of CPU
def test_tensor_parallel_losses_equal_replicated_ones(eight_devices):
    rep = eight_devices["replicated"]
    assert len(rep["losses"]) == 3 and rep["losses"][-1] < rep["losses"][0]
    for mode in ("tensor:2", "tensor:4"):
        run = eight_devices[mode]
        np.testing.assert_allclose(run["losses"], rep["losses"], rtol=1e-5)
        np.testing.assert_allclose(run["eval"], rep["eval"], rtol=1e-5)
        k = mode[-1]
        assert run["note"] == (f"Tensor parallel ({mode}): 2 attention blocks, 2 feed-forward "
                               f"pairs, 1 embedding, 1 output Dense split over {k} devices.")


@pytest.mark.slow  # one 8-device subprocess, ~45 s of CPU
def test_split_matrices_hold_one_kth_per_device(eight_devices):
    for mode, k in (("tensor:2", 2), ("tensor:4", 4)):
        run = eight_devices[mode]
        assert run["n_held"] == 8
        split = [leaf for leaf in run["per_leaf"] if leaf[1]]
        whole = [leaf for leaf in run["per_leaf"] if not leaf[1]]
        # Per block: Q, K, V (weights and biases) and Wo; W1, b1 and W2. The embedding and
        # the output Dense's weights and bias.
        assert len(split) == 2 * (7 + 3) + 1 + 2
        for shape, spec, nbytes, most in split:
            assert most * k == nbytes, (shape, spec)
        assert all(most == nbytes for _, _, nbytes, most in whole)
        split_bytes = sum(leaf[2] for leaf in split)
        whole_bytes = sum(leaf[2] for leaf in whole)
        assert run["held"] == split_bytes // k + whole_bytes
        assert run["total"] == split_bytes + whole_bytes
    assert eight_devices["replicated"]["held"] == eight_devices["replicated"]["total"]


@pytest.mark.slow  # one 8-device subprocess, ~45 s of CPU
def test_split_matrices_are_never_gathered(eight_devices):
    # Megatron-style: activations are reduced, weights stay split. The smallest split
    # matrix has 128 x 128 elements; only leaves of <= 4096 elements are all-gathered (the
    # optimizer's gradient and weight norms join those into one sum).
    assert max(eight_devices["gathered"], default=0) <= 4096


@pytest.mark.slow  # one 8-device subprocess, ~45 s of CPU
def test_checkpoints_load_across_tensor_and_replicated(eight_devices):
    from_tp = eight_devices["resumed_tensor:2"]
    from_rep = eight_devices["resumed_replicated"]
    assert from_tp["exact"] and from_rep["exact"]
    assert all(spec == [] for spec in from_tp["specs"])
    assert from_rep["specs"] == [leaf[1] for leaf in eight_devices["tensor:2"]["per_leaf"]]
    assert len(from_tp["losses"]) == len(from_rep["losses"]) == 4
    np.testing.assert_allclose(from_tp["losses"], from_rep["losses"], rtol=1e-5)


@pytest.mark.slow  # one 8-device subprocess, ~45 s of CPU
def test_tensor_parallel_with_bfloat16_compute_matches_replicated(eight_devices):
    rep, tp = eight_devices["bf16_replicated"], eight_devices["bf16_tensor:2"]
    assert len(rep) == 3
    np.testing.assert_allclose(tp, rep, rtol=2e-3)  # bfloat16 sums in another order
    np.testing.assert_allclose(rep, eight_devices["replicated"]["losses"], rtol=3e-2)


@pytest.mark.slow  # one 8-device subprocess, ~45 s of CPU
def test_nothing_to_split_trains_data_parallel_with_a_note(eight_devices):
    rep, tp = eight_devices["small_replicated"], eight_devices["small_tensor:2"]
    np.testing.assert_allclose(tp["losses"], rep["losses"], rtol=1e-5)
    assert tp["batch"] == [["data", "model"]]
    assert tp["note"].startswith("Note: sharding='tensor:2' found no attention block, "
                                 "feed-forward pair, Embedding or output Dense it could split")
    assert tp["note"].endswith("training data parallel over all 8 devices (weights "
                               "replicated).")


# -- two processes, 4 devices each: whole 'model' groups in each process ------------------

WORKER = textwrap.dedent("""
    import io, json, sys
    import numpy as np
    args = json.loads(sys.argv[1])
    from retrax.supervised import distributed
    if args["num_processes"] > 1:
        distributed.initialize(args["coordinator"], args["num_processes"], args["process_id"])
    import jax
    import retrax as trax
    from retrax import layers as tl
    from retrax.quickstart import reverse_ints_task
    from retrax.supervised import training

    assert jax.device_count() == 8, jax.devices()
    model = trax.models.TransformerLM(32, d_model=32, d_ff=64, n_layers=1, n_heads=4,
                                      max_len=16)
    data = distributed.local_batches(reverse_ints_task(16, rng=np.random.RandomState(0)))
    task = training.TrainTask(data, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01),
                              n_steps_per_checkpoint=2)
    loop = training.Loop(model, task, output_dir=args["output_dir"], stdout=io.StringIO(),
                         write_trax_checkpoint=False, sharding=args["sharding"])
    loop.run(args["steps"] - loop.step)
    specs = [list(x.sharding.spec) for x in jax.tree_util.tree_leaves(loop._weights)]
    weights = loop.host_weights()  # a collective: every process
    np.savez(args["result"], *jax.tree_util.tree_leaves(weights))
    with open(args["result"] + ".json", "w") as f:
        json.dump({"losses": [v for _, v in loop.history.get("train",
                                                            "metrics/CrossEntropyLoss")],
                   "specs": specs, "step": loop.step, "sharding": loop.sharding}, f)
""")


def _launch(tmp_path, name, n_processes, sharding, steps, output_dir=None):
    from multihost_launch import COORDINATOR, launch

    worker = tmp_path / "tensor_worker.py"
    worker.write_text(WORKER)
    commands, results = [], []
    for i in range(n_processes):
        result = str(tmp_path / f"{name}{i}")
        # Process 1 leaves sharding at None: it takes process 0's.
        args = {"output_dir": str(output_dir or tmp_path / name),
                "sharding": sharding if i == 0 else None, "steps": steps, "result": result,
                "num_processes": n_processes, "coordinator": COORDINATOR, "process_id": i}
        commands.append([str(worker), json.dumps(args)])
        results.append(result)
    launch(commands, n_devices=8 // n_processes, timeout=600)
    runs = []
    for result in results:
        with open(result + ".json") as f:
            info = json.load(f)
        with np.load(result + ".npz") as z:
            info["weights"] = [z[f"arr_{i}"] for i in range(len(z.files))]
        runs.append(info)
    return runs


@pytest.mark.slow  # three multi-process launches, ~1 minute
def test_two_processes_train_tensor_parallel_as_one_and_resume_unsharded(tmp_path):
    (one,) = _launch(tmp_path, "one", 1, "tensor:2", 4)
    two = _launch(tmp_path, "two", 2, "tensor:2", 4)
    assert two[0]["sharding"] == two[1]["sharding"] == "tensor:2"  # process 1 took process 0's
    assert two[0]["specs"] == one["specs"] and ["model", None] in one["specs"]
    assert two[0]["losses"] == two[1]["losses"]
    np.testing.assert_allclose(two[0]["losses"], one["losses"], rtol=1e-5)
    for a, b, c in zip(two[0]["weights"], two[1]["weights"], one["weights"]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-5)
    # Process 0 wrote whole arrays: one replicated process resumes from them exactly.
    (resumed,) = _launch(tmp_path, "resumed", 1, "replicated", 4, output_dir=tmp_path / "two")
    assert resumed["step"] == 4 and all(spec == [] for spec in resumed["specs"])
    for a, b in zip(resumed["weights"], two[0]["weights"]):
        np.testing.assert_array_equal(a, b)
