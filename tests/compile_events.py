"""Test helper: which XLA programs a call compiles (JAX's compile-duration events)."""

from __future__ import annotations

import jax


def compiled_during(call):
    """Names of the XLA programs compiled while ``call()`` runs, and its result."""
    names = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        out = call()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return names, out
