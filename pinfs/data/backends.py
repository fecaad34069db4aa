"""Backend discovery: which backends a data root has, their types and configs.

A backend is a directory ``ROOT/backends/<name>/`` or a config ``ROOT/backends/<name>.yaml`` /
``ROOT/backend_configs/<name>.yaml``. Names are validated before they are ever joined to a path, so
``..``, ``/`` or NUL in a name is reported, never followed. A broken config is recorded on the
backend (``config_error``) rather than raised, so one bad backend never hides the others.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cachetools
import yaml

from pinfs.data.rootfs import S3Path, parse_root
from pinfs.errors import InvalidInput, RootMissing, UnknownBackend

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # use with fullmatch: "$" would admit a trailing newline
DEFAULT_ROOT = "~/.ipfs_kit"
# Config files larger than this are refused: a backend config is a few lines of YAML.
MAX_CONFIG_BYTES = 1 << 20

# Backend types recognised from a name's words, most specific first (CONTRACT §1: whole words only,
# so "sshfs-x" is sshfs, "sftp" is not ftp).
_TYPE_WORDS: dict[str, str] = {
    "s3": "s3",
    "sshfs": "sshfs",
    "ftp": "ftp",
    "github": "github",
    "huggingface": "huggingface",
    "hf": "huggingface",
    "storacha": "storacha",
    "filesystem": "filesystem",
    "local": "filesystem",
    "fs": "filesystem",
    "ipfs": "ipfs",
}

PARQUET_NAME = "pin_mappings.parquet"
CAR_NAME = "pin_mappings.car"
LEGACY_NAME = "pins.json"
REJECTED_NAME = "pins.rejected.json"


@dataclass
class Backend:
    """One backend of a data root. ``directory`` may not exist yet (config only)."""

    name: str
    type: str
    directory: Path
    config: dict[str, Any] = field(default_factory=dict)
    config_path: Path | None = None
    config_error: str | None = None
    enabled: bool = True

    @property
    def parquet_path(self) -> Path:
        return self.directory / PARQUET_NAME

    @property
    def car_path(self) -> Path:
        return self.directory / CAR_NAME

    @property
    def legacy_path(self) -> Path:
        return self.directory / LEGACY_NAME

    def setting(self, *names: str, default: Any = None) -> Any:
        """A type-specific setting, from the top level or under ``config:``, first name found wins."""
        nested = self.config.get("config")
        for name in names:
            if name in self.config:
                return self.config[name]
            if isinstance(nested, dict) and name in nested:
                return nested[name]
        return default


@dataclass
class BackendProblem:
    """Something under the root that looks like a backend but cannot be used as one."""

    location: str
    reason: str


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$PINFS_ROOT``, else ``~/.ipfs_kit``. A root
    ``s3://bucket/prefix`` is an ``S3Path`` (``pinfs.data.rootfs``), which the layers above use like a Path."""
    chosen = root if root is not None else os.environ.get("PINFS_ROOT") or DEFAULT_ROOT
    return parse_root(os.fspath(chosen))  # type: ignore[return-value]


def validate_backend_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"invalid backend name {name!r}: use 1-64 of a-z, 0-9, '_' and '-', starting with a letter or digit"
        )
    return name


def type_from_name(name: str) -> str:
    """Guess a type from a backend's name, matching whole ``-``/``_``-separated words."""
    for word in re.split(r"[-_]", name):
        if word in _TYPE_WORDS:
            return _TYPE_WORDS[word]
    return "unknown"


def backends_dir(root: Path) -> Path:
    return root / "backends"


def check_root(root: Path | S3Path) -> None:
    """RootMissing when a local data root is not an existing directory. (An S3 prefix exists as soon
    as something is put under it: an empty one is a new root, and a missing bucket fails the calls.)"""
    if isinstance(root, S3Path):
        return
    try:
        is_dir = os.path.isdir(root)
    except OSError:
        is_dir = False
    if not is_dir:
        what = "is not a directory" if os.path.lexists(root) else "does not exist"
        raise RootMissing(
            f"data root {root} {what} (a typo, or a disk that is not mounted?); give --root DIR or PINFS_ROOT"
        )


