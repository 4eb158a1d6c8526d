"""Durable-file helpers shared by the WAL, the snapshotter and the backend.

POSIX makes a file's content durable only once the file is fsynced, and a rename or unlink only
once the directory holding it is fsynced. These helpers do both, in that order, so that after a
crash a reader finds either the old file or the complete new one, never a mix. Temporary files
end in TEMP_SUFFIX so that the owner of a directory can remove the ones a crash left behind.
"""

import os
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of `data` to `fd` (os.write may write fewer bytes than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that a crash leaves the old content or the new, whole.

    Writes `path` + TEMP_SUFFIX, fsyncs it, renames it over `path` and fsyncs the directory.
    """
    path = Path(path)
    tmp = path.with_name(path.name + TEMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_temp_files(directory: Path, pattern: str) -> list[Path]:
    """Delete the files in `directory` matching glob `pattern` (which should end in TEMP_SUFFIX).

    Returns what was removed. Used on open to clear what an interrupted atomic_write left.
    """
    removed = sorted(p for p in Path(directory).glob(pattern) if p.is_file())
    for p in removed:
        p.unlink()
    if removed:
        fsync_dir(Path(directory))
    return removed
