"""Loop behaviours Trax programs rely on: CountAndSkip counters, summary writers per run,
the error for a checkpoint of another model (issue 16)."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

import retrax as trax
from retrax import data
from retrax import layers as tl
from retrax.data import counters
from retrax.io import CheckpointError
from retrax.supervised import training
from retrax.supervised.loop_checkpoints import ModelMismatchError
from retrax.supervised.streams import Stream


def numbered_batches():
    """Batch i holds the value i everywhere (so a batch says where the stream is)."""
    i = 0
    while True:
        x = np.full((4, 2), i, np.float32)
        yield x, x[:, :1], np.ones((4, 1), np.float32)
        i += 1


def counted(name):
    counters.data_counters.pop(name, None)
    return data.Serial(lambda _: numbered_batches(), data.CountAndSkip(name))()


class CounterLog(training.Loop):
    """Records data_counters at every eval step (eval_at: every step)."""

    def run_evals(self, summary_writers=None):
        self.seen_counts.append((self.step, counters.data_counters.get("t2_train")))
        super().run_evals(summary_writers)


def test_counting_aside_counts_when_added():
    stream = counted("t2_aside")
    with counters.counting_aside() as drawn:
        first = next(stream)
        second = next(stream)
    assert counters.data_counters.get("t2_aside") is None
    assert drawn == {"t2_aside": 2}
    counters.add_counts(drawn)
    assert counters.data_counters["t2_aside"] == 2
    assert (first[0][0, 0], second[0][0, 0]) == (0.0, 1.0)
    # A new stream skips what was counted, aside or not.
    assert next(counted_again("t2_aside"))[0][0, 0] == 2.0


def counted_again(name):
    return data.Serial(lambda _: numbered_batches(), data.CountAndSkip(name))()


def test_stream_draws_ahead_only_when_asked():
    it = counted("t2_stream")
    stream = Stream(it, prefetch=True)
    assert stream.next()[0][0, 0] == 0.0  # batch 1 is drawn meanwhile, counted aside
    assert stream.next(ahead=False)[0][0, 0] == 1.0
    assert counters.data_counters["t2_stream"] == 2
    assert next(it)[0][0, 0] == 2.0  # nothing was drawn after the second batch


def test_counters_count_batches_trained_on_not_prefetched(tmp_path):
    stream = counted("t2_train")  # TrainTask draws the sample batch: count 1
    task = training.TrainTask(stream, tl.L2Loss(), trax.optimizers.SGD(0.01))
    loop = CounterLog(tl.Serial(tl.Dense(1)), task, eval_at=lambda n: True,
                      output_dir=str(tmp_path), stdout=io.StringIO(), prefetch=True)
    loop.seen_counts = []
    loop.run(3)
    # Mid-run the stream has drawn one batch ahead, but the counter says what training took.
    assert loop.seen_counts == [(1, 2), (2, 3), (3, 4)]
    assert counters.data_counters["t2_train"] == 4
    assert next(stream)[0][0, 0] == 4.0  # after run() the data stands where training left it
    assert counters.data_counters["t2_train"] == 5  # that batch, taken by hand, counted too
    loop.run(1)
    assert loop.seen_counts[-1] == (4, 6)

    loop.save_checkpoint()
    with open(tmp_path / "data_counters0.pkl", "rb") as f:  # Trax's file, for Trax's Loop
        assert pickle.load(f)["t2_train"] == 6
    loop.close()
    counters.data_counters["t2_train"] = 0
    resumed = training.Loop(tl.Serial(tl.Dense(1)), task, output_dir=str(tmp_path),
                            stdout=io.StringIO())
    assert resumed.step == 4
    assert counters.data_counters["t2_train"] == 6  # restored with the checkpoint
    resumed.close()


class RecordingWriter:
    def __init__(self, directory, log):
        self.directory, self.log = directory, log
        log.append(("open", os.path.basename(directory)))

    def scalar(self, tag, value, step):
        self.log.append(("scalar", os.path.basename(self.directory), tag, step))

    def text(self, tag, text, step):
        pass

    def flush(self):
        pass

    def close(self):
        self.log.append(("close", os.path.basename(self.directory)))


class WriterLog(training.Loop):
    def open_summary_writer(self, directory):
        return RecordingWriter(directory, self.writer_log)


def tiny_loop(cls, tmp_path, **kw):
    task = training.TrainTask(numbered_batches(), tl.L2Loss(), trax.optimizers.SGD(0.01))
    eval_task = training.EvalTask(numbered_batches(), [tl.L2Loss()])
    return cls(tl.Serial(tl.Dense(1)), task, eval_tasks=[eval_task],
               eval_at=lambda n: n % 2 == 0, output_dir=str(tmp_path), stdout=io.StringIO(),
               **kw)


def test_one_summary_writer_per_mode_per_run(tmp_path):
    WriterLog.writer_log = []
    loop = tiny_loop(WriterLog, tmp_path)
    log = WriterLog.writer_log
    loop.run(2)
    opens = [e for e in log if e[0] == "open"]
    assert sorted(opens) == [("open", "eval"), ("open", "train")]
    assert log[-2:] in ([("close", "train"), ("close", "eval")],
                        [("close", "eval"), ("close", "train")])
    assert ("scalar", "eval", "metrics/L2Loss", 2) in log
    assert ("scalar", "train", "metrics/L2Loss", 2) in log
    loop.run(1)  # no summary in this run: no writer opened
    loop.run(1)
    assert [e for e in log if e[0] == "open"] == opens + [("open", "train"), ("open", "eval")]
    assert sum(e[0] == "close" for e in log) == 4
    # Loop.log_summary writes through the run's writers too.
    loop.log_summary({"custom": 1.5}, log_prefix="eval")
    assert log[-2:] == [("open", "eval"), ("scalar", "eval", "metrics/custom", 4)]
    loop.close()
    assert log[-1] == ("close", "eval")


def test_default_writer_writes_one_event_file_per_run(tmp_path):
    pytest.importorskip("tensorboardX")
    loop = tiny_loop(training.Loop, tmp_path)
    for n_files in (1, 2):
        loop.run(2)  # two runs within one second get distinct files
        for mode in ("train", "eval"):
            files = [f for f in os.listdir(tmp_path / mode) if f.startswith("events.out")]
            assert len(files) == n_files, (mode, files)
    loop.close()


def test_checkpoint_of_another_model_names_the_weight(tmp_path):
    task = training.TrainTask(numbered_batches(), tl.L2Loss(), trax.optimizers.SGD(0.01))
    loop = training.Loop(tl.Serial(tl.Dense(1)), task, output_dir=str(tmp_path),
                         stdout=io.StringIO(), checkpoint_at=lambda n: n == 1)
    loop.run(1)
    loop.close()
    with pytest.raises(ModelMismatchError) as caught:
        training.Loop(tl.Serial(tl.Dense(2)), task, output_dir=str(tmp_path),
                      stdout=io.StringIO())
    err = caught.value
    # One error for Trax programs (IndexError) and retrax's (CheckpointError, ValueError).
    assert isinstance(err, CheckpointError) and isinstance(err, IndexError)
    assert isinstance(err, ValueError)
    message = str(err)
    assert "Dense" in message and "(2, 1)" in message and "(2, 2)" in message
    assert "Build the model with the configuration" in message
