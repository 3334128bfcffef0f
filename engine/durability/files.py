"""File helpers shared by the log, the snapshots and the model registry."""

from __future__ import annotations

import os


def fsync_dir(path) -> None:
    """Make a directory's entries (files created, renamed, deleted) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
