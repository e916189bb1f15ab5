"""What loading promises under faults: damaged, hostile and mismatched checkpoints.

Every file that cannot be loaded raises ``retrax.checkpoints.CheckpointError``
(a ``ValueError``) whose message names the file; nothing in a file runs code,
and no file makes retrax allocate more than ``retrax.io.expansion_limit``
allows. A checkpoint of another model is refused with the layer, the weight and
both shapes (or both config values) named. Every hostile input is made here.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

import retrax as trax
import retrax.io
from retrax import checkpoints, models
from retrax import layers as tl
from retrax.checkpoints import CheckpointError
from retrax.compat import safe_unpickle, trax_pickle
from retrax.compat.trax_pickle import (
    TraxPickleError,
    load_trax_pickle,
    read_trax_checkpoint,
    write_trax_loop_checkpoint,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "trax"
SEED = FIXTURES / "trax-1.4.1" / "transformerlm_seed"
LOOP = FIXTURES / "trax-1.4.1" / "transformerlm_seed_loop_ckpt"
SEED_CONFIG = dict(d_model=32, d_ff=128, n_layers=2, vocab_size=32)
NP_RECONSTRUCT = np.zeros(0).__reduce__()[0]


def sig(*shape, dtype=np.float32):
    return trax.shapes.ShapeDtype(shape, dtype)


def small_model():
    return tl.Serial(tl.Dense(4), tl.Relu(), tl.Dense(3))


def flat(tree):
    return [np.asarray(x) for x in tl.flatten_weights_and_state(tree, ())[0]]


# -- makers of damaged and hostile files ------------------------------------------


def native_bytes(tmp: Path) -> bytes:
    """A valid native checkpoint of ``small_model()`` (weights (2, 4), (4,), (4, 3), (3,))."""
    model = small_model()
    model.init(sig(1, 2))
    path = tmp / "good.safetensors"
    model.save_to_file(str(path), input_signature=sig(1, 2))
    return path.read_bytes()


def split_native(data: bytes) -> tuple[dict, dict, bytes]:
    """(safetensors header, retrax metadata, tensor bytes) of a native checkpoint."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return header, json.loads(header["__metadata__"]["retrax"]), data[8 + n:]


def edited_native(tmp: Path, edit) -> bytes:
    """A valid native checkpoint whose (header, meta) ``edit`` changes in place.

    The metadata is written back unless ``edit`` replaced ``__metadata__`` itself.
    """
    header, meta, body = split_native(native_bytes(tmp))
    metadata = header["__metadata__"]
    edit(header, meta, body)
    if header.get("__metadata__") is metadata:
        header["__metadata__"] = {"retrax": json.dumps(meta)}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def trax_names(data: bytes) -> bytes:
    """A protocol 0-2 pickle as Trax under NumPy 1 writes it: ``numpy.core``, ``trax.shapes``.

    (Those protocols name globals as text lines, so the names can be swapped.)
    """
    return (data.replace(b"numpy._core", b"numpy.core")
            .replace(b"retrax.shapes\nShapeDtype", b"trax.shapes\nShapeDtype"))


def trax_pickle_file(obj, protocol=5) -> bytes:
    """``obj`` gzip-pickled with Trax's global names (``trax.shapes.ShapeDtype``)."""
    if protocol <= 2:
        return gz(trax_names(pickle.dumps(obj, protocol=protocol)))
    buffer = io.BytesIO()
    trax_pickle.TraxPickler(buffer, protocol=protocol).dump(obj)
    return gz(buffer.getvalue())


def deep_list_pickle(depth: int) -> bytes:
    """``{'flat_weights': [[[...]]]}`` nested ``depth`` deep, written opcode by opcode."""
    key = b"flat_weights"
    return (b"\x80\x02}" + b"X" + struct.pack("<I", len(key)) + key
            + b"]" * depth + b"a" * (depth - 1) + b"s.")


def self_referencing():
    loop: list = []
    loop.append(loop)
    return {"flat_weights": [], "flat_state": loop}


def shared_bomb():
    tree: list = [np.zeros(1, np.float32)]
    for _ in range(60):  # 2**60 paths to one leaf; a few hundred bytes pickled
        tree = [tree, tree]
    return {"flat_weights": [], "slots_per_task": [tree]}


