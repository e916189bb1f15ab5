"""The batch check of a Loop's Placement counts this process's devices, not all of them.

In a multi-process run each process feeds only its own rows of the global
batch, so a global batch of 8 on 2 processes x 4 devices (4 rows per process,
one per device) is valid even though 4 is not a multiple of the 8 devices.
"""

from __future__ import annotations

import pytest

from retrax.supervised import train_step as ts


def test_rows_divisible_by_local_devices_pass():
    ts.check_batch_rows((4, 7), 0, 4, "train", n_processes=2)  # global 8 on 2 x 4 devices
    ts.check_batch_rows((8,), 1, 8, "train")
    ts.check_batch_rows((3, 2), 0, 1, "train")  # one device: anything goes


def test_multi_process_refusal_names_this_process_and_the_global_multiple():
    with pytest.raises(ValueError) as err:
        ts.check_batch_rows((6, 7), 2, 4, "eval task 0", n_processes=2)
    msg = str(err.value)
    assert msg.startswith("eval task 0: batch item 2 has shape (6, 7)")
    assert "this process's 4 devices" in msg
    assert "a multiple of 8 (4 devices x 2 processes)" in msg


def test_single_process_refusal_unchanged():
    with pytest.raises(ValueError, match=r"divisible by the 4 devices .* multiple of 4 or pass "
                                         r"n_devices=\.\.\. to Loop"):
        ts.check_batch_rows((6,), 0, 4, "train")
    with pytest.raises(ValueError, match=r"shape \(\)"):
        ts.check_batch_rows((), 0, 2, "train")


def test_placement_counts_local_devices_in_one_process():
    placement = ts.Placement(1)
    assert placement.local_devices == 1
