"""Loading the published implementations for parity tests.

verl and TRL import normally. OpenRLHF's package import needs flash-attn and deepspeed (GPU
builds), so its `models/utils.py` and `models/loss.py` are loaded from the installed files with
`deepspeed` stubbed (the functions under test are plain torch), and its GAE / REINFORCE methods
are taken from `trainer/ppo_utils/experience_maker.py` by their source, without importing Ray.
Where a framework is missing these tests skip, except under CI, where they fail.
"""

import ast
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import pathlib
import sys
import types

import pytest
import torch


def require(module: str):
    """Import ``module``; skip without it, fail without it under CI."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        msg = f"{module} is not installed ({exc}); `make test` installs the parity frameworks"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def _openrlhf_root() -> pathlib.Path:
    spec = importlib.util.find_spec("openrlhf")
    if spec is None or not spec.submodule_search_locations:
        msg = "openrlhf is not installed; `make test` installs it with --no-deps"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def openrlhf_models() -> tuple[types.ModuleType, types.ModuleType]:
    """(utils, loss) modules of openrlhf/models, loaded from the installed files."""
    if "_openrlhf_models.loss" in sys.modules:
        return sys.modules["_openrlhf_models.utils"], sys.modules["_openrlhf_models.loss"]
    root = _openrlhf_root() / "models"
    stub = types.ModuleType("deepspeed")  # imported by utils.py, unused by the functions under test
    real = sys.modules.get("deepspeed")
    sys.modules["deepspeed"] = stub
    pkg = types.ModuleType("_openrlhf_models")
    pkg.__path__ = [str(root)]
    sys.modules["_openrlhf_models"] = pkg
    mods = []
    try:
        for name in ("utils", "loss"):
            spec = importlib.util.spec_from_file_location(f"_openrlhf_models.{name}", root / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            mods.append(mod)
    finally:  # never leave the stub where other packages look for deepspeed
        if real is None:
            sys.modules.pop("deepspeed", None)
        else:
            sys.modules["deepspeed"] = real
    return mods[0], mods[1]


def openrlhf_experience_methods() -> dict[str, types.FunctionType]:
    """OpenRLHF's `get_advantages_and_returns` and `get_cumulative_returns` (methods that do not
    use `self`), compiled from the installed experience_maker.py."""
    path = _openrlhf_root() / "trainer" / "ppo_utils" / "experience_maker.py"
    tree = ast.parse(path.read_text())
    wanted = {"get_advantages_and_returns", "get_cumulative_returns"}
    funcs = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name in wanted]
    for f in funcs:
        f.decorator_list = []
    module = ast.Module(body=funcs, type_ignores=[])
    namespace = {"torch": torch, "Tuple": tuple, "List": list}
    exec(compile(module, str(path), "exec"), namespace)
    found = {name: namespace[name] for name in wanted if name in namespace}
    assert set(found) == wanted, f"OpenRLHF's experience maker lacks {wanted - set(found)}"
    return found


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


def import_openrlhf():
    """Import OpenRLHF's real modules (models.utils, models.loss, the experience maker) with the
    missing GPU-only packages stubbed; returns (utils, loss, experience_maker)."""
    _openrlhf_root()
    names = ("openrlhf.models.utils", "openrlhf.models.loss", "openrlhf.trainer.ppo_utils.experience_maker")
    finder = _StubFinder(OPENRLHF_STUBBED)
    sys.meta_path.append(finder)
    try:
        return tuple(importlib.import_module(n) for n in names)
    finally:  # later imports (try: import flash_attn ..., is_vllm_available()) see no stubs
        sys.meta_path.remove(finder)
        for name in finder.created:
            sys.modules.pop(name, None)
