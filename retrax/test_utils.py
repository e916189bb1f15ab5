"""``trax.test_utils``: ``ensure_flag`` for tests that read absl flags.

retrax itself uses no absl flags; this exists because users' Trax tests import
it. It needs ``absl-py`` (``pip install absl-py``), which retrax does not install.
"""

from __future__ import annotations

import sys

__all__ = ["ensure_flag"]


def ensure_flag(flag_str: str) -> None:
    """Parses ``sys.argv`` into absl's FLAGS if not done yet; asserts ``flag_str`` is set."""
    try:
        from absl import flags
    except ImportError:
        raise ImportError("retrax.test_utils.ensure_flag needs absl-py (pip install absl-py), "
                          "which retrax does not depend on.") from None
    try:
        getattr(flags.FLAGS, flag_str)
    except flags.UnparsedFlagAccessError:
        flags.FLAGS(sys.argv)
    assert getattr(flags.FLAGS, flag_str)
