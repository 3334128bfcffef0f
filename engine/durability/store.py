"""A data directory: the write-ahead log of frames plus the snapshots that let it be cut.

Layout under ``data_dir``::

    wal/wal-<first lsn>.log         frames (``wal.py``), every accepted change in order
    snapshots/snap-<lsn>/           every shard's arrays and the gateway's state as of log
                                    position <lsn> (``snapshot.py``), written atomically
    models/                         model versions (``scoring.registry``)

Recovery = the newest complete snapshot whose files check out, then the frames logged after
its position. Two snapshots are kept, and the log from the older one on, so that a snapshot
found corrupt falls back to the one before with nothing lost.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from engine.durability import frames as F

log = logging.getLogger("rtseg.durability")

FSYNC_POLICIES = ("always", "interval", "never")
KEEP_SNAPSHOTS = 2


@dataclass
class SnapshotRef:
    path: Path
    lsn: int
    meta: dict


class DurableStore:
    def __init__(self, data_dir: str | os.PathLike, *, fsync: str = "interval",
                 fsync_interval_ms: int = 10, segment_bytes: int = 64 << 20):
        from engine.durability import snapshot as S
        from engine.durability.wal import WriteAheadLog

        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        self.root = Path(data_dir)
        self.wal_dir = self.root / "wal"
        self.snap_dir = self.root / "snapshots"
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self.snap_dir.mkdir(parents=True, exist_ok=True)
        S.remove_stale_temp(self.snap_dir)
        try:
            self.wal = WriteAheadLog(self.wal_dir, fsync=fsync, fsync_interval_ms=fsync_interval_ms,
                                     segment_bytes=segment_bytes)
        except BlockingIOError:
            from engine.errors import ConfigError

            raise ConfigError(f"the data dir {self.root} is in use by another rtseg server or engine; "
                              "give each one its own --data-dir") from None
        self.fsync = fsync
        self._begun: dict[Path, str] = {}        # snapshots being written: temp dir -> name
        self.bytes_at_snapshot = self._log_bytes()

    # ------------------------------------------------------------------ logging

    def append(self, frames: list[F.Frame]) -> int:
        """Log frames (buffered; group commit) -> the last one's position."""
        return self.wal.append_many([F.to_record(f) for f in frames])

    async def durable(self, lsn: int) -> None:
        await self.wal.await_durable(lsn)

    def wait(self, lsn: int) -> None:
        self.wal.wait(lsn)

    @property
    def last_lsn(self) -> int:
        return self.wal.last_lsn

    def log_bytes_since_snapshot(self) -> int:
        return max(0, self._log_bytes() - self.bytes_at_snapshot)

    def _log_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.wal_dir.glob("wal-*.log"))

    def close(self) -> None:
        self.wal.close()

    # ------------------------------------------------------------------ recovery

    def snapshots(self) -> list[SnapshotRef]:
        """Complete snapshots, newest first."""
        from engine.durability import snapshot as S

        out = []
        for path in S.list_snapshots(self.snap_dir):
            try:
                meta = S.read_manifest(path)["meta"]
            except S.SnapshotCorrupt as err:
                log.warning("snapshot %s is unusable (%s); trying the one before", path, err)
                continue
            out.append(SnapshotRef(Path(path), int(meta["lsn"]), meta))
        return out

    def frames_after(self, lsn: int, retention_ms: int) -> Iterator[tuple[int, F.Frame]]:
        """Logged frames after position ``lsn``, in order (a torn tail is cut off, with a
        warning, by the log reader). A gap after ``lsn`` refuses: acknowledged frames would
        be skipped silently."""
        from engine.durability.wal import read_log

        expected = lsn + 1
        for pos, rec in read_log(self.wal_dir, after_lsn=lsn):
            if pos != expected:
                raise RuntimeError(f"the log in {self.wal_dir} resumes at position {pos}, not {expected}: "
                                   "frames are missing; refusing to start with silently lost data")
            expected += 1
            yield pos, F.from_record(rec, retention_ms)

    def snapshot_contents(self, meta: dict, retention_ms: int, registry) -> tuple[list, list]:
        """A snapshot's segment definitions (compiled, dependencies first) and the
        Deployments of its models (from the model registry)."""
        defs = [F.segment_from_record(r, retention_ms) for r in meta["segments"]]
        deps = [registry.version_for_replay(name, int(v)).deployment for name, v in meta["models"]]
        return defs, deps

    # ------------------------------------------------------------------ snapshots

    def begin_snapshot(self, lsn: int) -> Path:
        """A temporary directory for the parts of a snapshot at position ``lsn``; the log
        goes on in a new segment file, so that older files can be deleted later."""
        from engine.durability import snapshot as S

        self.wal.rotate()
        k = 0
        while (self.snap_dir / snapshot_name(lsn, k)).exists() or snapshot_name(lsn, k) in self._begun.values():
            k += 1     # the same position again (e.g. after scaling): a newer name
        tmp = Path(S.begin_snapshot(self.snap_dir, snapshot_name(lsn, k)))
        self._begun[tmp] = snapshot_name(lsn, k)
        return tmp

    def finish_snapshot(self, tmp: Path, lsn: int, meta: dict, parts: dict) -> Path:
        """Make the snapshot complete (atomic rename), then drop what it makes unneeded:
        snapshots beyond the newest ``KEEP_SNAPSHOTS`` and log files before the oldest kept."""
        from engine.durability import snapshot as S

        meta = dict(meta, lsn=int(lsn))
        path = Path(S.finish_snapshot(self.snap_dir, tmp, self._begun.pop(Path(tmp)), meta, parts))
        S.prune_snapshots(self.snap_dir, keep=KEEP_SNAPSHOTS)
        kept = self.snapshots()
        if len(kept) >= 1:
            oldest = min(k.lsn for k in kept)
            self.wal.truncate_before(oldest + 1)
        self.bytes_at_snapshot = self._log_bytes()
        return path

    def oldest_snapshot_time(self) -> float:
        """When the oldest kept snapshot was written (0: none): anything deleted before it
        is needed by no frame that a restart may replay."""
        kept = self.snapshots()
        return min((k.path.stat().st_mtime for k in kept), default=0.0)

    def abandon_snapshot(self, tmp: Path) -> None:
        import shutil

        self._begun.pop(Path(tmp), None)
        shutil.rmtree(tmp, ignore_errors=True)


def snapshot_name(lsn: int, k: int = 0) -> str:
    """Sorts by log position, then by the order of snapshots at one position."""
    return f"snap-{int(lsn):020d}-{k:04d}"
