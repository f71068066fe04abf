"""The compilation cache's integrity: a damaged entry is dropped before JAX reads it.

JAX's persistent compilation cache trusts its files: a truncated or overwritten entry makes
every later run warn and compile again, and a valid entry under another entry's name (two
files swapped) loads the wrong program. ``verify`` keeps a manifest beside the entries, the
SHA-256 of each file as it was when the last run ended (written to a temporary file and
renamed, so that it is whole or absent). Before a run, ``repair`` deletes every entry the
manifest does not vouch for (changed, swapped, truncated, or unknown); JAX then compiles
those programs again and writes them afresh, and ``record`` vouches for them at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

MANIFEST = "matcalc-jax-manifest.json"


#: The endings of the names JAX gives its cache's files (an entry, its access time).
ENTRY_SUFFIXES = ("-cache", "-atime")


def _entries(directory: Path) -> list[Path]:
    """The cache's entries: the plain files named as JAX names them. Any other file (the
    manifest, a temporary file, a file of the user's in a folder given as the cache) is
    left alone."""
    with contextlib.suppress(OSError):
        return [
            path
            for path in directory.iterdir()
            if path.name.endswith(ENTRY_SUFFIXES) and path.is_file()
        ]
    return []


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:  # removed meanwhile (another process's repair)
        return None


def _manifest(directory: Path) -> dict[str, str]:
    """The recorded digests; empty when the manifest is missing or unreadable."""
    try:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def repair(directory: str | os.PathLike) -> int:
    """Delete every entry of ``directory`` whose digest is not the one recorded; return
    how many were deleted."""
    directory = Path(directory)
    recorded = _manifest(directory)
    removed = 0
    for path in _entries(directory):
        if recorded.get(path.name) != _digest(path):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def record(directory: str | os.PathLike) -> None:
    """Vouch for the entries as they are now: write the manifest of their digests."""
    directory = Path(directory)
    digests = {path.name: _digest(path) for path in _entries(directory)}
    text = json.dumps({name: d for name, d in digests.items() if d is not None})
    manifest = directory / MANIFEST
    if manifest.is_dir() and not manifest.is_symlink():  # not ours to read: make way
        shutil.rmtree(manifest, ignore_errors=True)
    # a read-only cache: nothing vouched for, entries dropped next time
    _write_whole(manifest, text)


def _write_whole(path: Path, text: str) -> None:
    """``text`` into ``path`` by a temporary file and a rename: whole or absent (a reader
    never sees half of it); nothing written where the directory is read-only."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()


#: The file, in ``verify``'s cache directory, of the case sizes an earlier run estimated.
ENTRIES = "case-entries.json"


def read_entries(directory: str | os.PathLike) -> dict[str, int]:
    """The estimates ``case_bytes`` kept in ``directory`` (``harness.KNOWN_ENTRIES``); empty
    when the file is absent, unreadable or not a mapping of keys to entry counts. Reads
    only: nothing is made (a refused request leaves no cache behind)."""
    try:
        data = json.loads((Path(directory) / ENTRIES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        key: value
        for key, value in data.items()
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0
    }


def keep_entries(directory: str | os.PathLike, known: dict[str, int], read: dict[str, int]) -> None:
    """Write ``known`` to ``directory`` (temporary file, then rename) when it holds more than
    was ``read``: each rule's estimates from its latest code only (a key's first part is the
    rule's id, its second the record's digest), so that the file does not grow with every
    change of a rule."""
    if known.items() <= read.items():
        return
    latest = dict(_rule_and_digest(key) for key in known.keys() - read.keys())
    kept = {}
    for key, value in known.items():
        rule, digest = _rule_and_digest(key)
        if latest.get(rule, digest) == digest:
            kept[key] = value
    # a read-only cache: estimated again next time
    _write_whole(Path(directory) / ENTRIES, json.dumps(kept, sort_keys=True))


def _rule_and_digest(key: str) -> tuple[str, str]:
    """A ``harness.entries_key``'s rule id and record digest."""
    rule, _, rest = key.partition("|")
    return rule, rest.partition("|")[0]
