"""One mechanism for every framework patch: version check, replacement of module attributes
(and of every loaded module that imported the same object by name), registry entries, and an
exact restore."""

import contextlib
import importlib
import importlib.metadata
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


def _resolve(target: str) -> tuple[Any, str]:
    """ "module:attr" or "module:Class.attr" -> (owner object, attribute name)."""
    module_name, path = target.split(":")
    owner: Any = importlib.import_module(module_name)
    *parents, attr = path.split(".")
    for name in parents:
        owner = getattr(owner, name)
    return owner, attr


@dataclass
class Patcher:
    """Replaces ``targets`` ({"module:attr" or "module:Class.attr": replacement}) of the ``dist``
    package, whose version must lie in [``min_version``, ``below_version``) unless
    ``allow_untested``; ``registries()`` lists (dict, key, replacement) entries to set too."""

    dist: str
    min_version: str
    below_version: str
    targets: dict[str, Any]
    registries: Callable[[], list[tuple[dict, str, Any]]] = lambda: []
    _saved: list[tuple[Any, str, Any, bool]] = field(default_factory=list)
    _originals: dict[str, Any] = field(default_factory=dict)

    def original(self, target: str) -> Any:
        """The framework's own object behind ``target`` (for exact fallbacks)."""
        if target not in self._originals:
            owner, attr = _resolve(target)
            self._originals[target] = owner.__dict__[attr]
        return self._originals[target]

    @property
    def active(self) -> bool:
        """Whether the patch is applied."""
        return bool(self._saved)

    def check_version(self, allow_untested: bool = False) -> str:
        """The installed version; raises if it is outside the tested range."""
        try:
            version = importlib.metadata.version(self.dist)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ImportError(f"crs_fast cannot patch {self.dist}: it is not installed") from exc
        lo, hi = _release(self.min_version), _release(self.below_version)
        if not allow_untested and not (lo <= _release(version) < hi):
            raise RuntimeError(
                f"crs_fast's {self.dist} patch was tested with {self.dist} >= {self.min_version}, "
                f"< {self.below_version}; installed is {version}. Pass allow_untested=True to patch anyway."
            )
        return version

    def patch(self, allow_untested: bool = False) -> list[str]:
        """Apply the patch (a second call does nothing); returns the names replaced."""
        if self.active:
            return self.replaced()
        self.check_version(allow_untested)
        resolved = [(*_resolve(target), self.original(target), new) for target, new in self.targets.items()]
        package = self.dist.replace("-", "_").lower() + "."
        for owner, attr, original, new in resolved:
            self._set(owner, attr, new)
            if not isinstance(owner, type(sys)):
                continue
            for other in list(sys.modules.values()):  # names imported with `from x import f`
                in_package = getattr(other, "__name__", "").startswith(package)
                if other is not owner and in_package and other.__dict__.get(attr) is original:
                    self._set(other, attr, new)
        for registry, key, new in self.registries():
            self._saved.append((registry, key, registry.get(key), key in registry))
            registry[key] = new
        return self.replaced()

    def _set(self, owner: Any, attr: str, new: Any) -> None:
        self._saved.append((owner, attr, owner.__dict__[attr], True))
        setattr(owner, attr, new)

    def unpatch(self) -> None:
        """Restore the exact original objects, in reverse order."""
        for owner, key, original, existed in reversed(self._saved):
            if isinstance(owner, dict):
                if existed:
                    owner[key] = original
                else:
                    owner.pop(key, None)
            else:
                setattr(owner, key, original)
        self._saved.clear()

    def replaced(self) -> list[str]:
        """Names currently replaced ("module.attr" or "registry[key]")."""
        out = []
        for owner, key, _, _ in self._saved:
            if isinstance(owner, dict):
                out.append(f"registry[{key!r}]")
            else:
                prefix = f"{owner.__module__}." if isinstance(owner, type) else ""
                out.append(f"{prefix}{owner.__name__}.{key}")
        return out

    @contextlib.contextmanager
    def patched(self, allow_untested: bool = False) -> Iterator[list[str]]:
        """Context manager: patched inside, restored after (if it was not patched before)."""
        already = self.active
        names = self.patch(allow_untested)
        try:
            yield names
        finally:
            if not already:
                self.unpatch()


def public_api(patcher: Patcher, framework: str) -> tuple[Callable, Callable, Callable]:
    """The ``patch``, ``unpatch`` and ``patched`` functions of one framework's module."""

    def patch(allow_untested: bool = False) -> list[str]:
        return patcher.patch(allow_untested)

    def unpatch() -> None:
        patcher.unpatch()

    def patched(allow_untested: bool = False) -> contextlib.AbstractContextManager[list[str]]:
        return patcher.patched(allow_untested)

    patch.__doc__ = f"Patch {framework} (a second call does nothing); returns the names replaced."
    unpatch.__doc__ = f"Restore {framework}'s original objects exactly."
    patched.__doc__ = f"Context manager: {framework} patched inside the block, restored after."
    return patch, unpatch, patched


def entropy(logits: Any) -> Any:
    """Entropy of softmax(logits) per row, in the logits' dtype, through crs_fast.token_logprobs
    (which needs labels; they do not affect the entropy)."""
    import torch

    from .. import ops

    labels = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    return ops.token_logprobs(logits, labels, entropy=True)[1].to(logits.dtype)


def group_ids(index: Any) -> list[int]:
    """Dense integer ids for arbitrary hashable group labels (verl passes numpy object arrays)."""
    mapping: dict[Any, int] = {}
    return [mapping.setdefault(x, len(mapping)) for x in list(index)]
