"""Model versions, in memory and under the data dir.

Layout: ``ROOT/models/<dir>/v<N>/{model.onnx, report.json, meta.json}``, where ``<dir>`` is a
readable slug of the model name plus a hash of it (a name may hold any character and up to
200 of them; a directory name may not) and ``meta.json`` carries the real name. A version is
written to a temporary directory and renamed into place, so a crash leaves either the whole
version or none of it; a deletion renames the model's directory away before removing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from engine.durability.files import fsync_dir
from engine.errors import ModelError, UnknownModel
from scoring.spec import CurvePoint, Deployment, ModelReport, ModelSpec

log = logging.getLogger(__name__)

FORMAT = 1
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")
_TEMP_PREFIXES = (".tmp-", ".deleted-")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    spec: ModelSpec | None      # None for a user-supplied model
    deployment: Deployment
    report: ModelReport


def model_dir_name(name: str) -> str:
    """The directory of model ``name`` under ROOT/models: safe on every file system
    (lower case, no separators, bounded length) and distinct per name."""
    slug = re.sub(r"[^a-z0-9_-]+", "_", name.lower()).strip("_-")[:48] or "model"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
    return f"{slug}-{digest}"


TRASH = ".trash"


class ModelRegistry:
    """Every model's versions; with a ``root``, persisted as they are saved."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = None if root is None else Path(root)
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._high: dict[str, int] = {}  # survives delete, so a re-created model never reuses a version
        self._trash: dict[str, dict[int, ModelVersion]] = {}   # deleted, still needed by the log
        self._lock = threading.RLock()
        if self.root is not None:
            self._models_dir.mkdir(parents=True, exist_ok=True)

    @property
    def _models_dir(self) -> Path:
        return self.root / "models"

    # ------------------------------------------------------------------ queries

    def __contains__(self, name) -> bool:
        return name in self._models

    def __len__(self) -> int:
        return len(self._models)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._versions(name))

    def latest(self, name: str) -> ModelVersion:
        with self._lock:
            versions = self._versions(name)
            return versions[max(versions)]

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """The latest version of ``name``, or the given one."""
        with self._lock:
            versions = self._versions(name)
            if version is None:
                return versions[max(versions)]
            if version not in versions:
                listed = ", ".join(map(str, sorted(versions)))
                raise UnknownModel(f"model {name!r} has no version {version} (versions: {listed})")
            return versions[version]

    def next_version(self, name: str) -> int:
        with self._lock:
            return max([self._high.get(name, 0), *self._models.get(name, {})]) + 1

    def _versions(self, name: str) -> dict[int, ModelVersion]:
        versions = self._models.get(name)
        if not versions:
            raise UnknownModel(f"no model named {name!r}")
        return versions

    # ------------------------------------------------------------------ changes

    def save(self, mv: ModelVersion) -> None:
        """Add a version (written atomically when the registry has a root). Versions are
        immutable: saving one that exists is refused."""
        if not (mv.name == mv.deployment.name == mv.report.name):
            raise ModelError(f"model version names disagree: {mv.name!r}, deployment {mv.deployment.name!r}, "
                             f"report {mv.report.name!r}")
        if not (mv.version == mv.deployment.version == mv.report.version) or mv.version < 1:
            raise ModelError(f"model version numbers disagree or are not positive: {mv.version}, "
                             f"deployment {mv.deployment.version}, report {mv.report.version}")
        with self._lock:
            if mv.version in self._models.get(mv.name, {}):
                raise ModelError(f"model {mv.name!r} already has a version {mv.version}")
            if self.root is not None:
                self._write(mv)
            self._models.setdefault(mv.name, {})[mv.version] = mv
            self._high[mv.name] = max(self._high.get(mv.name, 0), mv.version)

    def delete(self, name: str) -> ModelVersion:
        """Forget every version of ``name``; returns the latest. On disk the versions move to
        ``models/.trash/`` rather than away: the write-ahead log may still hold frames that
        deploy them, which a restart replays until a snapshot covers them
        (:meth:`purge_trash`)."""
        with self._lock:
            latest = self.latest(name)
            if self.root is not None:
                path = self._models_dir / model_dir_name(name)
                if path.exists():
                    trash = self._models_dir / TRASH
                    trash.mkdir(exist_ok=True)
                    os.replace(path, trash / f"{model_dir_name(name)}-{uuid.uuid4().hex}")
                    fsync_dir(trash)
                    fsync_dir(self._models_dir)
            for v, mv in self._models.pop(name).items():
                self._trash.setdefault(name, {})[v] = mv
            return latest

    def version_for_replay(self, name: str, version: int) -> ModelVersion:
        """A version, also one deleted since (kept until a snapshot covers its frames)."""
        with self._lock:
            found = self._models.get(name, {}).get(version) or self._trash.get(name, {}).get(version)
            if found is None:
                raise UnknownModel(f"model {name!r} version {version} is neither kept nor deleted "
                                   "recently (a log frame needs it)")
            return found

    def purge_trash(self, older_than: float) -> int:
        """Remove deleted versions moved to the trash before ``older_than`` (a time): every
        snapshot kept is newer, so no frame to replay needs them. -> directories removed."""
        if self.root is None:
            return 0
        trash = self._models_dir / TRASH
        if not trash.is_dir():
            return 0
        n = 0
        for d in list(trash.iterdir()):
            if d.stat().st_mtime < older_than:
                shutil.rmtree(d, ignore_errors=True)
                n += 1
        return n

    # ------------------------------------------------------------------ disk

    def _write(self, mv: ModelVersion) -> None:
        model_dir = self._models_dir / model_dir_name(mv.name)
        model_dir.mkdir(parents=True, exist_ok=True)
        final = model_dir / f"v{mv.version}"
        if final.exists():
            raise ModelError(f"model {mv.name!r} version {mv.version} already exists on disk at {final}")
        tmp = model_dir / f".tmp-v{mv.version}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            dep = mv.deployment
            meta = {
                "format": FORMAT, "name": mv.name, "version": mv.version,
                "spec": None if mv.spec is None else mv.spec.to_dict(),
                "features": list(dep.features), "transform": dep.transform,
                "curve": [p.to_dict() for p in dep.curve],
                "buckets": {"high": dep.bucket_high, "medium": dep.bucket_medium},
                "onnx_sha256": hashlib.sha256(dep.onnx).hexdigest(),
            }
            _write_file(tmp / "model.onnx", dep.onnx)
            _write_file(tmp / "report.json", json.dumps(mv.report.to_dict(), indent=1).encode())
            _write_file(tmp / "meta.json", json.dumps(meta, indent=1).encode())
            fsync_dir(tmp)
            os.rename(tmp, final)
            fsync_dir(model_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, root: str | os.PathLike) -> "ModelRegistry":
        """A registry with every version found under ``root`` (a version that cannot be read
        is logged and skipped; leftovers of interrupted writes are removed)."""
        reg = cls(root)
        trash = reg._models_dir / TRASH
        for model_dir in sorted(trash.iterdir()) if trash.is_dir() else ():
            for vdir in sorted(model_dir.iterdir()):
                m = _VERSION_DIR.match(vdir.name)
                if m and vdir.is_dir():
                    try:
                        mv = _read_version(vdir, int(m.group(1)))
                    except Exception as e:  # noqa: BLE001
                        log.warning("skipping unreadable deleted model version %s: %s", vdir, e)
                        continue
                    reg._trash.setdefault(mv.name, {})[mv.version] = mv
                    reg._high[mv.name] = max(reg._high.get(mv.name, 0), mv.version)
        for model_dir in sorted(reg._models_dir.iterdir()):
            if model_dir.name.startswith(_TEMP_PREFIXES):
                shutil.rmtree(model_dir, ignore_errors=True)
                continue
            if not model_dir.is_dir() or model_dir.name.startswith("."):
                continue
            for vdir in sorted(model_dir.iterdir()):
                if vdir.name.startswith(_TEMP_PREFIXES):
                    shutil.rmtree(vdir, ignore_errors=True)
                    continue
                m = _VERSION_DIR.match(vdir.name)
                if not m or not vdir.is_dir():
                    continue
                try:
                    mv = _read_version(vdir, int(m.group(1)))
                except Exception as e:
                    log.warning("skipping unreadable model version %s: %s", vdir, e)
                    continue
                if mv.version in reg._models.get(mv.name, {}):
                    log.warning("skipping %s: model %r version %d was already loaded", vdir, mv.name, mv.version)
                    continue
                reg._models.setdefault(mv.name, {})[mv.version] = mv
                reg._high[mv.name] = max(reg._high.get(mv.name, 0), mv.version)
        return reg


