"""retrax: Trax's layer algebra and TransformerLM on modern JAX.

Use it as a drop-in for Trax code: ``import retrax as trax``.
"""

__version__ = "0.1.0"

from retrax import fastmath, layers, shapes  # noqa: E402,F401
