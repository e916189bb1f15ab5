"""Test helper: which XLA programs a call compiles (JAX's compile-duration events)."""

from __future__ import annotations

import contextlib

import jax


@contextlib.contextmanager
def xla_compiles():
    """The names of the XLA programs compiled inside the block (``'jit(step)'``, ...).

    A ``jax.monitoring`` listener on JAX's backend-compile event: public API, and
    it sees every compilation, whichever function object holds the program.
    """
    names = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def compiled_during(call):
    """Names of the XLA programs compiled while ``call()`` runs, and its result."""
    with xla_compiles() as names:
        out = call()
    return names, out