class Reduce:
    """Pickles as ``fn(*args)``: how a hostile file asks the unpickler for a call."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def npy_record(header: dict, data: bytes = b"") -> bytes:
    text = repr(header).encode("latin-1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def loop_checkpoint(tmp: Path, weights_stream: bytes) -> Path:
    """A Loop-layout checkpoint whose ``model.weights.npy.gz`` is ``weights_stream``."""
    path = write_trax_loop_checkpoint(tmp / "model", [np.ones(2, np.float32)])
    (tmp / "model.weights.npy.gz").write_bytes(weights_stream)
    return Path(path)


def set_attribute_pickle() -> bytes:
    # GLOBAL jax._src.array._reconstruct_array, then BUILD (None, {'__doc__': 'pwned'}):
    # a BUILD on a function object sets its attributes for the rest of the process.
    return (b"\x80\x02cjax._src.array\n_reconstruct_array\nN}X\x07\x00\x00\x00__doc__"
            b"X\x05\x00\x00\x00pwneds\x86b.")


def _codecs_call(text, encoding):
    # GLOBAL _codecs.encode with a chosen encoding, as {'flat_weights': [result]}.
    return (b"\x80\x02}X\x0c\x00\x00\x00flat_weights]c_codecs\nencode\n"
            + b"X" + struct.pack("<I", len(text)) + text.encode()
            + b"X" + struct.pack("<I", len(encoding)) + encoding.encode() + b"\x86Ras.")


# name -> (file name, maker(tmp) -> bytes). Each is loaded with Layer.init_from_file.
def _truncated_fixture(tmp):
    data = (SEED / "model.pkl.gz").read_bytes()
    return data[: len(data) // 2]


def _crc_flipped(tmp):
    data = bytearray(gz(pickle.dumps({"flat_weights": [np.ones(3, np.float32)]})))
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    return bytes(data)


def _truncated_safetensors(tmp):
    data = native_bytes(tmp)
    return data[:-7]


def _huge_tensor(header, meta, body):
    # A header that claims a terabyte for the first weight (offsets and shape agree).
    header["w/00000"]["shape"] = [2**40, 1]
    header["w/00000"]["data_offsets"] = [0, 2**42]
    meta["weights"][0]["shape"] = [2**40, 1]


def _offsets_past_end(header, meta, body):
    start, _ = header["w/00000"]["data_offsets"]
    header["w/00000"]["data_offsets"] = [start, start + 10**6]


def _overlapping_tensors(header, meta, body):
    # Same size, overlapping the next tensor: safetensors' own check refuses it.
    a, b = header["w/00001"]["data_offsets"]
    header["w/00001"]["data_offsets"] = [a - 4, b - 4]


def _meta(edit):
    def wrapped(header, meta, body):
        edit(meta)
    return wrapped


def _transposed_shape(meta):
    meta["weights"][0]["shape"] = meta["weights"][0]["shape"][::-1]  # (2, 4) -> (4, 2)


def _wrong_dtype(meta):
    meta["weights"][0]["dtype"] = "int32"


def _claims_bfloat16(meta):
    meta["weights"][0]["dtype"] = "bfloat16"


def _missing_tensor(meta):
    meta["weights"].append({"path": "9", "shape": [1], "dtype": "float32"})


def _entry_not_object(meta):
    meta["weights"][1] = "w/00001"


def _shape_not_list(meta):
    meta["weights"][0]["shape"] = "2x4"


def _version_string(meta):
    meta["format_version"] = "1"


def _version_missing(meta):
    del meta["format_version"]


def _no_weights(meta):
    del meta["weights"]


def _weights_not_list(meta):
    meta["weights"] = {"w/00000": [2, 4]}


def _bad_signature(meta):
    meta["input_signature"] = {"shape": [1, "two"], "dtype": "float32"}


def _object_signature(meta):
    meta["input_signature"] = {"shape": [1, 2], "dtype": "object"}


def _model_not_object(meta):
    meta["model"] = "TransformerLM"


def _not_retrax(header, meta, body):
    header["__metadata__"] = {"format": "pt"}


def _metadata_not_json(header, meta, body):
    header["__metadata__"] = {"retrax": "{not json"}


NATIVE_FAULTS = {
    "random bytes": lambda tmp: np.random.default_rng(0).bytes(4096),
    "empty file": lambda tmp: b"",
    "header length past the end": lambda tmp: struct.pack("<Q", 10**9) + b"{}",
    "header not JSON": lambda tmp: struct.pack("<Q", 9) + b"{not json",
    "header not UTF-8": lambda tmp: struct.pack("<Q", 4) + b"\xff\xfe{}",
    "header a JSON list": lambda tmp: struct.pack("<Q", 6) + b"[1, 2]",
    "header nested 100000 deep": lambda tmp: struct.pack("<Q", 100000) + b"[" * 100000,
    "metadata not JSON": lambda tmp: edited_native(tmp, _metadata_not_json),
    "safetensors without retrax metadata": lambda tmp: edited_native(tmp, _not_retrax),
    "metadata without 'weights'": lambda tmp: edited_native(tmp, _meta(_no_weights)),
    "'weights' not a list": lambda tmp: edited_native(tmp, _meta(_weights_not_list)),
    "weights entry not an object": lambda tmp: edited_native(tmp, _meta(_entry_not_object)),
    "shape entry a string": lambda tmp: edited_native(tmp, _meta(_shape_not_list)),
    "format_version a string": lambda tmp: edited_native(tmp, _meta(_version_string)),
    "format_version missing": lambda tmp: edited_native(tmp, _meta(_version_missing)),
    "metadata shape != tensor shape (same size)": lambda tmp: edited_native(tmp, _meta(_transposed_shape)),
    "metadata dtype != tensor dtype": lambda tmp: edited_native(tmp, _meta(_wrong_dtype)),
    "metadata says bfloat16 for a float32 tensor": lambda tmp: edited_native(tmp, _meta(_claims_bfloat16)),
    "metadata names a missing tensor": lambda tmp: edited_native(tmp, _meta(_missing_tensor)),
    "input_signature with a non-int dim": lambda tmp: edited_native(tmp, _meta(_bad_signature)),
    "input_signature of dtype object": lambda tmp: edited_native(tmp, _meta(_object_signature)),
    "'model' not an object": lambda tmp: edited_native(tmp, _meta(_model_not_object)),
    "tensor offsets past the end": lambda tmp: edited_native(tmp, _offsets_past_end),
    "tensors overlapping (raw SafetensorError)": lambda tmp: edited_native(tmp, _overlapping_tensors),
    "header claims a 4 TB tensor": lambda tmp: edited_native(tmp, _huge_tensor),
    "truncated safetensors": _truncated_safetensors,
}

TRAX_FAULTS = {
    "not gzip (a plain pickle named .pkl.gz)": lambda tmp: pickle.dumps(
        {"flat_weights": [np.ones(2)]}),
    "empty .pkl.gz": lambda tmp: b"",
    "truncated .pkl.gz (real fixture cut in half)": _truncated_fixture,
    "gzip CRC mismatch": _crc_flipped,
    "gzip of random bytes": lambda tmp: gz(np.random.default_rng(1).bytes(2048)),
    "pickle of a list, not a dict": lambda tmp: trax_pickle_file([np.ones(2)]),
    "pickle nested 100000 deep": lambda tmp: gz(deep_list_pickle(100_000)),
    "self-referencing pickle": lambda tmp: trax_pickle_file(self_referencing()),
    "2**60 shared references (billion laughs)": lambda tmp: trax_pickle_file(shared_bomb()),
    "string array": lambda tmp: trax_pickle_file({"flat_weights": [np.array(["a", "bc"])]}),
    "bytes array": lambda tmp: trax_pickle_file({"flat_weights": [np.array([b"a"])]}),
    "structured array": lambda tmp: trax_pickle_file(
        {"flat_weights": [np.zeros(2, dtype=[("a", "f4"), ("b", "i4")])]}),
    "datetime array": lambda tmp: trax_pickle_file(
        {"flat_weights": [np.array(["2020-01-01"], dtype="M8[D]")]}),
    "object array": lambda tmp: trax_pickle_file(
        {"flat_weights": [np.array([1, "a"], dtype=object)]}),
    "string in flat_weights": lambda tmp: trax_pickle_file({"flat_weights": ["abc"]}),
    "None in flat_weights": lambda tmp: trax_pickle_file({"flat_weights": [None]}),
    "step not an int": lambda tmp: trax_pickle_file({"flat_weights": [], "step": "ten"}),
    "input_signature a string": lambda tmp: trax_pickle_file(
        {"flat_weights": [], "flat_state": [], "input_signature": "(1, 2)"}),
    "_reconstruct asking for 1 TB": lambda tmp: trax_pickle_file(
        {"flat_weights": [Reduce(NP_RECONSTRUCT, np.ndarray, (2**40,), b"b")]}),
    "numpy.ndarray((2**40,)) called directly": lambda tmp: trax_pickle_file(
        {"flat_weights": [Reduce(np.ndarray, (2**40,), "f8")]}),
    "BUILD setting an attribute on an allowed function": lambda tmp: gz(
        set_attribute_pickle()),
    "_codecs.encode with utf-8": lambda tmp: gz(_codecs_call("abc", "utf-8")),
    "os.system payload": lambda tmp: trax_pickle_file(
        {"flat_weights": [], "x": Reduce(__import__("os").system, "true")}, protocol=2),
}

# Loop layout: the .pkl.gz is fine, the weights file next to it is not.
LOOP_FAULTS = {
    "truncated model.weights.npy.gz": lambda tmp: (LOOP / "model.weights.npy.gz").read_bytes()[
        :100_000],
    "model.weights.npy.gz not gzip": lambda tmp: npy_record(
        {"descr": "<f4", "fortran_order": False, "shape": (2,)}, b"\0" * 8),
    "npy record claiming 4 TB": lambda tmp: gz(npy_record(
        {"descr": "<f4", "fortran_order": False, "shape": (2**40,)})),
    "npy record shorter than its header says": lambda tmp: gz(npy_record(
        {"descr": "<f4", "fortran_order": False, "shape": (8,)}, b"\0" * 16)),
    "npy record of dtype object": lambda tmp: gz(npy_record(
        {"descr": "|O", "fortran_order": False, "shape": (1,)}, b"\0" * 8)),
    "npy record of strings": lambda tmp: gz(npy_record(
        {"descr": "<U2", "fortran_order": False, "shape": (1,)}, b"a\0\0\0b\0\0\0")),
    "npy record with a bad header": lambda tmp: gz(b"\x93NUMPY\x01\x00\x06\x00{bad}\n"),
    "npy stream of random bytes": lambda tmp: gz(np.random.default_rng(2).bytes(512)),
}


def make_fault(kind: str, name: str, tmp: Path) -> Path:
    """Writes fault ``name`` of ``kind`` under ``tmp``; returns the path to load."""
    if kind == "native":
        path = tmp / "model.safetensors"
        path.write_bytes(NATIVE_FAULTS[name](tmp))
        return path
    if kind == "trax":
        path = tmp / "model.pkl.gz"
        path.write_bytes(TRAX_FAULTS[name](tmp))
        return path
    return loop_checkpoint(tmp, LOOP_FAULTS[name](tmp))


ALL_FAULTS = ([("native", n) for n in NATIVE_FAULTS] + [("trax", n) for n in TRAX_FAULTS]
              + [("loop", n) for n in LOOP_FAULTS])


@pytest.mark.parametrize("kind, name", ALL_FAULTS, ids=[f"{k}: {n}" for k, n in ALL_FAULTS])
def test_every_fault_is_one_error_naming_the_file(tmp_path, kind, name):
    path = make_fault(kind, name, tmp_path)
    with pytest.raises(CheckpointError) as info:
        small_model().init_from_file(str(path), weights_only=True, input_signature=sig(1, 2))
    assert isinstance(info.value, ValueError)
    # The file at fault is named: the weights file for a broken Loop side file.
    named = path.with_name("model.weights.npy.gz") if kind == "loop" else path
    assert str(named) in str(info.value), str(info.value)
    # The same error comes from the readers that need no model.
    with pytest.raises(CheckpointError):
        checkpoints.read_any(str(path))


def test_checkpoint_error_is_defined_once():
    assert checkpoints.CheckpointError is retrax.io.CheckpointError
    assert issubclass(CheckpointError, ValueError)
    # Errors from inside a pickle are also UnpicklingErrors, for code written against pickle.
    assert issubclass(TraxPickleError, CheckpointError)
    assert issubclass(TraxPickleError, pickle.UnpicklingError)


# -- the messages say what was wrong ------------------------------------------------


@pytest.mark.parametrize("kind, name, expected", [
    ("native", "random bytes", "is neither a retrax checkpoint (safetensors) nor a Trax"),
    ("native", "header nested 100000 deep", "its safetensors header nests JSON too deeply"),
    ("native", "metadata without 'weights'",
     "its metadata field 'weights' is missing, where retrax writes a list"),
    ("native", "format_version a string",
     "its metadata field 'format_version' is '1', where retrax writes a positive integer"),
    ("native", "metadata shape != tensor shape (same size)",
     "metadata entry weights[0] says shape (4, 2), but tensor 'w/00000' has shape [2, 4]"),
    ("native", "metadata dtype != tensor dtype",
     "metadata entry weights[0] says dtype int32 (stored as I32), but tensor 'w/00000' is "
     "stored as 'F32'"),
    ("native", "header claims a 4 TB tensor",
     "tensor 'w/00000' (shape (1099511627776, 1), F32) needs 4398046511104 bytes, but its "
     "data_offsets [0, 4398046511104] do not lie within the 108 bytes of tensor data"),
    ("native", "truncated safetensors", "tensor 'w/00003' (shape (3,), F32) needs 12 bytes, "
     "but its data_offsets [96, 108] do not lie within the 101 bytes of tensor data in the "
     "file (is it truncated?)"),
    ("native", "tensors overlapping (raw SafetensorError)",
     "safetensors cannot read its tensors (SafetensorError"),
    ("trax", "not gzip (a plain pickle named .pkl.gz)", "it is not gzip data (it starts with"),
    ("trax", "truncated .pkl.gz (real fixture cut in half)",
     "its gzip stream is damaged or truncated (EOFError"),
    ("trax", "pickle nested 100000 deep", "the pickle nests containers more than 100 deep"),
    ("trax", "self-referencing pickle", "the pickle holds a list that contains itself"),
    ("trax", "2**60 shared references (billion laughs)",
     "the pickle expands to more than 10000000 objects"),
    ("trax", "string array", "the pickle asks for dtype <U2, which is not allowed: a "
                             "checkpoint may only hold numeric arrays (bool, int, uint, float, "
                             "complex)"),
    ("trax", "structured array", "the pickle asks for dtype |V8, which is not allowed"),
    ("trax", "_reconstruct asking for 1 TB",
     "an array of shape (1099511627776,) and dtype int8 asks for 1099511627776 bytes"),
    ("trax", "numpy.ndarray((2**40,)) called directly",
     "the pickle calls numpy.ndarray(...) directly, which would allocate an array of whatever "
     "size it names"),
    ("trax", "BUILD setting an attribute on an allowed function",
     "the pickle tries to set attribute '__doc__' on jax array rebuild"),
    ("trax", "_codecs.encode with utf-8",
     "_codecs.encode is only allowed as _codecs.encode(<str>, 'latin1')"),
    ("trax", "os.system payload", "refusing to load global 'posix.system'"),
    ("loop", "truncated model.weights.npy.gz", "its gzip stream is damaged or truncated"),
    ("loop", "npy record claiming 4 TB",
     "array 0 (shape (1099511627776,), dtype float32) asks for 4398046511104 bytes"),
    ("loop", "npy record shorter than its header says",
     "it ends inside array 0 (shape (8,), 16 of 32 bytes present), so it is truncated"),
    ("loop", "npy record of strings", "array 0 has dtype <U2, which is not allowed"),
])
def test_messages_say_what_is_wrong(tmp_path, kind, name, expected):
    path = make_fault(kind, name, tmp_path)
    with pytest.raises(CheckpointError) as info:
        checkpoints.read_any(str(path))
    assert expected in str(info.value)


def test_hostile_calls_change_nothing_and_run_nothing(tmp_path):
    marker = tmp_path / "pwned"
    doc = safe_unpickle.rebuild_jax_array.__doc__
    for data in (set_attribute_pickle(),
                 pickle.dumps(Reduce(__import__("os").system, f"touch {marker}"), protocol=0)):
        with pytest.raises(TraxPickleError):
            load_trax_pickle(io.BytesIO(data))
    assert safe_unpickle.rebuild_jax_array.__doc__ == doc
    assert not marker.exists()
    with pytest.raises(TraxPickleError, match="only allowed with no arguments"):
        load_trax_pickle(io.BytesIO(b"\x80\x02c__builtin__\nbytes\nK\x05\x85R."))


# -- genuine old pickles still load -------------------------------------------------


def _old_style_arrays():
    return [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros(0, np.int64),
            np.array([True, False]), np.asfortranarray(np.arange(6.0).reshape(2, 3)),
            np.array(-3, np.int8), np.arange(4, dtype=">u2"), np.array([1 + 2j], np.complex64)]


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_protocol_0_to_2_pickles_with_numpy_1_names_load(tmp_path, protocol):
    arrays = _old_style_arrays()
    payload = {"flat_weights": arrays, "flat_state": [np.float64(2.5), np.int32(7)],
               "input_signature": trax.shapes.ShapeDtype((1, 2), np.int32)}
    original = pickle.dumps(payload, protocol=protocol)
    data = trax_names(original)
    assert b"c_codecs\nencode\n" in data and b"numpy.core.multiarray\n" in data
    assert b"numpy._core" not in data and b"trax.shapes\nShapeDtype" in data
    path = tmp_path / "old.pkl.gz"
    path.write_bytes(gz(data))
    ckpt = read_trax_checkpoint(path)
    # What plain pickle makes of the same arrays is the reference (it drops a
    # big-endian byte order under these protocols; so must we, no more).
    reference = pickle.loads(original)["flat_weights"]
    assert len(ckpt.flat_weights) == len(arrays) == len(reference)
    for got, want, ref in zip(ckpt.flat_weights, arrays, reference):
        assert got.dtype == ref.dtype and got.shape == want.shape
        assert got.flags.f_contiguous == ref.flags.f_contiguous
        np.testing.assert_array_equal(got, want)
    assert ckpt.flat_state == [2.5, 7] and ckpt.flat_state[1].dtype == np.int32
    assert ckpt.input_signature == trax.shapes.ShapeDtype((1, 2), np.int32)


def test_real_fixtures_still_load_with_their_values():
    ckpt = read_trax_checkpoint(LOOP / "model.pkl.gz")
    # NumPy's own reader on the same stream (np.load reads one record at a time).
    with gzip.open(LOOP / "model.weights.npy.gz") as f:
        expected = [np.load(f) for _ in range(38)]
        assert f.read() == b""
    assert len(ckpt.flat_weights) == 38
    for got, want in zip(ckpt.flat_weights, expected):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert ckpt.step == 1000 and ckpt.input_signature == (
        trax.shapes.ShapeDtype((16, 10), np.int64),)


# -- size limits ----------------------------------------------------------------------


def test_all_zero_weights_of_megabytes_load_with_the_default_limit(tmp_path):
    zeros = [np.zeros((1024, 1024), np.float32), np.zeros((1024, 1024), np.float32)]  # 8 MB
    path = write_trax_loop_checkpoint(tmp_path / "z", zeros)
    side = tmp_path / "z.weights.npy.gz"
    assert side.stat().st_size * retrax.io.MAX_EXPANSION < 8 * 2**20  # the ratio alone refuses
    got = read_trax_checkpoint(path).flat_weights
    assert [w.shape for w in got] == [(1024, 1024)] * 2 and not any(w.any() for w in got)
    # The same zeros inline in a save_to_file-style pickle.
    inline = tmp_path / "inline.pkl.gz"
    inline.write_bytes(trax_pickle_file({"flat_weights": zeros, "flat_state": []}))
    assert not any(w.any() for w in read_trax_checkpoint(inline).flat_weights)


def test_expansion_limit_refuses_bombs_and_can_be_raised(tmp_path, monkeypatch):
    assert retrax.io.expansion_limit(1000) == max(1000 * retrax.io.MAX_EXPANSION,
                                                  retrax.io.EXPANSION_FLOOR)
    monkeypatch.setattr(retrax.io, "EXPANSION_FLOOR", 2**20)
    assert retrax.io.expansion_limit(1000, max_expansion=3) == 2**20
    assert retrax.io.expansion_limit(10**6, max_expansion=3) == 3 * 10**6
    weights = [np.zeros(2**20, np.float32)]  # 4 MiB of zeros: a few KB gzip'd
    pkl = tmp_path / "bomb.pkl.gz"
    pkl.write_bytes(trax_pickle_file({"flat_weights": weights}))
    with pytest.raises(CheckpointError, match="refused as a likely decompression bomb") as info:
        read_trax_checkpoint(pkl)
    assert str(pkl) in str(info.value) and f"more than {2**20} bytes" in str(info.value)
    loop = write_trax_loop_checkpoint(tmp_path / "loop", weights)
    with pytest.raises(CheckpointError, match="refused as a likely memory bomb"):
        read_trax_checkpoint(loop)
    # A genuine file loads with a larger ratio, by keyword or by the module setting.
    np.testing.assert_array_equal(
        read_trax_checkpoint(pkl, max_expansion=10**4).flat_weights[0], weights[0])
    np.testing.assert_array_equal(
        checkpoints.read_any(loop, max_expansion=10**4)["flat_weights"][0], weights[0])
    monkeypatch.setattr(retrax.io, "MAX_EXPANSION", 10**4)
    np.testing.assert_array_equal(read_trax_checkpoint(loop).flat_weights[0], weights[0])
    with pytest.raises(ValueError, match="max_expansion must be a positive number"):
        retrax.io.expansion_limit(10, max_expansion=0)


def test_a_file_signature_that_would_make_huge_weights_is_refused_before_init(tmp_path):
    # The Trax file says the input has 2**40 features: a Dense kernel of 16 TB.
    path = tmp_path / "model.pkl.gz"
    path.write_bytes(trax_pickle_file({
        "flat_weights": [np.ones((2, 4), np.float32), np.ones(4, np.float32),
                         np.ones((4, 3), np.float32), np.ones(3, np.float32)],
        "flat_state": [], "input_signature": trax.shapes.ShapeDtype((1, 2**40))}))
    model = small_model()
    with pytest.raises(CheckpointError) as info:
        model.init_from_file(str(path), weights_only=True)
    assert str(info.value).startswith(
        f"{path} stores an input signature of shape (1, 1099511627776) and dtype float32, an "
        f"input of 4398046511104 bytes, more than the {2**28} bytes a file of "
        f"{path.stat().st_size} bytes may expand to")
    assert "Pass input_signature=trax.shapes.ShapeDtype(...)" in str(info.value)
    assert not model.initialized
    # A signature from the caller is trusted, and the weights then load.
    weights, _ = model.init_from_file(str(path), weights_only=True, input_signature=sig(1, 2))
    assert [w.tolist() for w in flat(weights)] == [np.ones(s).tolist()
                                                   for s in ((2, 4), (4,), (4, 3), (3,))]


# -- mismatches name the layer and the weight ---------------------------------------


def nested_model(width=5, branch=3):
    return tl.Serial(tl.Dense(4), tl.Serial(tl.Relu(), tl.Dense(width)),
                     tl.Branch(tl.Dense(2), tl.Dense(branch)))


def test_shape_mismatch_names_the_layer_path_and_the_weight(tmp_path):
    model = nested_model()
    model.init(sig(1, 3))
    path = tmp_path / "m.safetensors"
    model.save_to_file(str(path), input_signature=sig(1, 3))
    with pytest.raises(CheckpointError) as info:
        nested_model(width=6).init_from_file(str(path))
    assert str(info.value) == (
        f"{path} does not fit Serial_out2: Serial_out2[1] > Serial[1] > Dense_6, weights[0] "
        f"has shape (4, 5) in the checkpoint but the model expects (4, 6) (weight array 2 of "
        f"8). Build the model with the configuration the checkpoint was trained with.")
    # Inside Branch, the path gives the branch index (as layer errors do).
    with pytest.raises(CheckpointError, match=r"Serial_out2\[2\] > Branch_out2\[1\] > "
                                              r"Dense_7, weights\[0\] has shape \(5, 3\) in "
                                              r"the checkpoint but the model expects \(5, 7\)"):
        nested_model(branch=7).init_from_file(str(path))


def test_count_mismatch_names_where_the_models_part(tmp_path):
    model = tl.Serial(tl.Dense(4), tl.Dense(3))
    model.init(sig(1, 2))
    path = tmp_path / "m.safetensors"
    model.save_to_file(str(path), input_signature=sig(1, 2))
    longer = tl.Serial(tl.Dense(4), tl.Dense(3), tl.LayerNorm())
    with pytest.raises(CheckpointError) as info:
        longer.init_from_file(str(path))
    assert str(info.value) == (
        f"{path} holds 4 weight arrays but Serial needs 6. The arrays agree up to "
        f"Serial[2] > LayerNorm, weights[0], the first the checkpoint has no array for. Build "
        f"the model with the configuration the checkpoint was trained with.")


def test_trax_checkpoint_into_another_config_names_the_layer():
    model = trax.models.TransformerLM(**dict(SEED_CONFIG, d_ff=64), mode="eval")
    with pytest.raises(CheckpointError) as info:
        model.init_from_file(str(SEED / "model.pkl.gz"), weights_only=True,
                             input_signature=sig(1, 12, dtype=np.int32))
    message = str(info.value)
    # (Residual is a Serial around a Branch; the path reads as LayerError's paths do.)
    assert message == (
        f"{SEED / 'model.pkl.gz'} does not fit Serial: Serial[5] > Serial[0] > Branch_out2[1] > "
        f"Serial[1] > Dense_64, weights[0] has shape (32, 128) in the checkpoint but the model "
        f"expects (32, 64) (weight array 14 of 38). Build the model with the configuration "
        f"the checkpoint was trained with.")


def tiny_lm(**overrides):
    config = dict(vocab_size=16, d_model=8, d_ff=16, n_layers=1, n_heads=2, max_len=32)
    config.update(overrides)
    return trax.models.TransformerLM(**config, mode="eval")


def test_same_shapes_other_config_is_refused_with_both_values(tmp_path):
    model = tiny_lm()
    model.init(sig(1, 4, dtype=np.int32))
    path = tmp_path / "lm.safetensors"
    model.save_to_file(str(path), weights_only=True, input_signature=sig(1, 4, dtype=np.int32))
    other = tiny_lm(n_heads=4)
    other_shapes = tl.flatten_weights_and_state(
        other.weights_and_state_signature(sig(1, 4, dtype=np.int32))[0], ())[0]
    assert [s.shape for s in other_shapes] == [w.shape for w in flat(model.weights)]
    with pytest.raises(CheckpointError) as info:
        other.init_from_file(str(path), weights_only=True)
    assert str(info.value).startswith(
        f"{path} was saved from a TransformerLM with another configuration: n_heads=2 in the "
        f"checkpoint but n_heads=4 in the model. Its weights would load into the wrong "
        f"computation. Build the model from the checkpoint's own config with "
        f"retrax.models.from_config(")
    assert "check_config=False" in str(info.value)
    # The escape hatch loads it; training-only settings may differ freely.
    weights, _ = checkpoints.load_layer(other, str(path), weights_only=True, check_config=False)
    for a, b in zip(flat(weights), flat(model.weights)):
        np.testing.assert_array_equal(a, b)
    relaxed = tiny_lm(dropout=0.3, max_inference_length=64)
    weights, _ = relaxed.init_from_file(str(path), weights_only=True)
    for a, b in zip(flat(weights), flat(model.weights)):
        np.testing.assert_array_equal(a, b)


def test_config_compares_recorded_and_default_arguments(tmp_path):
    # A config recorded by the CLI holds only the arguments given; the rest are defaults.
    model = tiny_lm(n_heads=8)
    model.init(sig(1, 4, dtype=np.int32))
    kwargs = models.config_of(model)["kwargs"]
    del kwargs["n_heads"]  # the default of TransformerLM is 8
    models.set_config(model, {"name": "TransformerLM", "kwargs": kwargs})
    path = tmp_path / "lm.safetensors"
    model.save_to_file(str(path), weights_only=True, input_signature=sig(1, 4, dtype=np.int32))
    tiny_lm(n_heads=8).init_from_file(str(path), weights_only=True)  # same config: loads
    with pytest.raises(CheckpointError, match="n_heads=8 in the checkpoint but n_heads=2 in "
                                              "the model"):
        tiny_lm(n_heads=2).init_from_file(str(path), weights_only=True)
    named = tiny_lm()
    models.set_config(named, {"name": "TransformerDecoder", "kwargs": {}})
    with pytest.raises(CheckpointError, match="was saved from a TransformerLM model, but it is "
                                              "being loaded into a TransformerDecoder"):
        named.init_from_file(str(path), weights_only=True)
