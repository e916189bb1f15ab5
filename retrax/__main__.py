"""``python -m retrax``: the ``retrax`` command line (see :mod:`retrax.cli`)."""

import sys

from retrax.cli import main

if __name__ == "__main__":
    sys.exit(main())
