"""Importing OpenRLHF on a machine without its GPU-only dependencies.

OpenRLHF's package imports deepspeed, flash-attn, vLLM and a few extras at module level, though
the functions crs_fast patches, tests and benchmarks are plain torch. This imports its real
modules with those packages stubbed for the duration of the import only: afterwards the stubs
are gone from ``sys.modules`` and the import system, so lazy ``try: import flash_attn`` paths
and availability checks behave as on a machine without them.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

# Packages OpenRLHF imports at module level that are GPU builds or unrelated extras here.
OPENRLHF_STUBBED = ("deepspeed", "flash_attn", "vllm", "pylatexenc", "math_verify", "aiohttp", "torchdata")


class _Anything:
    """Stands for any attribute of a stubbed package; never used by the functions under test."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __getattr__(self, name):
        return _Anything()


def _stub_attr(attr):
    if attr.startswith("__"):
        raise AttributeError(attr)
    return _Anything if attr[:1].isupper() else _Anything()


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots):
        self.roots = set(roots)
        self.created = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.roots and importlib.machinery.PathFinder.find_spec(name.split(".")[0]) is None:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _stub_attr
        self.created.append(spec.name)
        return module

    def exec_module(self, module):
        pass


def import_openrlhf_modules() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """Import OpenRLHF's real modules (models.utils, models.loss, the experience maker) with the
    missing GPU-only packages stubbed; returns (utils, loss, experience_maker)."""
    names = ("openrlhf.models.utils", "openrlhf.models.loss", "openrlhf.trainer.ppo_utils.experience_maker")
    finder = _StubFinder(OPENRLHF_STUBBED)
    sys.meta_path.append(finder)
    try:
        return tuple(importlib.import_module(n) for n in names)
    finally:  # later imports (try: import flash_attn ..., is_vllm_available()) see no stubs
        sys.meta_path.remove(finder)
        for name in finder.created:
            sys.modules.pop(name, None)
