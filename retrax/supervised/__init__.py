"""Supervised training and decoding: ``training``, ``callbacks``, ``lr_schedules``, ``history``."""

from retrax.supervised import callbacks, decoding, history, lr_schedules, training  # noqa: F401
from retrax.supervised.history import History  # noqa: F401
