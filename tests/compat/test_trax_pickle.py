"""Tests for retrax.compat.trax_pickle against checkpoints written by real Trax."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import pickletools
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from retrax.compat import (
    ALLOWED_GLOBALS,
    TraxHistory,
    load_trax_pickle,
    read_trax_checkpoint,
    write_trax_loop_checkpoint,
)
from retrax.shapes import ShapeDtype

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "trax"
SEED = FIXTURES / "trax-1.4.1" / "transformerlm_seed" / "model.pkl.gz"
LOOP = FIXTURES / "trax-1.4.1" / "transformerlm_seed_loop_ckpt" / "model.pkl.gz"
ENCDEC = FIXTURES / "trax-1.4.1" / "transformer_encdec" / "model.pkl.gz"
ENCODER = FIXTURES / "trax-1.4.1" / "transformer_encoder" / "model.pkl.gz"
COPY = FIXTURES / "trax-upstream" / "transformerlm_copy" / "model.pkl.gz"
ALL_FIXTURES = [SEED, LOOP, ENCDEC, ENCODER, COPY]


def transformer_lm_shapes(vocab: int, d: int, d_ff: int, n_layers: int, max_len: int) -> list:
    """Flat weight shapes of Trax 1.4.1's TransformerLM (TRAX_REFERENCE section 4)."""
    layer = [(d,), (d,)] + [(d, d), (d,)] * 4 + [(d,), (d,), (d, d_ff), (d_ff,), (d_ff, d), (d,)]
    return [(vocab, d), (max_len, d)] + layer * n_layers + [(d,), (d,), (d, vocab), (vocab,)]


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """Every (module, name) a pickle references via GLOBAL or STACK_GLOBAL.

    STACK_GLOBAL takes its two strings from the stack, which may come from the
    memo (BINGET), so the memo is replayed alongside.
    """
    found: set[tuple[str, str]] = set()
    memo: dict[int, object] = {}
    pushed: list[object] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            module, name = arg.split(" ", 1)
            found.add((module, name))
            pushed.append(None)
        elif op.name == "STACK_GLOBAL":
            found.add((pushed[-2], pushed[-1]))
            pushed.append(None)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1]
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1]
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo[arg])
        elif "UNICODE" in op.name:
            pushed.append(arg)
        elif op.name not in ("FRAME", "PROTO"):
            pushed.append(None)
    return found


def read_pickle_bytes(path: Path) -> bytes:
    with gzip.open(path, "rb") as f:
        return f.read()


def test_fixtures_are_present():
    for path in ALL_FIXTURES:
        assert path.is_file(), f"missing fixture {path}"


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.parent.name)
def test_fixture_globals_are_all_allowed(path):
    globals_ = pickle_globals(read_pickle_bytes(path))
    assert globals_ <= ALLOWED_GLOBALS, globals_ - ALLOWED_GLOBALS
    assert ("trax.shapes", "ShapeDtype") in globals_


