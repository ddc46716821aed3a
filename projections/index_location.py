"""Which file is the record index: a pointer file in the data dir names it, so fullReindex can
build a new index beside the serving one and switch every reader to it with one atomic rename.
Without a pointer the index is `records.db`, as before fullReindex existed."""

from __future__ import annotations

import os
import re
from pathlib import Path

POINTER = "records.current"
DEFAULT = "records.db"
# The only names an index file has: what a name read from the pointer or from the log must be
# before it is opened or deleted, so neither can reach outside the data dir.
_INDEX_NAME = re.compile(r"^records(-[0-9a-z]{1,64})?\.db$")


def index_file(data_dir: Path, name: str) -> Path:
    """`data_dir / name` for an index file name; ValueError for anything else (a path, `..`,
    an absolute name)."""
    if not _INDEX_NAME.match(name):
        raise ValueError(f"not a record index file name: {name[:100]!r}")
    return data_dir / name


def active_path(data_dir: Path) -> Path:
    try:
        name = (data_dir / POINTER).read_text().strip()
    except FileNotFoundError:
        name = DEFAULT
    return index_file(data_dir, name or DEFAULT)


def pointer_stamp(data_dir: Path) -> tuple[int, int] | None:
    """Changes whenever the pointer is switched (a rename gives it a new inode): a reader
    stats this on each query and reads the pointer only when it changed."""
    try:
        st = os.stat(data_dir / POINTER)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def rebuild_path(data_dir: Path, operation_id: str) -> Path:
    return data_dir / f"records-{operation_id}.db"


def switch_to(data_dir: Path, path: Path) -> None:
    """Point readers at `path` (a file in data_dir): durable once this returns."""
    tmp = data_dir / (POINTER + ".tmp")
    with open(tmp, "w") as f:
        f.write(path.name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, data_dir / POINTER)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Delete an SQLite database with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
