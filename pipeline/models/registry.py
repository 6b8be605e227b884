"""Model registry: every backend's weights declared as plain data (ModelSpec), resolved offline.

Two kinds of backend:
- bundled: weights that ship inside a registry package (found in site-packages by package name);
- reference: the papers' weights, placed by the user under the model root
  (`$EMOFORGE_MODELS/<task>/<backend>/<file>`), checked by sha256 when one is declared.

Nothing here downloads. A missing file raises MissingWeightsError naming the path and the source.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import os
import pkgutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

NON_COMMERCIAL_LICENSES = ("research-only", "non-commercial")


class MissingWeightsError(FileNotFoundError):
    """A backend's weight file is not where the registry says it should be."""


@dataclass(frozen=True)
class ModelSpec:
    """One backend's weights. `files` are relative to the package root (bundled) or to
    `<model root>/<task>/<backend>/` (reference). `sha256` maps file name to its checksum."""

    task: str
    backend: str
    kind: str  # "bundled" | "reference"
    files: tuple[str, ...]
    license: str
    source: str
    version: str
    package: str | None = None  # import name of the package that ships bundled files
    sha256: dict[str, str] = field(default_factory=dict)
    description: str = ""
    outputs: tuple[str, ...] = ()  # names of the model's output components, where it has them

    @property
    def commercial_ok(self) -> bool:
        return not any(tag in self.license.lower() for tag in NON_COMMERCIAL_LICENSES)

    @property
    def key(self) -> str:
        return f"{self.task}/{self.backend}"


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a spec (idempotent for an identical spec). Backend modules call this at import."""
    old = _REGISTRY.get(spec.key)
    if old is not None and old != spec:
        raise ValueError(f"model {spec.key} registered twice with different specs")
    _REGISTRY[spec.key] = spec
    return spec


def all_specs() -> list[ModelSpec]:
    _import_backend_modules()
    return sorted(_REGISTRY.values(), key=lambda s: s.key)


def get_spec(task: str, backend: str) -> ModelSpec:
    _import_backend_modules()
    key = f"{task}/{backend}"
    if key not in _REGISTRY:
        known = ", ".join(s.key for s in all_specs() if s.task == task) or "none"
        raise KeyError(f"no model backend {key!r}; known for {task!r}: {known}")
    return _REGISTRY[key]


def model_root() -> Path:
    return Path(os.environ.get("EMOFORGE_MODELS", Path.home() / ".emoforge" / "models"))


def cache_root() -> Path:
    return Path(os.environ.get("EMOFORGE_CACHE", Path.home() / ".cache" / "emoforge"))


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, made by `build(tmp)` the first time: `build` writes a temporary file in the
    target's folder that then replaces `target` atomically, under a file lock there, so
    concurrent workers build it once and never read half a file."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        try:
            build(Path(tmp))
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (some import slowly or badly)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def file_path(spec: ModelSpec, name: str) -> Path:
    """Where a spec's file should be, whether or not it is there."""
    if spec.kind == "bundled":
        base = package_dir(spec.package or "") if spec.package else None
        if base is None:
            return Path(f"<package {spec.package} not installed>") / name
        return base / name
    return model_root() / spec.task / spec.backend / name


def resolve(spec: ModelSpec, name: str | None = None, verify: bool = True) -> Path:
    """Path of one of the spec's files; raises MissingWeightsError with the path and the source."""
    name = name or spec.files[0]
    if name not in spec.files:
        raise KeyError(f"{spec.key} declares no file {name!r} (has {list(spec.files)})")
    path = file_path(spec, name)
    if not path.is_file():
        raise MissingWeightsError(
            f"{spec.key}: weight file missing at {path}. Source: {spec.source}"
            + ("" if spec.kind == "bundled" else f" (place it under {path.parent})")
        )
    if verify and name in spec.sha256:
        digest = sha256_file(path)
        if digest != spec.sha256[name]:
            raise MissingWeightsError(
                f"{spec.key}: {path} has sha256 {digest}, expected {spec.sha256[name]}. "
                f"Source: {spec.source}"
            )
    return path


def files_present(spec: ModelSpec) -> dict[str, bool]:
    return {name: file_path(spec, name).is_file() for name in spec.files}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_checksum(spec: ModelSpec) -> str:
    """A short checksum over the spec's present files (declared sha256 where given, else size
    and name), used in stage fingerprints. Missing files contribute 'missing'."""
    h = hashlib.sha256()
    for name in spec.files:
        path = file_path(spec, name)
        if name in spec.sha256:
            h.update(spec.sha256[name].encode())
        elif path.is_file():
            h.update(f"{name}:{path.stat().st_size}".encode())
        else:
            h.update(f"{name}:missing".encode())
    return h.hexdigest()[:16]


def _import_backend_modules() -> None:
    """Backends register their specs at import; import every module under pipeline/models/."""
    for info in pkgutil.walk_packages([str(Path(__file__).parent)], "pipeline.models."):
        if info.name != __name__:
            importlib.import_module(info.name)