def _read_version(vdir: Path, version: int) -> ModelVersion:
    meta = json.loads((vdir / "meta.json").read_text("utf-8"))
    if meta.get("format") != FORMAT:
        raise ModelError(f"unknown format {meta.get('format')!r}")
    if int(meta["version"]) != version:
        raise ModelError(f"meta.json says version {meta['version']}, the directory v{version}")
    onnx = (vdir / "model.onnx").read_bytes()
    if hashlib.sha256(onnx).hexdigest() != meta.get("onnx_sha256"):
        raise ModelError("model.onnx does not match the checksum in meta.json")
    report = ModelReport.from_dict(json.loads((vdir / "report.json").read_text("utf-8")))
    name = meta["name"]
    buckets = meta.get("buckets", {})
    dep = Deployment(name=name, version=version, onnx=onnx, features=tuple(meta["features"]),
                     transform=meta["transform"], curve=tuple(CurvePoint.from_dict(p) for p in meta.get("curve", ())),
                     bucket_high=float(buckets.get("high", report.bucket_high)),
                     bucket_medium=float(buckets.get("medium", report.bucket_medium)))
    spec = None if meta.get("spec") is None else ModelSpec.from_dict(meta["spec"])
    return ModelVersion(name=name, version=version, spec=spec, deployment=dep, report=report)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
