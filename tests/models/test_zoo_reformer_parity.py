"""Parity with real Trax 1.4.1 for the Reformer models (tests/fixtures/trax/trax-1.4.1-zoo).

``reformerlm_self_attention`` (ReformerLM with SelfAttention) and ``reformer_encdec``
(Reformer): the checkpoint loads one to one into the model built from ``meta.json``
(weights and state, the encoder-decoder's shared embedding stored once), and eval-mode
outputs reproduce ``output<i>.npy`` to 1e-5 relative to their scale (today ~4e-7).
"""

from __future__ import annotations

import pytest
from zoo_fixtures import assert_eval_outputs_match, assert_maps_one_to_one

FOLDERS = ["reformerlm_self_attention", "reformer_encdec"]
RTOL_OF_SCALE = 1e-5


@pytest.mark.parametrize("name", FOLDERS)
def test_checkpoint_maps_one_to_one(name):
    assert_maps_one_to_one(name)


@pytest.mark.parametrize("name", FOLDERS)
def test_eval_outputs_match_trax(name):
    assert_eval_outputs_match(name, RTOL_OF_SCALE)
