"""A model folder's layout: version directories, each with its manifest.json, and which one is the newest.

Without torch: `whisperlite up` reads which dataset the newest model came from, and would otherwise carry torch's
~180 MB for the stack's lifetime.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("whisperlite.model")

MANIFEST = "manifest.json"


def resolve_version_dir(path: str | Path) -> Path:
    """A directory holding manifest.json, or the newest (by manifest `created`) child whose manifest reads.

    A child whose manifest does not read (a half-written copy, a stray folder, a folder it may not read) cannot say how
    new it is: it is skipped, logged at ERROR, rather than stopping a restart for good with a version older than the
    one it served (ValueError naming each when none reads)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no model at {path}")
    versions = version_dirs(path)
    if not versions:
        raise FileNotFoundError(f"no model version (a directory with {MANIFEST}) under {path}")
    readable, unreadable = [], []
    for directory in versions:
        try:
            readable.append((newest_first_key(read_manifest(directory), directory), directory))
        except (OSError, ValueError) as error:
            unreadable.append(f"{directory}: {MANIFEST}: {type(error).__name__}: {error}")
    if not readable:
        raise ValueError(f"no version under {path} has a readable {MANIFEST}: " + "; ".join(unreadable))
    for reason in unreadable:
        log.error("model version skipped: its manifest cannot be read", extra={"reason": reason})
    return max(readable)[1]


def version_dirs(parent: str | Path) -> list[Path]:
    """The version directories of a model folder: children holding a manifest.json, and children that cannot be
    looked into (a folder without read permission, a link to nothing, an I/O error).

    Reading the manifest of one of the latter fails with the reason, so it is refused like a broken version: one such
    child used to raise out of this scan and take every version down with it (PermissionError from is_file())."""
    return [child for child in Path(parent).iterdir() if _may_hold_a_version(child)]


def _may_hold_a_version(child: Path) -> bool:
    try:
        (child / MANIFEST).lstat()  # a manifest of any kind: one that is no file or does not read is refused, not ignored
        return True
    except (FileNotFoundError, NotADirectoryError):  # a plain file, a folder without a manifest: not a version
        return child.is_symlink() and not child.exists()  # a link whose target is gone or not mounted
    except OSError:
        return True


MAX_VERSION_CHARS = 256


def read_manifest(directory: str | Path) -> dict:
    """A version's manifest; ValueError saying why when it is not a JSON object naming a usable version and encoder."""
    manifest = json.loads((Path(directory) / MANIFEST).read_text())
    if not isinstance(manifest, dict):
        raise ValueError(f"{MANIFEST}: must be a JSON object, got {type(manifest).__name__}")
    version = manifest.get("version")
    # The version is how admin calls, metrics and responses name the model: it must be printable and non-empty.
    if not isinstance(version, str) or not version.strip() or len(version) > MAX_VERSION_CHARS or not version.isprintable():
        raise ValueError(f"{MANIFEST}: version must be 1 to {MAX_VERSION_CHARS} printable characters, got {str(version)[:60]!r}")
    if not isinstance(manifest.get("encoder"), str) or not manifest["encoder"]:
        raise ValueError(f"{MANIFEST}: encoder must be a non-empty string, got {str(manifest.get('encoder'))[:60]!r}")
    if not isinstance(manifest.get("created", ""), str):  # versions are ordered by it
        raise ValueError(f"{MANIFEST}: created must be a string (an ISO time), got {str(manifest['created'])[:60]!r}")
    return manifest


def newest_first_key(manifest: dict, directory: Path) -> tuple[str, str]:
    """Orders versions by manifest `created`, the directory name breaking ties: the max is the newest."""
    return str(manifest.get("created", "")), directory.name
