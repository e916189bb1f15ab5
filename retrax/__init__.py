"""retrax: Trax's layer algebra, TransformerLM and training loop on modern JAX.

Use it as a drop-in for Trax code: ``import retrax as trax``.
"""

# Importing retrax.checkpoints registers it as the implementation of
# Layer.save_to_file / init_from_file (see retrax/layers/file_io.py).
from retrax import (  # noqa: F401
    checkpoints,
    compilation_cache,
    data,
    fastmath,
    layers,
    models,  # noqa: E402,F401
    optimizers,  # noqa: E402,F401
    shapes,
    supervised,  # noqa: E402,F401
)
from retrax.supervised import lr_schedules as lr  # noqa: F401
from retrax.version import __version__  # noqa: F401  (a leaf module: retrax/version.py)

compilation_cache.configure_from_env()  # on unless RETRAX_COMPILATION_CACHE=0 (see the module)
