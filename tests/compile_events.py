"""Test helper: what JAX traces and compiles inside a block (its compile events)."""

from __future__ import annotations

import contextlib

import jax


@contextlib.contextmanager
def jax_work():
    """What JAX traces and compiles inside the block, as ``(stage, name)`` pairs.

    A ``jax.monitoring`` listener on JAX's compile events (public API; it sees
    every compilation, whichever function object holds the program): the stage
    is ``'jaxpr_trace_duration'`` (a Python function traced; name: the
    function's), ``'jaxpr_to_mlir_module_duration'`` or
    ``'backend_compile_duration'`` (an XLA program lowered / compiled; name
    ``'jit(<function>)'``).
    """
    work = []

    def listen(event, duration, **kwargs):
        if event.startswith("/jax/core/compile/"):
            work.append((event.rsplit("/", 1)[1], kwargs.get("fun_name")))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield work
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def compiled(work):
    """The XLA programs compiled in ``work`` (from ``jax_work``)."""
    return [name for stage, name in work if stage == "backend_compile_duration"]


@contextlib.contextmanager
def xla_compiles():
    """The names of the XLA programs compiled inside the block (``'jit(step)'``, ...).

    The list is filled when the block ends.
    """
    names = []
    with jax_work() as work:
        yield names
    names.extend(compiled(work))


def compiled_during(call):
    """Names of the XLA programs compiled while ``call()`` runs, and its result."""
    with jax_work() as work:
        out = call()
    return compiled(work), out
