"""Loading the published implementations for parity tests.

verl and TRL import normally. OpenRLHF's package import needs flash-attn and deepspeed (GPU
builds), so its `models/utils.py` and `models/loss.py` are loaded from the installed files with
`deepspeed` stubbed (the functions under test are plain torch), and its GAE / REINFORCE methods
are taken from `trainer/ppo_utils/experience_maker.py` by their source, without importing Ray.
Where a framework is missing these tests skip, except under CI, where they fail.
"""

import ast
import importlib
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


def import_openrlhf():
    """OpenRLHF's real modules with its GPU-only dependencies stubbed (see crs_fast.integrations)."""
    _openrlhf_root()
    from crs_fast.integrations.cpu_import import import_openrlhf_modules

    return import_openrlhf_modules()
