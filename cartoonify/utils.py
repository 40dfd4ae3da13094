"""Small helpers shared by the stages: atomic writes, checksums, run metadata (no torch import at load)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

TRACKED_PACKAGES = (
    "cartoonify",
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "bitsandbytes",
    "safetensors",
    "numpy",
    "pillow",
)


def atomic_write_with(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Have ``write(tmp)`` fill a temporary file in ``path``'s folder, fsync it, then ``os.replace`` it onto
    ``path``: a reader never sees a half-written file, and a crash leaves the previous content in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write_with`)."""
    return atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(start: str | Path | None = None) -> dict[str, Any]:
    """The git commit of the repository holding ``start`` (default: this package) and whether it is dirty."""
    start = Path(start or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=start, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=start,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def library_versions(packages: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages a run depends on (None where one is missing)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict[str, Any]:
    """The machine a run used: platform, CPU count and, if present, the CUDA device."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    return info


def run_info(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to tell later which code and libraries produced a run."""
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": git_commit(),
        "versions": library_versions(),
        "machine": machine_info(),
        "argv": sys.argv,
        **(extra or {}),
    }


# ------------------------------------------------------------------------------------------------
# folders built once, atomically, and recognised by a marker file
# ------------------------------------------------------------------------------------------------


def read_marker_file(path: Path) -> dict[str, Any] | None:
    """The JSON of a marker file, or ``None`` if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build_folder(path: str | os.PathLike, marker: dict[str, Any], marker_name: str, write, *,
                 overwrite: bool = False, what: str = "folder", required: str | None = None) -> Path:
    """Build a folder once: ``write(tmp)`` fills a temporary folder beside ``path``, ``marker`` is written
    last as ``marker_name``, and the folder is renamed into place, so that a reader never sees half of it.

    A folder that already holds this ``marker`` (and the file ``required``, if given) is kept as it is. An empty
    folder is replaced; anything else raises ``FileExistsError`` naming ``what`` unless ``overwrite``. Losing the
    race to an identical concurrent build is not an error. Returns ``path``.
    """
    import shutil

    path = Path(path).expanduser()

    def complete() -> bool:
        return read_marker_file(path / marker_name) == marker and (required is None or (path / required).is_file())

    if complete():
        return path
    if (path.exists() or path.is_symlink()) and not overwrite and not (
            path.is_dir() and not path.is_symlink() and not any(path.iterdir())):
        raise FileExistsError(f"{path} already exists and is not a {what} built with these parameters; "
                              "pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    trash = None
    try:
        write(tmp)
        (tmp / marker_name).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if complete():
            return path
        if path.exists() or path.is_symlink():
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, trash / path.name)
        try:
            os.replace(tmp, path)
        except OSError:
            if not complete():
                raise
    finally:
        for leftover in (tmp, trash):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return path
