"""Text-file sources (bad UTF-8, empty files, passes, positions) and the optional TFDS / HF ones."""

from __future__ import annotations

import json
import logging
import sys
import types

import numpy as np
import pytest

from retrax import data


@pytest.fixture
def corpus(tmp_path):
    files = {"a.txt": b"alpha\nbeta\n", "b.txt": b"", "c.txt": b"caf\xe9 bad\ngood\r\nlast",
             "d.txt": b"delta\n"}
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    return tmp_path


def test_text_lines_replaces_bad_utf8_and_skips_empty_files_counted(corpus, caplog):
    caplog.set_level(logging.WARNING, logger="retrax.data")
    stream = data.TextLines(str(corpus / "*.txt"))()
    assert list(stream) == ["alpha", "beta", "caf\ufffd bad", "good", "last", "delta"]
    assert stream.stats() == {"TextLines": {"files_read": 4, "empty_files": 1,
                                            "invalid_utf8_lines": 1}}
    assert f"skipped the empty file {corpus / 'b.txt'}" in caplog.text
    assert f"replaced the invalid UTF-8 bytes of line 1 of {corpus / 'c.txt'}" in caplog.text


def test_text_lines_strict_and_skip(corpus):
    with pytest.raises(ValueError, match=r"line 1 of .*c.txt is not valid UTF-8 \(invalid "
                                         r"continuation byte at byte 3: b'\\xe9 ba'\)"):
        list(data.TextLines(str(corpus / "*.txt"), errors="strict")())
    stream = data.TextLines(str(corpus / "c.txt"), errors="skip")()
    assert list(stream) == ["good", "last"]
    assert stream.stats()["TextLines"]["skipped_invalid_utf8_lines"] == 1
    with pytest.raises(ValueError, match="errors must be one of"):
        data.TextLines(str(corpus / "c.txt"), errors="ignore")


def test_text_documents(corpus):
    stream = data.TextDocuments([str(corpus / "d.txt"), str(corpus / "*.txt")])()
    assert list(stream) == ["delta\n", "alpha\nbeta\n", "caf\ufffd bad\ngood\r\nlast"]
    assert stream.stats() == {"TextDocuments": {"files_read": 4, "empty_files": 1,
                                                "invalid_utf8_files": 1}}