def test_fixture_globals_match_reference_lists():
    # TRAX_REFERENCE section 10.2, as observed in these particular files.
    assert pickle_globals(read_pickle_bytes(LOOP)) == {
        ("builtins", "list"),
        ("collections", "defaultdict"),
        ("jax._src.array", "_reconstruct_array"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("trax.shapes", "ShapeDtype"),
    }
    assert pickle_globals(read_pickle_bytes(COPY)) == {
        ("builtins", "list"),
        ("collections", "defaultdict"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("trax.shapes", "ShapeDtype"),
        ("trax.supervised.history", "History"),
    }
    assert ("numpy", "int32") in pickle_globals(read_pickle_bytes(SEED))


def test_seed_save_to_file_layout():
    ckpt = read_trax_checkpoint(SEED)
    assert ckpt.layout == "save_to_file"
    assert len(ckpt.flat_weights) == 2 + 16 * 2 + 4 == 38
    expected = transformer_lm_shapes(vocab=32, d=32, d_ff=128, n_layers=2, max_len=2048)
    assert [w.shape for w in ckpt.flat_weights] == expected
    assert ckpt.flat_weights[0].shape == (32, 32) and ckpt.flat_weights[1].shape == (
        2048,
        32,
    )
    assert all(type(w) is np.ndarray and w.dtype == np.float32 for w in ckpt.flat_weights)
    assert all(np.isfinite(w).all() for w in ckpt.flat_weights)
    # Flat state: one dropout rate per Dropout layer, 1 + 3 * n_layers of them.
    assert len(ckpt.flat_state) == 1 + 3 * 2 == 7
    for s in ckpt.flat_state:
        assert type(s) is np.ndarray and s.shape == () and s.dtype == np.float32
        assert s == np.float32(0.1)
    assert ckpt.input_signature == ShapeDtype((1, 12), np.int32)
    assert ckpt.input_signature.dtype is np.int32  # stored as the type, as Trax printed it
    assert ckpt.step is None and ckpt.history is None and ckpt.slots is None
    assert ckpt.flat_eval_state is None and ckpt.version_timestamp is None


def test_upstream_copy_trainer_layout_pickled_under_numpy1():
    with warnings.catch_warnings():
        # numpy.core is deprecated in NumPy 2; the reader must not go through it.
        warnings.simplefilter("error")
        ckpt = read_trax_checkpoint(COPY)
    assert ckpt.layout == "trainer"
    assert ckpt.step == 5100
    assert ckpt.version_timestamp == "Jun-18-2020"
    assert len(ckpt.flat_weights) == 38
    assert ckpt.flat_weights[0].shape == (13, 64)
    # 2020 checkpoints keep the positional table with a leading batch axis.
    assert ckpt.flat_weights[1].shape == (1, 256, 64)
    assert [w.shape for w in ckpt.flat_weights[2:]] == transformer_lm_shapes(13, 64, 128, 2, 256)[
        2:
    ]
    # Dropout rates: this model was trained with dropout=0.05 (meta.json), not 0.1.
    assert len(ckpt.flat_state) == 7 and all(s == np.float32(0.05) for s in ckpt.flat_state)
    assert ckpt.input_signature == (
        ShapeDtype((128, 12), np.int64),
        ShapeDtype((128, 12), np.int64),
        ShapeDtype((128, 12), np.float64),
    )
    # Inline Adam slots (m, v) per weight, flattened to one task [m0, v0, m1, v1, ...].
    assert len(ckpt.slots) == 1 and len(ckpt.slots[0]) == 2 * 38
    assert [s.shape for s in ckpt.slots[0][::2]] == [w.shape for w in ckpt.flat_weights]
    assert [s.shape for s in ckpt.slots[0][1::2]] == [w.shape for w in ckpt.flat_weights]
    assert set(ckpt.opt_params) == {
        "b1",
        "b2",
        "eps",
        "learning_rate",
        "weight_decay_rate",
    }
    assert ckpt.opt_params["b1"] == np.float32(0.9)
    train, eval_ = ckpt.history["train"], ckpt.history["eval"]
    assert set(ckpt.history) == {"train", "eval"}
    assert len(train["metrics/accuracy"]) == 52
    step, value = train["metrics/accuracy"][0]
    assert step == 1 and type(value) is float and value == pytest.approx(0.10407521)
    assert train["training/learning_rate"][0] == (
        1,
        pytest.approx(1.9764235376052373e-07),
    )
    assert train["metrics/accuracy"][-1][0] == 5100
    assert "training/learning_rate" not in eval_ and len(eval_["metrics/loss"]) == 52


def test_loop_layout_reads_weights_from_npy_stream():
    ckpt = read_trax_checkpoint(LOOP)
    assert ckpt.layout == "loop"
    assert ckpt.step == 1000
    assert ckpt.version_timestamp == "Mar-10-2021"
    assert [w.shape for w in ckpt.flat_weights] == transformer_lm_shapes(32, 32, 128, 2, 2048)
    assert all(w.dtype == np.float32 for w in ckpt.flat_weights)
    # Same arrays, in order, as a plain read of the companion gzip'd np.save stream.
    direct = []
    with gzip.open(LOOP.parent / "model.weights.npy.gz", "rb") as f:
        while f.peek(1):
            direct.append(np.load(f, allow_pickle=False))
    assert len(direct) == 38
    for got, want in zip(ckpt.flat_weights, direct):
        np.testing.assert_array_equal(got, want)
    # Trained weights differ from the random init of the seed checkpoint.
    assert not np.array_equal(ckpt.flat_weights[0], read_trax_checkpoint(SEED).flat_weights[0])
    assert len(ckpt.flat_state) == 7 and len(ckpt.flat_eval_state) == 7
    assert all(s == np.float32(0.1) for s in ckpt.flat_state + ckpt.flat_eval_state)
    assert ckpt.input_signature == (ShapeDtype((16, 10), np.int64),)
    assert ckpt.slots is None  # the fixture's opt_slots0 file was removed
    assert set(ckpt.history["train"]) == {
        "metrics/CrossEntropyLoss",
        "training/learning_rate",
        "training/steps per second",
        "training/gradients_l2",
        "training/loss",
        "training/weights_l2",
    }
    assert set(ckpt.history["eval"]) == {"metrics/CrossEntropyLoss", "metrics/Accuracy"}
    for metrics in ckpt.history.values():
        for pairs in metrics.values():
            assert [s for s, _ in pairs] == [1, 500]
            assert all(type(v) is float for _, v in pairs)
    assert ckpt.history["train"]["training/learning_rate"][0][1] == pytest.approx(0.01)
    # The seed task trains into garbage under Trax 1.4.1: loss goes negative.
    assert ckpt.history["train"]["metrics/CrossEntropyLoss"][1][1] < 0


def test_encdec_and_encoder_save_to_file():
    encdec = read_trax_checkpoint(ENCDEC)
    assert encdec.layout == "save_to_file"
    assert len(encdec.flat_weights) == 93 and len(encdec.flat_state) == 16
    assert encdec.flat_weights[0].shape == (40, 32) and encdec.flat_weights[1].shape == (64, 32)
    assert encdec.input_signature == (
        ShapeDtype((1, 9), np.int32),
        ShapeDtype((1, 7), np.int32),
    )
    encoder = read_trax_checkpoint(ENCODER)
    assert len(encoder.flat_weights) == 38 and len(encoder.flat_state) == 7
    assert encoder.flat_weights[-2:][0].shape == (32, 5)  # Dense(n_classes)
    assert encoder.input_signature == ShapeDtype((1, 11), np.int32)


def _evil_payloads(marker: Path) -> dict[str, object]:
    class OsSystem:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    class Eval:
        def __reduce__(self):
            return eval, (f"open({str(marker)!r}, 'w').close()",)

    class Popen:
        def __reduce__(self):
            return subprocess.Popen, (["touch", str(marker)],)

    return {
        f"{os.system.__module__}.system": OsSystem(),
        "builtins.eval": Eval(),
        "subprocess.Popen": Popen(),
    }


@pytest.mark.parametrize("which", ["system", "builtins.eval", "subprocess.Popen"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, which):
    marker = tmp_path / "pwned"
    payloads = _evil_payloads(marker)
    ((name, evil),) = [(k, v) for k, v in payloads.items() if k.endswith(which)]
    data = pickle.dumps({"flat_weights": [np.zeros(2)], "x": evil}, protocol=5)
    with pytest.raises(pickle.UnpicklingError) as info:
        load_trax_pickle(io.BytesIO(data))
    assert name in str(info.value) and "not a Trax checkpoint" in str(info.value)
    # Same through the checkpoint reader, with an older protocol (GLOBAL opcode).
    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump({"flat_weights": [], "x": evil}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="may be unsafe"):
        read_trax_checkpoint(path)
    assert not marker.exists()


def test_eval_payload_really_executes_under_plain_pickle(tmp_path):
    # Control for the test above: the payload is live, so its refusal matters.
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_evil_payloads(marker)["builtins.eval"]))
    assert marker.exists()


def test_object_arrays_are_rejected():
    data = pickle.dumps({"flat_weights": [np.array([1, "a"], dtype=object)]})
    with pytest.raises(pickle.UnpicklingError, match="object"):
        load_trax_pickle(io.BytesIO(data))


def test_jax_arrays_in_pickles_become_numpy():
    import jax.numpy as jnp

    data = pickle.dumps([jnp.arange(6.0).reshape(2, 3)], protocol=5)
    assert ("jax._src.array", "_reconstruct_array") in pickle_globals(data)
    (arr,) = load_trax_pickle(io.BytesIO(data))
    assert type(arr) is np.ndarray
    np.testing.assert_array_equal(arr, np.arange(6.0, dtype=np.float32).reshape(2, 3))


def test_history_stand_in_accepts_trax_state(tmp_path):
    h = TraxHistory.__new__(TraxHistory)
    h.__setstate__({"_values": {"train": {"loss": [(1, 2.0)]}}})  # Trax History's state
    # What it holds is the history a checkpoint written with it reads back.
    pkl = write_trax_loop_checkpoint(tmp_path / "m", [np.zeros(2, np.float32)], history=h)
    assert read_trax_checkpoint(pkl).history == {"train": {"loss": [(1, 2.0)]}, "eval": {}}
    with pytest.raises(pickle.UnpicklingError):
        h.__setstate__({"other": 1})


def _example(rng: np.random.Generator):
    import jax.numpy as jnp
    import ml_dtypes

    weights = [
        rng.standard_normal((4, 3)).astype(np.float32),
        jnp.asarray(rng.standard_normal(3).astype(np.float32)),  # a jax Array
        np.arange(5, dtype=np.int32),
        rng.standard_normal((2, 2)).astype(ml_dtypes.bfloat16),
    ]
    slots = [rng.standard_normal(w.shape).astype(np.float32) for w in weights[:2]]
    history = {
        "train": {
            "metrics/loss": [(1, jnp.float32(2.5)), (10, np.float32(1.25))],
            "training/learning_rate": [(1, 0.01), (10, 0.01)],
        },
        "eval": {"metrics/Accuracy": [(10, np.float64(0.75))]},
    }
    signature = (ShapeDtype((4, 12), np.int32),)
    return weights, slots, history, signature


def test_round_trip_loop_checkpoint(tmp_path):
    weights, slots, history, signature = _example(np.random.default_rng(0))
    state = [np.float32(0.1), np.array(0.2, np.float32)]
    pkl = write_trax_loop_checkpoint(
        tmp_path / "model",
        weights,
        flat_state=state,
        step=123,
        history=history,
        input_signature=signature,
        flat_slots=slots,
    )
    assert pkl == str(tmp_path / "model.pkl.gz")
    assert sorted(os.listdir(tmp_path)) == [
        "model.opt_slots0.npy.gz",
        "model.pkl.gz",
        "model.weights.npy.gz",
    ]

    ckpt = read_trax_checkpoint(pkl)
    assert ckpt.layout == "loop" and ckpt.step == 123
    assert ckpt.version_timestamp == "Mar-10-2021"
    assert ckpt.input_signature == signature
    assert len(ckpt.flat_weights) == 4
    for got, want in zip(ckpt.flat_weights[:3], weights[:3]):
        assert got.dtype == np.asarray(want).dtype
        np.testing.assert_array_equal(got, np.asarray(want))
    # bfloat16 comes back as its uint16 bit pattern unless asked otherwise.
    assert ckpt.flat_weights[3].dtype == np.uint16
    np.testing.assert_array_equal(ckpt.flat_weights[3], weights[3].view(np.uint16))
    as_bf16 = read_trax_checkpoint(pkl, uint16_as_bfloat16=True).flat_weights[3]
    assert as_bf16.dtype == weights[3].dtype
    np.testing.assert_array_equal(as_bf16.astype(np.float32), weights[3].astype(np.float32))
    assert [s.tolist() for s in ckpt.flat_state] == [
        pytest.approx(0.1),
        pytest.approx(0.2),
    ]
    assert [s.tolist() for s in ckpt.flat_eval_state] == [s.tolist() for s in ckpt.flat_state]
    assert len(ckpt.slots) == 1
    for got, want in zip(ckpt.slots[0], slots):
        np.testing.assert_array_equal(got, want)
    assert ckpt.history == {
        "train": {
            "metrics/loss": [(1, 2.5), (10, 1.25)],
            "training/learning_rate": [(1, 0.01), (10, 0.01)],
        },
        "eval": {"metrics/Accuracy": [(10, 0.75)]},
    }
    # The result round-trips again unchanged.
    again = read_trax_checkpoint(
        write_trax_loop_checkpoint(
            tmp_path / "again",
            ckpt.flat_weights,
            flat_state=ckpt.flat_state,
            step=ckpt.step,
            history=ckpt.history,
            input_signature=ckpt.input_signature,
        )
    )
    assert again.history == ckpt.history and again.slots is None


def test_written_pickle_has_trax_keys_and_only_allowed_globals(tmp_path):
    weights, _, history, signature = _example(np.random.default_rng(1))
    pkl = write_trax_loop_checkpoint(
        tmp_path / "model",
        weights,
        flat_state=[np.float32(0.1)],
        history=history,
        input_signature=signature,
    )
    data = read_pickle_bytes(Path(pkl))
    globals_ = pickle_globals(data)
    assert globals_ <= ALLOWED_GLOBALS, globals_ - ALLOWED_GLOBALS
    assert ("trax.shapes", "ShapeDtype") in globals_
    assert not any("retrax" in module or "jax" in module for module, _ in globals_)
    raw = load_trax_pickle(io.BytesIO(data))
    assert set(raw) == {
        "step",
        "flat_weights",
        "flat_state",
        "flat_eval_state",
        "history",
        "slots_per_task",
        "input_signature",
        "version_timestamp",
    }
    assert raw["flat_weights"] == 2 and raw["slots_per_task"] == 2 and raw["step"] == 0
    assert set(raw["history"]) == {"_values"}
    assert all(type(v).__name__ == "defaultdict" for v in raw["history"]["_values"].values())
    assert all(type(x) is np.ndarray for x in raw["flat_state"] + raw["flat_eval_state"])
    assert not (tmp_path / "model.opt_slots0.npy.gz").exists()


def test_written_pickle_loads_with_plain_pickle_and_a_fake_trax(tmp_path, monkeypatch):
    # What real Trax would do: an ordinary pickle.load resolving trax.shapes.ShapeDtype.
    class FakeShapeDtype:
        def __init__(self, shape, dtype=np.float32):
            self.shape, self.dtype = tuple(shape), dtype

    trax, shapes = types.ModuleType("trax"), types.ModuleType("trax.shapes")
    shapes.ShapeDtype = FakeShapeDtype
    trax.shapes = shapes
    monkeypatch.setitem(sys.modules, "trax", trax)
    monkeypatch.setitem(sys.modules, "trax.shapes", shapes)
    pkl = write_trax_loop_checkpoint(
        tmp_path / "m",
        [np.ones(3, np.float32)],
        input_signature=(ShapeDtype((2, 5), np.int32),),
    )
    with gzip.open(pkl, "rb") as f:
        d = pickle.load(f)
    (sig,) = d["input_signature"]
    assert type(sig) is FakeShapeDtype and sig.shape == (2, 5) and sig.dtype == np.int32


def test_inline_loop_checkpoint_is_one_file_that_trax_reads(tmp_path):
    weights, slots, history, signature = _example(np.random.default_rng(1))
    # Side files of an earlier, separate-files write are stale once the weights are inline.
    write_trax_loop_checkpoint(tmp_path / "model", weights, step=1, history=history,
                               input_signature=signature, flat_slots=slots)
    pkl = write_trax_loop_checkpoint(tmp_path / "model", weights, step=2, history=history,
                                     input_signature=signature, flat_slots=slots, inline=True)
    assert sorted(os.listdir(tmp_path)) == ["model.pkl.gz"]
    # What Trax's Loop.load_checkpoint and Layer.init_from_file look at: lists, not counts.
    with gzip.open(pkl, "rb") as f:
        raw = load_trax_pickle(f)
    assert isinstance(raw["flat_weights"], list) and len(raw["flat_weights"]) == 4
    assert isinstance(raw["slots_per_task"], list) and len(raw["slots_per_task"][0]) == 2
    ckpt = read_trax_checkpoint(pkl)
    assert ckpt.step == 2
    for got, want in zip(ckpt.flat_weights[:3], weights[:3]):
        np.testing.assert_array_equal(got, np.asarray(want))
    assert len(ckpt.slots) == 1
    for got, want in zip(ckpt.slots[0], slots):
        np.testing.assert_array_equal(got, want)


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    write_trax_loop_checkpoint(tmp_path / "model", [np.ones(2, np.float32)], step=1)
    first = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    write_trax_loop_checkpoint(tmp_path / "model", [np.zeros(2, np.float32)], step=2)
    assert sorted(os.listdir(tmp_path)) == ["model.pkl.gz", "model.weights.npy.gz"]
    assert read_trax_checkpoint(tmp_path / "model.pkl.gz").step == 2

    def failing_fsync(fd):
        raise OSError("disk on fire")

    # A failure mid-write removes its temp file and leaves the old checkpoint intact.
    write_trax_loop_checkpoint(tmp_path / "model", [np.ones(2, np.float32)], step=1)
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        write_trax_loop_checkpoint(tmp_path / "model", [np.zeros(2, np.float32)], step=3)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["model.pkl.gz", "model.weights.npy.gz"]
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == first


def test_unstorable_values_fail_before_writing(tmp_path):
    with pytest.raises(ValueError, match="dtype object"):
        write_trax_loop_checkpoint(tmp_path / "m", [np.array([None], dtype=object)])
    with pytest.raises(pickle.UnpicklingError):  # a non-Trax class Trax could not read
        write_trax_loop_checkpoint(tmp_path / "m", [], input_signature=TraxHistory())
    assert os.listdir(tmp_path) == []


def test_missing_files_raise_file_not_found(tmp_path):
    missing = tmp_path / "nope" / "model.pkl.gz"
    with pytest.raises(FileNotFoundError) as info:
        read_trax_checkpoint(missing)
    assert str(missing) in str(info.value)
    write_trax_loop_checkpoint(tmp_path / "model", [np.ones(2, np.float32)])
    os.remove(tmp_path / "model.weights.npy.gz")
    with pytest.raises(FileNotFoundError, match="model.weights.npy.gz"):
        read_trax_checkpoint(tmp_path / "model.pkl.gz")


@pytest.mark.parametrize(
    "url, package",
    [("gs://bucket/model.pkl.gz", "gcsfs"), ("s3://bucket/model.pkl.gz", "s3fs")],
)
def test_remote_protocol_without_backend_names_the_package(url, package):
    try:
        __import__(package)
    except ImportError:
        pass
    else:
        pytest.skip(f"{package} is installed")
    with pytest.raises(ImportError, match=f"pip install {package}"):
        read_trax_checkpoint(url)


def test_unknown_protocol_is_a_clear_error():
    with pytest.raises(ValueError, match="nosuchproto"):
        read_trax_checkpoint("nosuchproto://x/model.pkl.gz")


def test_fsspec_memory_filesystem_round_trip():
    import fsspec

    url = "memory://retrax-test/ckpt/model"
    try:
        write_trax_loop_checkpoint(url, [np.arange(3, dtype=np.float32)], step=7)
        ckpt = read_trax_checkpoint(url + ".pkl.gz")
        assert ckpt.step == 7
        np.testing.assert_array_equal(ckpt.flat_weights[0], np.arange(3, dtype=np.float32))
    finally:
        fsspec.filesystem("memory").rm("/retrax-test", recursive=True)
