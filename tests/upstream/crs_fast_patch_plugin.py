"""pytest plugin: run a framework's own test suite with crs_fast's patch applied.

    CRS_FAST_PATCH=verl pytest -p crs_fast_patch_plugin <the framework's tests>

The patch is applied before collection (so `from ... import f` in the tests gets crs_fast's
function), and the session fails if it was not active at the end."""

import importlib
import os

import pytest

_module = None


def pytest_configure(config):
    global _module
    name = os.environ.get("CRS_FAST_PATCH")
    if not name:
        raise pytest.UsageError("set CRS_FAST_PATCH to verl, openrlhf or trl")
    _module = importlib.import_module(f"crs_fast.integrations.{name}")
    replaced = _module.patch()
    config.stash[pytest.StashKey[list]()] = replaced
    print(f"crs_fast: patched {name}: {len(replaced)} replacements")


def pytest_sessionfinish(session, exitstatus):
    if _module is not None and not _module._PATCHER.active:
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        print("crs_fast: the patch was not active at the end of the session")
