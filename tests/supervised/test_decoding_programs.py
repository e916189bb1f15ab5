"""Structure of decoding's compiled work: what a first call compiles, and the per-token loop.

Deterministic proxies for decoding speed (no clocks): the first
``autoregressive_sample`` call compiles its generation program and nothing
else, and the optimized HLO of a predict-mode decode loop updates the
key/value caches in place (no copy of a cache per token). Decoding's programs
compile without YNNPACK on CPU (``decoding_programs.jit_decoding_program``),
and without the options on a jaxlib that refuses them.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from compile_events import compiled_during
from jax import lax

import retrax as trax
from retrax.supervised import decoding, decoding_programs


def tiny_lm(seed: int, n_layers: int = 2):
    model = trax.models.TransformerLM(vocab_size=16, d_model=16, d_ff=32, n_layers=n_layers,
                                      n_heads=2, max_len=64, mode="predict")
    model.init(trax.shapes.ShapeDtype((1, 1), np.int32), rng=jax.random.PRNGKey(seed))
    return model


def test_first_call_compiles_only_the_generation_program():
    # No eager key, conversion or staging programs before the main one: a cold
    # first call pays for exactly one XLA compilation, a repeated call none.
    model = tiny_lm(0, n_layers=1)
    prompt = np.array([[3, 4, 5], [6, 7, 8]], np.int32)
    # (Seeded sampling: its key was an eager program of its own; greedy takes the
    # same path.)
    def call():
        return decoding.autoregressive_sample(model, prompt, batch_size=2, max_length=6,
                                              eos_id=None, temperature=1.0, seed=3)
    names, out = compiled_during(call)
    assert names == ["jit(generate)"]
    again, out2 = compiled_during(call)
    assert again == []
    np.testing.assert_array_equal(out, out2)
    # The default key is PRNGKey(seed) made inside the program: the samples
    # equal those of the same key made eagerly and passed as rng.
    for seed in (3, -7, 2**31 - 1):
        by_seed = decoding.autoregressive_sample(model, prompt, batch_size=2, max_length=6,
                                                 eos_id=None, temperature=1.0,
                                                 seed=seed)
        by_key = decoding.autoregressive_sample(model, prompt, batch_size=2, max_length=6,
                                                eos_id=None, temperature=1.0,
                                                rng=jax.random.PRNGKey(seed))
        np.testing.assert_array_equal(by_seed, by_key)
    assert not np.array_equal(by_seed, decoding.autoregressive_sample(
        model, prompt, batch_size=2, max_length=6, eos_id=None, temperature=1.0,
        seed=4))


def _while_bodies(hlo: str) -> list[str]:
    """The text of each while loop's body computation in an optimized HLO module."""
    names = re.findall(r"while\(.*?body=%?([\w.\-]+)", hlo)
    bodies = []
    for name in names:
        start = re.search(rf"^%?{re.escape(name)} .*\{{$", hlo, re.M)
        assert start is not None, name
        bodies.append(hlo[start.end():hlo.index("\n}", start.end())])
    return bodies


def test_decode_loop_updates_the_caches_in_place():
    # The classic killer of KV-cache decoding: a loop that copies every cache
    # on every token. The loop carries the predict-mode state; XLA must write
    # each new key/value row into the carried cache (one dynamic-update-slice
    # per cache) and copy no cache-sized buffer.
    n_layers, batch, cache_len = 2, 3, 16
    model = tiny_lm(2, n_layers)
    signature = trax.shapes.ShapeDtype((batch, 1), np.int32)

    def decode(weights, tokens):
        state = decoding_programs.fresh_state(model, signature, cache_len)

        def body(carry):
            t, state, tok = carry
            out, state = model.pure_fn(tok, weights, state, None)
            return t + 1, state, out[:, -1].argmax(-1).astype(np.int32)[:, None]

        return lax.while_loop(lambda c: c[0] < cache_len, body,
                              (np.int32(0), state, tokens))[2]

    hlo = jax.jit(decode).lower(model.weights, np.zeros((batch, 1), np.int32)).compile().as_text()
    cache_shape = f"f32[{batch * 2},{cache_len},8]"  # (B*H, L, d_head)
    (body,) = _while_bodies(hlo)
    copies = [line for line in body.splitlines() if " copy(" in line and cache_shape in line]
    assert copies == []
    # Each cache is written once per token, inside a fusion (in place).
    updates = hlo.count(f"{cache_shape}{{2,1,0}} dynamic-update-slice(")
    assert updates == 2 * n_layers


def test_decoding_loop_compiles_without_ynnpack_on_cpu():
    # decoding_programs.DECODING_COMPILER_OPTIONS: XLA's own kernels for the loop's
    # few-row products (YNNPACK's thread-pool hand-off cost more than the work).
    model = tiny_lm(0, n_layers=1)
    text = decoding.lowered_generation(model, None, batch_size=3, temperature=0.0,
                                       eos_id=None, max_length=8).compile().as_text()
    assert jax.default_backend() == "cpu"
    assert "ynn_fusion" not in text and re.search(r"\sdot\(", text)


def test_decoding_programs_keep_their_jit_arguments_and_drop_ynnpack():
    # The stream's step (donated state) and beam search go through the same helper.
    def step(state, w):  # the new state has the donated one's shape
        return state + (state @ w)[:, :64]

    x, w = np.ones((8, 64), np.float32), np.ones((64, 256), np.float32)
    plain = jax.jit(step).lower(x, w).compile().as_text()
    fn = decoding_programs.jit_decoding_program(step, donate_argnums=(0,))
    text = fn.lower(x, w).compile().as_text()
    assert "ynn_fusion" in plain and "ynn_fusion" not in text
    assert "input_output_alias" in text  # the donation survived
    np.testing.assert_array_equal(np.asarray(fn(jax.numpy.ones((8, 64), np.float32), w)), 65.0)


def test_a_jaxlib_without_the_options_compiles_without_them(monkeypatch):
    monkeypatch.setattr(decoding_programs, "DECODING_COMPILER_OPTIONS",
                        {"xla_cpu_no_such_option_in_any_jaxlib": True})
    monkeypatch.setattr(decoding_programs, "_options_refused", False)
    fn = decoding_programs.jit_decoding_program(lambda x: x * 2)
    # Another error is the caller's, and does not count as a refusal.
    def broken(x):
        raise RuntimeError("the program's own error")

    with pytest.raises(RuntimeError, match="own error"):
        decoding_programs.jit_decoding_program(broken)(np.float32(3))
    assert decoding_programs._options_refused is False
    # The refused option: compiled again without it, and so is every later program.
    assert float(fn(np.float32(3))) == 6.0
    assert decoding_programs._options_refused is True
    assert float(fn(np.float32(4))) == 8.0
    assert "multiply" in fn.lower(np.float32(4)).compile().as_text()  # lowers plain now
    later = decoding_programs.jit_decoding_program(lambda x: x + 1)
    names, out = compiled_during(lambda: later(np.float32(1)))
    assert float(out) == 2.0 and len(names) == 1
