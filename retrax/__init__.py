"""retrax: Trax's layer algebra, TransformerLM and training loop on modern JAX.

Use it as a drop-in for Trax code: ``import retrax as trax``.
"""

__version__ = "0.1.0"

from retrax import (  # noqa: E402,F401
    data,
    fastmath,
    layers,
    models,  # noqa: E402,F401
    optimizers,  # noqa: E402,F401
    shapes,
    supervised,  # noqa: E402,F401
)
from retrax.supervised import lr_schedules as lr  # noqa: E402,F401
