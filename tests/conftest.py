"""Shared by every test: no test reads or fills the user's compilation cache."""

import os

# Set before any test module imports retrax (which turns the cache on by default);
# tests/test_compilation_cache.py turns it on in its own subprocesses, in a tmp folder.
os.environ["RETRAX_COMPILATION_CACHE"] = "0"
