"""Shard snapshots: a ShardCore's users as flat numeric arrays in checksummed files.

A snapshot is a directory ``root/NAME`` holding one uncompressed ``.npz`` per *part* (the
arrays of one shard; a snapshot written whole by ``write_snapshot`` has the single part
``"shard"``) and ``manifest.json``: the caller's meta and each part's file, size and CRC32C,
itself checksummed. It is built in ``root/.tmp-NAME-XXXXXXXX``: each part is fsynced as it is
written, the manifest last, then the directory is renamed to ``NAME`` and ``root`` is fsynced.
A directory with a final name is therefore complete; a crash leaves a temporary directory,
which ``list_snapshots`` ignores and ``remove_stale_temp`` deletes.

Several shards write one snapshot together (a part's manifest entry may carry more JSON,
such as that shard's meta)::

    tmp = begin_snapshot(root, name)
    parts = {}
    for part, core in shards.items():
        arrays, meta = core_snapshot(core)
        parts[part] = {**write_part(tmp, part, arrays), "meta": meta}
    finish_snapshot(root, tmp, name, {"lsn": lsn}, parts)
    ...
    manifest = read_manifest(path)
    for part, info in manifest["parts"].items():
        restore_core(shards[part], read_part(path, part, manifest), info["meta"])

Nothing is pickled. Strings travel as UTF-8 bytes plus int64 offsets; the names of event
types, properties, traits and segments (any text: NUL and "/" included, as in the hidden
score traits ``"\\x00score:NAME"``) sit in one names table that array keys refer to by index.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import crc32c
import numpy as np

from ..errors import EngineError, UnknownModel, UnknownSegment
from engine.durability.files import fsync_dir

FORMAT = 1
WHOLE = "shard"             # the one part of a snapshot written by write_snapshot
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
_PART_SUFFIX = ".npz"
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")
_CHUNK = 1 << 24
_STATE_KEYS = {"user_ids", "events", "traits", "members", "timers", "string_codes", "strings"}


class SnapshotCorrupt(EngineError):
    """A snapshot that cannot be trusted: a file missing, truncated, changed or unreadable."""

    def __init__(self, path, reason: str):
        self.path = None if path is None else Path(path)
        self.reason = reason
        where = f"snapshot {self.path}" if path is not None else "snapshot arrays"
        super().__init__(f"{where} is corrupt: {reason}; recover from an older snapshot")


# ----------------------------------------------------------------------------- flat arrays


def _encode_strings(strings, out: dict, key: str) -> None:
    """``key.utf8`` (the UTF-8 bytes back to back) and ``key.offsets`` (int64[n + 1])."""
    strings = list(strings)
    joined = "\0".join(strings).encode("utf-8", "surrogatepass")
    buf = np.frombuffer(joined, np.uint8)
    seps = np.flatnonzero(buf == 0)
    if len(seps) == max(len(strings) - 1, 0):
        # no string holds a NUL (user ids and string values never do): split in numpy
        ends = np.concatenate([seps, [len(buf)]]) if strings else np.zeros(0, np.int64)
        lengths = ends - np.concatenate([[0], seps + 1]) if strings else ends
        blob = buf[buf != 0] if len(seps) else buf.copy()
    else:
        parts = [s.encode("utf-8", "surrogatepass") for s in strings]
        lengths = np.array([len(p) for p in parts], np.int64)
        blob = np.frombuffer(b"".join(parts), np.uint8).copy()
    offsets = np.zeros(len(strings) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out[key + ".utf8"] = blob
    out[key + ".offsets"] = offsets


def _decode_strings(arrays, key: str) -> list[str]:
    blob = _get(arrays, key + ".utf8", np.uint8)
    offsets = _get(arrays, key + ".offsets", np.int64)
    n = len(offsets) - 1
    if n < 0 or offsets[0] != 0 or offsets[-1] != len(blob) or np.any(np.diff(offsets) < 0):
        raise SnapshotCorrupt(None, f"{key}: offsets do not describe the bytes")
    if n == 0:
        return []
    if not np.any(blob == 0):
        joined = np.insert(blob, offsets[1:-1], 0)   # NUL-separated: one decode, one split
        return joined.tobytes().decode("utf-8", "surrogatepass").split("\0")
    data = blob.tobytes()
    return [data[a:b].decode("utf-8", "surrogatepass") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def _get(arrays, key: str, kind) -> np.ndarray:
    try:
        a = arrays[key]
    except KeyError:
        raise SnapshotCorrupt(None, f"array {key!r} is missing") from None
    a = np.asarray(a)
    if a.ndim != 1:
        raise SnapshotCorrupt(None, f"array {key!r} has shape {a.shape}, expected 1-D")
    if kind is np.int64 and a.dtype.kind in "iu":
        return a.astype(np.int64, copy=False)
    if a.dtype != np.dtype(kind):
        raise SnapshotCorrupt(None, f"array {key!r} is {a.dtype}, expected {np.dtype(kind)}")
    return a


def _small_ints(a: np.ndarray) -> np.ndarray:
    """Non-negative int64 values as int32 when they fit (read back as int64)."""
    return a.astype(np.int32) if not len(a) or int(a.max()) < 2**31 else a


class _Names:
    """The names table: each distinct name gets an index, in order of first use."""

    def __init__(self):
        self.index: dict[str, int] = {}

    def __call__(self, names) -> np.ndarray:
        return np.array([self.index.setdefault(n, len(self.index)) for n in names], np.int64)


def flatten_state(state: dict) -> dict[str, np.ndarray]:
    """An ``export_slots`` dict as a flat mapping of keys to 1-D numeric arrays (no objects).

    Keys are fixed or index-based (``events.0.col.1``); the names they stand for are in the
    ``names`` table. Float values keep their bit patterns (they are NaN-boxed). Event owners
    that come grouped by user (as ``export_slots`` gives them) are stored as a count per
    user, segment members as a bitmap when that is smaller.
    """
    unknown = set(state) - _STATE_KEYS
    if unknown:
        raise ValueError(f"flatten_state: unexpected keys {sorted(unknown)}")
    out: dict[str, np.ndarray] = {"format": np.array([FORMAT], np.int64)}
    names = _Names()
    user_ids = list(state["user_ids"])
    n = len(user_ids)
    _encode_strings(user_ids, out, "users")
    out["timers"] = np.ascontiguousarray(state["timers"], np.int64)
    out["string_codes"] = np.ascontiguousarray(state["string_codes"], np.int64)
    _encode_strings(state["strings"], out, "strings")
    if len(out["timers"]) != n:
        raise ValueError("flatten_state: one timer per user expected")

    events = list(state["events"].items())
    out["events.types"] = names(t for t, _ in events)
    for i, (_, ev) in enumerate(events):
        p = f"events.{i}."
        owner = np.ascontiguousarray(ev["owner"], np.int64)
        if len(owner) and (owner.min() < 0 or owner.max() >= n):
            raise ValueError("flatten_state: an event owner is not a user index")
        if np.all(owner[1:] >= owner[:-1]):
            out[p + "per_user"] = _small_ints(np.bincount(owner, minlength=n))
        else:
            out[p + "owner"] = owner
        out[p + "timestamp_ms"] = np.ascontiguousarray(ev["timestamp_ms"], np.int64)
        cols = list(ev["columns"].items())
        out[p + "columns"] = names(c for c, _ in cols)
        for j, (_, v) in enumerate(cols):
            out[p + f"col.{j}"] = np.ascontiguousarray(v, np.float64)

    traits = list(state["traits"].items())
    out["traits.names"] = names(t for t, _ in traits)
    for i, (_, v) in enumerate(traits):
        out[f"traits.{i}"] = np.ascontiguousarray(v, np.float64)

    members = list(state["members"].items())
    out["members.names"] = names(m for m, _ in members)
    for i, (_, idx) in enumerate(members):
        idx = np.ascontiguousarray(idx, np.int64)
        if len(idx) * 64 > n and np.all(idx[1:] > idx[:-1]) and (not len(idx) or (idx[0] >= 0 and idx[-1] < n)):
            mask = np.zeros(n, np.bool_)
            mask[idx] = True
            out[f"members.{i}.bits"] = np.packbits(mask)
        else:
            out[f"members.{i}.index"] = idx
    _encode_strings(list(names.index), out, "names")
    return out


def unflatten_state(arrays) -> dict:
    """The ``export_slots`` dict back from ``flatten_state``'s arrays (raises
    SnapshotCorrupt, with no path, when they are malformed)."""
    fmt = _get(arrays, "format", np.int64)
    if len(fmt) != 1 or int(fmt[0]) != FORMAT:
        raise SnapshotCorrupt(None, f"format {fmt.tolist()} is not {FORMAT}")
    table = _decode_strings(arrays, "names")

    def names(key):
        idx = _get(arrays, key, np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(table)):
            raise SnapshotCorrupt(None, f"{key}: a name index is out of range")
        return [table[i] for i in idx.tolist()]

    user_ids = _decode_strings(arrays, "users")
    n = len(user_ids)
    timers = _get(arrays, "timers", np.int64)
    if len(timers) != n:
        raise SnapshotCorrupt(None, "timers: one per user expected")

    events = {}
    for i, t in enumerate(names("events.types")):
        p = f"events.{i}."
        ts = _get(arrays, p + "timestamp_ms", np.int64)
        if p + "per_user" in arrays:
            counts = _get(arrays, p + "per_user", np.int64)
            if len(counts) != n or counts.sum() != len(ts) or np.any(counts < 0):
                raise SnapshotCorrupt(None, f"{p}per_user does not match the events")
            owner = np.repeat(np.arange(n, dtype=np.int64), counts)
        else:
            owner = _get(arrays, p + "owner", np.int64)
        columns = {}
        for j, c in enumerate(names(p + "columns")):
            columns[c] = _get(arrays, p + f"col.{j}", np.float64)
        if len(owner) != len(ts) or any(len(v) != len(ts) for v in columns.values()):
            raise SnapshotCorrupt(None, f"{p}: columns of different lengths")
        events[t] = {"owner": owner, "timestamp_ms": ts, "columns": columns}

    traits = {}
    for i, name in enumerate(names("traits.names")):
        traits[name] = _get(arrays, f"traits.{i}", np.float64)
        if len(traits[name]) != n:
            raise SnapshotCorrupt(None, f"traits.{i}: one value per user expected")

    members = {}
    for i, name in enumerate(names("members.names")):
        if f"members.{i}.bits" in arrays:
            bits = _get(arrays, f"members.{i}.bits", np.uint8)
            if len(bits) != (n + 7) // 8:
                raise SnapshotCorrupt(None, f"members.{i}.bits: wrong length")
            members[name] = np.flatnonzero(np.unpackbits(bits, count=n)).astype(np.int64)
        else:
            members[name] = _get(arrays, f"members.{i}.index", np.int64)

    strings = _decode_strings(arrays, "strings")
    codes = _get(arrays, "string_codes", np.int64)
    if len(codes) != len(strings):
        raise SnapshotCorrupt(None, "string_codes: one code per string expected")
    return {"user_ids": user_ids, "events": events, "traits": traits, "members": members,
            "timers": timers, "string_codes": codes, "strings": strings}


# ----------------------------------------------------------------------------- files


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.startswith(TMP_PREFIX):
        raise ValueError(f"{what} name {name!r} must be 1-200 of A-Z a-z 0-9 _ . - and not start with '.'")


class _Checksummed:
    """A write-only file that keeps the size and CRC32C of what went through it. It has no
    ``seek``, so zipfile streams each member (sizes in data descriptors) instead of going
    back to patch headers, and the checksum is of the final bytes."""

    def __init__(self, f):
        self._f = f
        self.size = 0
        self.crc = 0

    def write(self, data) -> int:
        self.crc = crc32c.crc32c(data, self.crc)
        n = self._f.write(data)
        self.size += n
        return n

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()


def begin_snapshot(root, name: str) -> Path:
    """A new temporary directory ``root/.tmp-NAME-XXXXXXXX`` to write parts into."""
    _check_name(name, "snapshot")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if (root / name).exists():
        raise FileExistsError(f"snapshot {root / name} already exists")
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=root))


def write_part(tmp_dir, part_name: str, arrays: dict[str, np.ndarray]) -> dict:
    """Write one part (e.g. one shard's arrays) as an uncompressed ``PART.npz`` in the
    temporary directory of ``begin_snapshot``, fsynced. Returns its manifest entry
    ``{"file", "size", "crc32c"}``."""
    _check_name(part_name, "part")
    file = part_name + _PART_SUFFIX
    path = Path(tmp_dir) / file
    with open(path, "xb") as f:
        out = _Checksummed(f)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, a in arrays.items():
                a = np.asarray(a)
                if not isinstance(key, str) or not key or a.dtype.hasobject:
                    raise ValueError(f"part {part_name!r}: array {key!r} must have a name and a numeric dtype")
                with zf.open(key + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, a, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"file": file, "size": out.size, "crc32c": out.crc}


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def finish_snapshot(root, tmp_dir, name: str, meta: dict, parts: dict[str, dict]) -> Path:
    """Write the manifest (``meta`` and the parts' entries, from ``write_part`` plus any
    JSON-able keys, e.g. a shard's own meta) and move the temporary directory to
    ``root/NAME`` atomically. Returns the snapshot's path."""
    _check_name(name, "snapshot")
    root, tmp_dir = Path(root), Path(tmp_dir)
    if tmp_dir.parent.resolve() != root.resolve() or not tmp_dir.name.startswith(TMP_PREFIX):
        raise ValueError(f"{tmp_dir} is not a temporary snapshot directory of {root}")
    for part, info in parts.items():
        _check_name(part, "part")
        if info["file"] != part + _PART_SUFFIX or (tmp_dir / info["file"]).stat().st_size != info["size"]:
            raise ValueError(f"part {part!r} does not match its file in {tmp_dir}")
    body = {"format": FORMAT, "name": name, "meta": meta,
            "parts": {p: {**i, "size": int(i["size"]), "crc32c": int(i["crc32c"])} for p, i in parts.items()}}
    doc = {"manifest": body, "crc32c": crc32c.crc32c(_canonical(body))}
    with open(tmp_dir / MANIFEST, "x", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp_dir)
    final = root / name
    if final.exists():
        raise FileExistsError(f"snapshot {final} already exists")
    os.rename(tmp_dir, final)
    fsync_dir(root)
    return final


def write_snapshot(root, name: str, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """A snapshot of one part (``"shard"``) written atomically: ``root/NAME``."""
    tmp = begin_snapshot(root, name)
    try:
        info = write_part(tmp, WHOLE, arrays)
        return finish_snapshot(root, tmp, name, meta, {WHOLE: info})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(path) -> dict:
    """The checked manifest ``{"format", "name", "meta", "parts"}`` of a snapshot directory.
    Raises SnapshotCorrupt when it is missing, unreadable or altered, when a part's file is
    missing or the wrong size, or when the directory holds anything else."""
    path = Path(path)
    try:
        raw = (path / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise SnapshotCorrupt(path, f"{MANIFEST} is missing") from None
    except OSError as err:
        raise SnapshotCorrupt(path, f"{MANIFEST} cannot be read ({err})") from None
    try:
        doc = json.loads(raw)
        body, crc = doc["manifest"], doc["crc32c"]
        ok = crc32c.crc32c(_canonical(body)) == crc
    except (ValueError, KeyError, TypeError):
        raise SnapshotCorrupt(path, f"{MANIFEST} is not a valid manifest") from None
    if not ok:
        raise SnapshotCorrupt(path, f"{MANIFEST} does not match its checksum")
    if not isinstance(body, dict):
        raise SnapshotCorrupt(path, f"{MANIFEST} is not a valid manifest")
    if body.get("format") != FORMAT:
        raise SnapshotCorrupt(path, f"format {body.get('format')!r} is not {FORMAT}")
    parts = body.get("parts")
    if not isinstance(parts, dict):
        raise SnapshotCorrupt(path, f"{MANIFEST} lists no parts")
    files = {MANIFEST}
    for part, info in parts.items():
        if (not isinstance(info, dict) or info.get("file") != f"{part}{_PART_SUFFIX}"
                or not isinstance(info.get("size"), int) or not isinstance(info.get("crc32c"), int)):
            raise SnapshotCorrupt(path, f"part {part!r} has a bad manifest entry")
        files.add(info["file"])
    present = set(os.listdir(path))
    if files - present:
        raise SnapshotCorrupt(path, f"missing file(s) {sorted(files - present)}")
    if present - files:
        raise SnapshotCorrupt(path, f"unexpected file(s) {sorted(present - files)}")
    return body


def _verify(path: Path, info: dict) -> None:
    file = path / info["file"]
    crc = 0
    size = 0
    with open(file, "rb") as f:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while True:
            k = f.readinto(buf)
            if not k:
                break
            crc = crc32c.crc32c(view[:k], crc)
            size += k
    if size != info["size"]:
        raise SnapshotCorrupt(path, f"{info['file']} has {size} bytes, the manifest says {info['size']}")
    if crc != info["crc32c"]:
        raise SnapshotCorrupt(path, f"{info['file']} does not match its checksum")


def read_part(snapshot_path, part_name: str, manifest: dict | None = None) -> dict[str, np.ndarray]:
    """One part's arrays, after checking its size and CRC32C against the manifest."""
    path = Path(snapshot_path)
    body = read_manifest(path) if manifest is None else manifest
    info = body["parts"].get(part_name)
    if info is None:
        raise SnapshotCorrupt(path, f"it has no part {part_name!r}")
    _verify(path, info)
    try:
        with np.load(path / info["file"], allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise SnapshotCorrupt(path, f"{info['file']} cannot be loaded ({err})") from None


def read_snapshot(path, part: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of a snapshot: of its only part, or of ``part``. Raises
    SnapshotCorrupt on any mismatch."""
    body = read_manifest(path)
    if part is None:
        if len(body["parts"]) != 1:
            raise ValueError(f"snapshot {path} has {len(body['parts'])} parts: say which one to read")
        (part,) = body["parts"]
    return body["meta"], read_part(path, part, body)


def list_snapshots(root) -> list[Path]:
    """Complete snapshot directories of ``root`` (a manifest present), newest first by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if not p.name.startswith(".") and p.is_dir() and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def remove_stale_temp(root) -> int:
    """Delete the temporary directories a crash left in ``root`` (call it before writing
    snapshots: it would also delete one being written). Returns how many."""
    root = Path(root)
    if not root.is_dir():
        return 0
    stale = [p for p in root.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


def prune_snapshots(root, keep: int = 2) -> list[Path]:
    """Delete all but the ``keep`` newest snapshots; returns the deleted paths. Each is first
    renamed to a temporary name, so a half-deleted snapshot is never listed."""
    if keep < 1:
        raise ValueError("prune_snapshots must keep at least one snapshot")
    root = Path(root)
    old = list_snapshots(root)[keep:]
    for p in old:
        doomed = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{p.name}-deleted-", dir=root))
        os.rename(p, doomed / p.name)
        fsync_dir(root)
        shutil.rmtree(doomed, ignore_errors=True)
    return old


# ----------------------------------------------------------------------------- shard cores


def core_snapshot(core) -> tuple[dict[str, np.ndarray], dict]:
    """Every user of a ShardCore as flat arrays, and the small meta that goes with them
    (counters, configuration, the segments and models it was taken with)."""
    from .._shard import run_steps

    return run_steps(core_snapshot_steps(core))


def core_snapshot_steps(core):
    """``core_snapshot`` as a generator of steps (``ShardCore.export_steps``) that returns
    its result: the caller may let reads in between two, never a change of the state."""
    from ..kernels._strings import NUM_SLOTS

    state = yield from core.export_steps(range(NUM_SLOTS))
    meta = {
        "format": FORMAT,
        "users": len(state["user_ids"]),
        "events": int(sum(len(ev["owner"]) for ev in state["events"].values())),
        "events_accepted": int(core.events_accepted),
        "counters": [int(c) for c in core.counters],
        "last_compact_ms": core._last_compact_ms,
        "retention_ms": int(core.retention_ms),
        "max_events_per_type": int(core.max_per),
        "segments": sorted(core.defs),
        "models": sorted(core.models),
        "rfm": {k: list(v) for k, v in core.rfm.items()},
    }
    return flatten_state(state), meta


def restore_core(core, arrays: dict[str, np.ndarray], meta: dict) -> int:
    """Import a ``core_snapshot`` into ``core``, which the caller has given the same
    segments (created in topological order) and models. Counters add up, so several parts
    may be restored into one core. Returns the users imported."""
    state = unflatten_state(arrays)
    missing = sorted(set(state["members"]) - set(core.slots))
    if missing:
        raise UnknownSegment(f"restore: segment(s) {missing} are not defined on this shard; create them first")
    extra = sorted(set(core.slots) - set(state["members"]))
    if extra:
        raise ValueError(f"restore: segment(s) {extra} are not in the snapshot; create them after restoring "
                         "(their backfill needs the restored users)")
    models = sorted(set(meta.get("models", ())) - set(core.models))
    if models:
        raise UnknownModel(f"restore: model(s) {models} are not deployed on this shard; deploy them first")
    if meta.get("rfm"):
        # the boundaries the members were computed with (no evaluation: they are restored)
        core.rfm.update({k: [float(x) for x in v] for k, v in meta["rfm"].items()})
        core.plan = core._rebuild()
    before = core.counters.copy()
    n = core.import_state(state)
    core.counters[:] = before + np.asarray(meta["counters"], np.int64)
    core.events_accepted += int(meta["events_accepted"])
    if core._last_compact_ms is None:
        core._last_compact_ms = meta.get("last_compact_ms")
    return n
