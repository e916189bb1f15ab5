"""The version of retrax: a leaf module that imports nothing.

``pyproject.toml`` reads it (``[tool.setuptools.dynamic]``) and
``retrax.__version__`` re-exports it; modules inside retrax that record the
version (checkpoint metadata, ``config.json``) import it from here, never from
the package itself.
"""

__version__ = "0.1.0"