def test_missing_and_empty_sources(corpus, tmp_path):
    with pytest.raises(ValueError, match="no files match"):
        data.TextLines(str(corpus / "*.md"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.TextDocuments(str(corpus / "nope.txt"))
    with pytest.raises(data.EmptyStreamError, match=r"\[TextLines\] ended without yielding any "
                                                    r"example. TextLines: files_read=1, "
                                                    r"empty_files=1"):
        next(data.TextLines(str(corpus / "b.txt"))())
    with pytest.raises(data.EmptyStreamError, match="a whole pass over the 1 files"):
        next(data.TextLines(str(corpus / "b.txt"), repeat=True)())


def test_repeat_and_seeded_file_shuffle_per_pass(corpus):
    def first(n, **kw):
        stream = data.TextDocuments(str(corpus / "*.txt"), repeat=True, **kw)()
        return [next(stream)[:2] for _ in range(n)], stream

    plain, stream = first(7)
    assert plain == ["al", "ca", "de", "al", "ca", "de", "al"]
    assert stream.stats()["TextDocuments"]["passes"] == 2
    shuffled, _ = first(9, shuffle_files=True, seed=3)
    assert shuffled == first(9, shuffle_files=True, seed=3)[0]
    assert sorted(shuffled[:3]) == sorted(shuffled[3:6]) == ["al", "ca", "de"]
    assert shuffled[:3] != shuffled[3:6] or shuffled[3:6] != shuffled[6:9]


def test_text_lines_position_is_a_byte_offset(corpus):
    def make():
        return data.Serial(data.TextLines(str(corpus / "*.txt"), repeat=True, shuffle_files=True,
                                          seed=1))
    expected = [next(s) for s in [make()()] for _ in range(12)]
    for n in (1, 3, 5, 8):
        stream = make()()
        for _ in range(n):
            next(stream)
        saved = json.loads(json.dumps(stream.state_dict()))
        resumed = make()()
        resumed.load_state_dict(saved)
        assert [next(resumed) for _ in range(12 - n)] == expected[n:]
    assert {"offset", "lineno", "epoch", "file_pos", "fingerprint"} <= set(saved["nodes"][0])
    (corpus / "e.txt").write_text("new\n")
    with pytest.raises(ValueError, match=r"changed since the data position was saved \(4 files "
                                         r"then, 5 now\)"):
        make()().load_state_dict(saved)


def test_tfds_and_hf_need_their_packages(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"data.TFDS needs the tensorflow-datasets package.*"
                                          r"pip install 'retrax\[tfds\]'"):
        data.TFDS("mnist")
    with pytest.raises(ImportError, match=r"data.HFDataset needs the datasets package.*"
                                          r"pip install 'retrax\[hf\]'"):
        data.HFDataset("imdb")


class FakeHFDataset:
    """The part of datasets.Dataset that HFDataset uses (rows by index)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def test_hf_dataset_rows_keys_passes_and_positions(monkeypatch):
    rows = [{"text": f"t{i}", "ids": [i, i + 1]} for i in range(4)]
    calls = []
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda path, name, split, **kw: calls.append((path, name, split, kw)) or \
        FakeHFDataset(rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    stream = data.HFDataset("org/corpus", "cfg", split="validation", keys=["text", "ids"],
                            data_files="x.json")()
    first = next(stream)
    assert calls == [("org/corpus", "cfg", "validation", {"data_files": "x.json"})]
    assert first[0] == "t0" and first[1].tolist() == [0, 1]
    assert [x[0] for x in stream] == ["t1", "t2", "t3"]

    def make():
        return data.Serial(data.HFDataset(FakeHFDataset(rows), repeat=True, shuffle=True))
    expected = [next(s)["text"] for s in [make()()] for _ in range(10)]
    assert sorted(expected[:4]) == sorted(expected[4:8]) == ["t0", "t1", "t2", "t3"]
    s = make()()
    for _ in range(6):
        next(s)
    resumed = make()()
    resumed.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert [next(resumed)["text"] for _ in range(4)] == expected[6:]
    with pytest.raises(KeyError, match=r"no field\(s\) \['label'\]"):
        next(data.HFDataset(FakeHFDataset(rows), keys=["label"])())


def test_tfds_source_with_a_fake_library(monkeypatch):
    records = [{"text": f"r{i}".encode(), "label": np.int64(i)} for i in range(3)]
    loads = []
    fake = types.ModuleType("tensorflow_datasets")
    fake.ReadConfig = lambda shuffle_seed: ("seed", shuffle_seed)
    fake.load = lambda name, **kw: loads.append((name, kw)) or list(records)
    fake.as_numpy = lambda ds: ds
    fake.builder = lambda name, data_dir=None: types.SimpleNamespace(
        info=types.SimpleNamespace(splits={"train": 3, "test": 1}))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    train = data.Serial(data.TFDS("toy", keys=("text", "label")),
                        data.Tokenize(keys=[0], vocab_type="char"))()
    got = [next(train) for _ in range(5)]  # The training split repeats.
    assert [int(x[1]) for x in got] == [0, 1, 2, 0, 1]
    assert got[0][0].tolist() == [ord("r") + 2, ord("0") + 2]
    assert loads[0] == ("toy", {"split": "train", "data_dir": None, "shuffle_files": True,
                                "read_config": ("seed", 0)})
    assert loads[1][1]["read_config"] == ("seed", 1)  # A new file order each pass.
    evals = data.TFDS("toy", keys=("label",), train=False)()
    assert [int(x[0]) for x in evals] == [0, 1, 2]
    assert loads[-1][1]["split"] == "test"  # No validation split: test.
    assert data.TFDS("toy", train=False, eval_holdout_size=2).split() == "train[:2]"
