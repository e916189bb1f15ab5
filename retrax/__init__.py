"""retrax: Trax's layer algebra, TransformerLM and training loop on modern JAX.

Use it as a drop-in for Trax code: ``import retrax as trax``.
"""

__version__ = "0.1.0"

from retrax import fastmath, layers, shapes  # noqa: E402,F401
from retrax import models  # noqa: E402,F401
from retrax import optimizers  # noqa: E402,F401
from retrax import supervised  # noqa: E402,F401
from retrax.supervised import lr_schedules as lr  # noqa: E402,F401
