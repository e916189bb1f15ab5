"""Supervised training and decoding: ``training``, ``lr_schedules``, ``history``."""

from retrax.supervised import decoding, history, lr_schedules, training  # noqa: F401
from retrax.supervised.history import History  # noqa: F401