def _folders(root: Path) -> list[Path]:
    """The folders backends and configs are found in, leaving out one that is a symlink (it could
    lead outside the data root; ``discover_backends`` reports it)."""
    return [folder for folder in (backends_dir(root), root / "backend_configs") if not folder.is_symlink()]


def _config_candidates(root: Path, name: str) -> list[Path]:
    return [folder / f"{name}{suffix}" for folder in _folders(root) for suffix in (".yaml", ".yml")]


def load_config(path: Path) -> dict[str, Any]:
    """Parse one YAML config; raise ValueError with a one-line reason when it is unusable.

    Parsed configs are cached by the file's identity (the mount resolves a backend on every request,
    and parsing YAML each time was a measurable part of a warm lookup); callers get their own copy.
    """
    if path.is_symlink() and not _inside(path.resolve(), path.parent.resolve().parent):
        raise ValueError("config is a symlink pointing outside the data root")
    info = path.stat()
    key = (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    with _CONFIG_CACHE_LOCK:
        cached = _CONFIG_CACHE.get(key)
    if cached is None:
        cached = _parse_config(path, info.st_size)
        with _CONFIG_CACHE_LOCK:
            _CONFIG_CACHE[key] = cached
    return copy.deepcopy(cached)


_CONFIG_CACHE: cachetools.LRUCache = cachetools.LRUCache(maxsize=256)
_CONFIG_CACHE_LOCK = threading.Lock()


def _parse_config(path: Path, size: int) -> dict[str, Any]:
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"config is {size} bytes, more than {MAX_CONFIG_BYTES}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"not valid YAML: {first_line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping at the top level, found {type(data).__name__}")
    return data


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
    except ValueError:
        return False
    return True


def _backend_from(root: Path, name: str) -> Backend:
    backend = Backend(name=name, type=type_from_name(name), directory=backends_dir(root) / name)
    found = [candidate for candidate in _config_candidates(root, name) if candidate.is_file()]
    for candidate in found[:1]:
        backend.config_path = candidate
        try:
            backend.config = load_config(candidate)
        except (OSError, ValueError) as exc:
            backend.config_error = f"{candidate}: {exc}"
    if len(found) > 1 and backend.config_error is None:
        backend.config_error = _conflict(found, backend.config)
    _apply_config(backend)
    return backend


def _conflict(found: list[Path], config: dict[str, Any]) -> str | None:
    """A backend with two configs that disagree is reported, never configured by one of them silently
    (issue #16); two that say the same are fine (ipfs_kit_py writes both)."""
    for other in found[1:]:
        try:
            differs = load_config(other) != config
        except (OSError, ValueError) as exc:
            return f"{other}: {exc}"
        if differs:
            return (
                f"conflicting configs: {found[0]} and {other} both configure this backend and disagree; "
                "remove one, or make them the same"
            )
    return None


def _apply_config(backend: Backend) -> None:
    config = backend.config
    declared_type = config.get("type")
    if declared_type is not None:
        if isinstance(declared_type, str) and declared_type.strip():
            backend.type = declared_type.strip().lower()
        else:
            backend.config_error = backend.config_error or f"{backend.config_path}: 'type' must be a string"
    declared_name = config.get("name")
    if declared_name is not None and declared_name != backend.name and backend.config_error is None:
        backend.config_error = (
            f"{backend.config_path}: 'name' is {declared_name!r} but the file is for {backend.name!r}"
        )
    enabled = config.get("enabled", True)
    backend.enabled = enabled if isinstance(enabled, bool) else str(enabled).lower() not in {"false", "no", "0"}


def _candidate_names(root: Path) -> tuple[set[str], list[BackendProblem]]:
    names: set[str] = set()
    problems: list[BackendProblem] = []
    for folder, holds_data in ((backends_dir(root), True), (root / "backend_configs", False)):
        if folder.is_symlink():
            problems.append(BackendProblem(str(folder), "is a symlink; refusing to follow it"))
            continue
        try:
            entries = _entries(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            name = _name_of(entry, holds_data)
            if name is None:
                continue
            if not NAME_PATTERN.fullmatch(name):
                problems.append(BackendProblem(entry.path, f"invalid backend name {name!r}; ignored"))
                continue
            # A symlinked *config* is judged by load_config (inside the root: read; outside: reported
            # as the backend's config_error); only a symlinked backend *directory* is ignored here.
            if holds_data and entry.is_symlink() and not _is_config_name(entry.name):
                problems.append(BackendProblem(entry.path, "backend directory is a symlink; ignored"))
                continue
            names.add(name)
    return names, problems


@dataclass(frozen=True)
class _Entry:
    """A folder entry as ``os.DirEntry`` describes one, for a local folder or an S3 prefix."""

    name: str
    path: str
    folder: bool
    file: bool
    link: bool = False

    def is_dir(self, follow_symlinks: bool = True) -> bool:
        return self.folder

    def is_file(self) -> bool:
        return self.file

    def is_symlink(self) -> bool:
        return self.link


def _entries(folder: Path | S3Path) -> list[_Entry]:
    if isinstance(folder, S3Path):
        return [_Entry(name, str(folder / name), is_folder, not is_folder) for name, is_folder in folder.entries()]
    return [
        _Entry(entry.name, entry.path, entry.is_dir(follow_symlinks=False), entry.is_file(), entry.is_symlink())
        for entry in os.scandir(folder)
    ]


def _is_config_name(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def _name_of(entry: _Entry, holds_data: bool) -> str | None:
    """The backend name an entry stands for, or None when it is not a backend entry at all."""
    if entry.name.startswith("."):
        return None
    for suffix in (".yaml", ".yml"):
        if entry.name.endswith(suffix) and entry.is_file():
            return entry.name[: -len(suffix)]
    if holds_data and (entry.is_dir(follow_symlinks=False) or entry.is_symlink()):
        return entry.name
    return None


def discover_backends(root: Path) -> tuple[list[Backend], list[BackendProblem]]:
    """All backends of ``root``, sorted by name, and what was found but could not be used. Raises
    RootMissing when there is no data root at all."""
    check_root(root)
    names, problems = _candidate_names(root)
    return [_backend_from(root, name) for name in sorted(names)], problems


def get_backend(root: Path, name: str) -> Backend:
    """One backend by name. Raises InvalidInput for a bad name and NotFound when it does not exist."""
    validate_backend_name(name)
    if backends_dir(root).is_symlink():
        raise InvalidInput(f"{backends_dir(root)}: is a symlink; refusing to follow it")
    backend = _backend_from(root, name)
    if not backend.directory.is_dir() and backend.config_path is None:
        check_root(root)  # say that the whole root is missing, rather than this backend
        raise UnknownBackend(f"no backend {name!r} under {backends_dir(root)}{_did_you_mean(root, name)}")
    if backend.directory.is_symlink():
        raise InvalidInput(f"{backend.directory}: backend directory is a symlink; refusing to follow it")
    return backend


def _did_you_mean(root: Path, name: str) -> str:
    """`` (did you mean 'local-fs'?)``, or the backends there are when none is close (issue #16)."""
    try:
        names = sorted(_candidate_names(root)[0])
    except OSError:
        return ""
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (backends: {', '.join(names)})" if names else " (there are no backends yet)"


def ensure_backend_dir(backend: Backend) -> Path:
    """Create the backend's directory if only its config exists yet."""
    backend.directory.mkdir(parents=True, exist_ok=True)
    return backend.directory
