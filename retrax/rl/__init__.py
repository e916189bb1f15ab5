"""Serializing reinforcement-learning data into token sequences (Trax's ``trax.rl`` subset).

- :mod:`retrax.rl.spaces`: small ``Box``/``Discrete``/``MultiDiscrete`` descriptions
  (gym's and gymnasium's spaces work as well; retrax does not need gym).
- :mod:`retrax.rl.space_serializer`: space elements <-> fixed-length token sequences.
- :mod:`retrax.rl.serialization_utils`: layers that serialize and interleave
  observation/action sequences, and ``SerializedModel``, a sequence model over them
  (evaluated by ``retrax.supervised.callbacks.SerializedModelEvaluation``).

Trax's RL training (agents, environments, policies) is not part of retrax.
"""

from retrax.rl import serialization_utils, space_serializer, spaces  # noqa: F401
