"""Fixtures for the pytest-benchmark files (the helpers live in benchlib.py)."""

from benchlib import run_case  # noqa: F401  (a fixture)
