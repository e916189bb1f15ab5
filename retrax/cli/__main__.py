"""``python -m retrax.cli``: the same as ``python -m retrax`` and the ``retrax`` command."""

import sys

from retrax.cli import main

if __name__ == "__main__":
    sys.exit(main())
