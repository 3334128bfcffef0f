"""Shard snapshots (engine/durability/snapshot.py): flat arrays, files, and restored cores.

* ``flatten_state`` / ``unflatten_state`` round-trip random export states exactly (float bit
  patterns included), whatever the names hold ("\\x00", "/", any Unicode).
* Differential: a ShardCore A runs a random operation script; at a random step it is
  snapshotted to disk and a core B is rebuilt from the files (same segments, same model).
  From there on both get the same operations and must give the same deltas at every step and
  end with the same members, user views and counters.
* Files: truncation, bit flips, a missing or altered manifest, a missing part or an extra
  file raise SnapshotCorrupt (never a wrong load); temporary directories are ignored.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import _values as V
from engine._batch import events_from_dicts, prepare_events, prepare_traits
from engine._segments import SegmentRegistry, topological_order
from engine._shard import ShardCore
from engine.durability.snapshot import (
    SnapshotCorrupt,
    begin_snapshot,
    core_snapshot,
    finish_snapshot,
    flatten_state,
    list_snapshots,
    prune_snapshots,
    read_manifest,
    read_part,
    read_snapshot,
    remove_stale_temp,
    restore_core,
    unflatten_state,
    write_part,
    write_snapshot,
)
from engine.errors import EngineError, UnknownModel, UnknownSegment
from scoring.spec import Deployment
from tests.strategies import (
    BASE_MS,
    DAY_MS,
    HOUR_MS,
    USERS,
    Advance,
    Create,
    DeleteSegment,
    DeleteUser,
    Ingest,
    Replace,
    SetTraits,
    events_to_columns,
    scripts,
)
from tests.test_models_engine import tanh_logistic_onnx

B, H, D = BASE_MS, HOUR_MS, DAY_MS
FEATURES = ("count(buy, 1d)", "since(view) / 1h")


# ----------------------------------------------------------------------------- helpers


@functools.cache
def _deployment():
    onnx, _ = tanh_logistic_onnx(len(FEATURES), seed=3, scale=[1.0, 0.2])
    return Deployment(name="m", version=1, onnx=onnx, features=FEATURES, transform={"kind": "identity"}, curve=())


class _Catalog:
    """What the segment registry asks of the model catalog."""

    def __init__(self, deps):
        self.deps = {d.name: d for d in deps}

    def deployment(self, name):
        return self.deps.get(name)


def _rows(batch) -> list[tuple]:
    return list(zip(batch.segments, batch.user_ids, batch.kind.tolist(), batch.cause.tolist(), batch.at_ms.tolist()))


class Cores:
    """ShardCores driven with the same operations, as the embedded Engine drives its one
    (event clock). ``restore_from`` adds a core rebuilt from a snapshot of the first."""

    def __init__(self, retention_ms: int, cap: int, deps=()):
        self.retention_ms, self.cap, self.deps = retention_ms, cap, list(deps)
        self.now = 0
        self.registry = SegmentRegistry(retention_ms, models=_Catalog(self.deps))
        self.cores = [self._core()]
        self.moved: set[str] = set()       # segments with deltas once B exists

    def _core(self) -> ShardCore:
        core = ShardCore(self.retention_ms, self.cap)
        for dep in self.deps:
            core.deploy_model(dep, self.now)
        return core

    def restore_from(self, root: Path, name: str) -> ShardCore:
        a = self.cores[0]
        arrays, meta = core_snapshot(a)
        path = write_snapshot(root, name, arrays, meta)
        meta2, arrays2 = read_snapshot(path)
        assert meta2 == json.loads(json.dumps(meta))
        b = self._core()
        for d in topological_order(self.registry.all()):
            assert not len(b.create_segment(d, self.now))
        assert restore_core(b, arrays2, meta2) == a.stats()["users"]
        self.cores.append(b)
        return b

    def _each(self, fn) -> list:
        out = []
        for core in self.cores:
            try:
                out.append(fn(core))
            except EngineError as err:
                out.append(type(err).__name__)
        return out

    def run(self, op) -> list:
        """The op's outputs, one per core: a list of deltas (or an error name)."""
        rt = self.retention_ms
        if isinstance(op, Ingest):
            if op.columns:
                prepare = lambda: prepare_events(**events_to_columns(op.events), now_ms=before,
                                                 retention_ms=rt, clock="event")[0]
            else:
                prepare = lambda: events_from_dicts(list(op.events), now_ms=before, retention_ms=rt,
                                                    clock="event")[0]
            before = self.now
            out = []
            for core in self.cores:
                cols = prepare()
                self.now = max(before, cols.max_timestamp()) if len(cols) else before
                out.append([_rows(core.apply_events(cols, self.now))])
            return out
        if isinstance(op, SetTraits):
            before = self.now
            out = []
            for core in self.cores:
                cols, _ = prepare_traits([(op.user_id, op.traits, op.timestamp_ms)], now_ms=before,
                                         retention_ms=rt, clock="event")
                self.now = max(before, cols.max_timestamp()) if len(cols) else before
                out.append([_rows(core.apply_traits(cols, self.now))])
            return out
        if isinstance(op, Advance):
            self.now = max(self.now, op.now_ms)
            return self._each(lambda c: [_rows(c.advance(self.now)), _rows(c.rescore(self.now))])
        if isinstance(op, DeleteUser):
            return self._each(lambda c: [_rows(c.delete_user(op.user_id, self.now))])
        try:
            if isinstance(op, Create):
                defn = self.registry.validate(op.name, op.text, now_ms=self.now)
                out = self._each(lambda c: [_rows(c.create_segment(defn, self.now))])
            elif isinstance(op, Replace):
                defn = self.registry.validate(op.name, op.text, replacing=True, now_ms=self.now)
                out = self._each(lambda c: [_rows(c.replace_segment(defn, self.now))])
            elif isinstance(op, DeleteSegment):
                defn = None
                self.registry.check_delete(op.name)
                out = self._each(lambda c: [_rows(c.delete_segment(op.name, self.now))])
            else:
                raise TypeError(f"not an operation: {op!r}")
        except EngineError as err:
            return [type(err).__name__] * len(self.cores)
        if not isinstance(out[0], str):
            if defn is None:
                self.registry.remove(op.name)
            else:
                self.registry.put(defn)
        return out

    def check_same(self, outs, op) -> None:
        a, *rest = outs
        if rest and not isinstance(a, str):
            self.moved.update(row[0] for batch in a for row in batch)
        for b in rest:
            assert b == a, f"after {op!r}"

    def check_final(self) -> None:
        a, *rest = self.cores
        users = sorted(set(USERS) | set(a.users.gather(a._known_rows())))
        for core in (a, *rest):
            core._compact(cutoff=float(self.now - self.retention_ms))
        for b in rest:
            for name in self.registry.names():
                assert sorted(b.members(name)) == sorted(a.members(name)), name
            for u in users:
                assert b.user_view(u) == a.user_view(u), u
            _same_stats(a, b)
        # every user's timer is a lower bound of its segments' next change (the cores' timers
        # may differ: a restored core starts with every segment in its first timer level), and
        # next_due_ms is a lower bound of the timers
        from tests.test_timers import _exact_next

        for core in (a, *rest):
            if len(core.plan.names) and core.nrows:
                rows, exact = _exact_next(core, self.now, up_to_date=False)
                if exact:
                    soonest = np.min(np.stack(list(exact.values())), axis=0)
                    assert np.all(core.timer[rows] <= soonest)
            assert core.next_due_ms() <= int(core.timer[: core.nrows].min(initial=2**63 - 1))


def _same_stats(a: ShardCore, b: ShardCore) -> None:
    # event types without a stored event (named only by a deleted segment, say) are not in a
    # snapshot: they are created again when used
    sa, sb = a.stats(), b.stats()
    assert sb.pop("event_types") <= sa.pop("event_types")
    assert sb == sa


def _same_state(a: dict, b: dict) -> None:
    """Two export states are equal, float bit patterns and dtypes included."""
    def same(x, y):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        if x.dtype == np.float64:
            x, y = x.view(np.int64), y.view(np.int64)
        assert np.array_equal(x, y)

    assert sorted(a) == sorted(b)
    assert a["user_ids"] == b["user_ids"] and a["strings"] == b["strings"]
    for k in ("timers", "string_codes"):
        same(a[k], b[k])
    assert list(a["events"]) == list(b["events"])
    for t, ev in a["events"].items():
        same(ev["owner"], b["events"][t]["owner"])
        same(ev["timestamp_ms"], b["events"][t]["timestamp_ms"])
        assert list(ev["columns"]) == list(b["events"][t]["columns"])
        for p, v in ev["columns"].items():
            same(v, b["events"][t]["columns"][p])
    for k in ("traits", "members"):
        assert list(a[k]) == list(b[k])
        for name, v in a[k].items():
            same(v, b[k][name])


def _readable(state: dict) -> dict:
    """An export state with string values as strings: comparable between shards, whose
    string codes differ."""
    lookup = dict(zip(state["string_codes"].tolist(), state["strings"]))

    def values(boxed):
        bits = boxed.view(np.int64)
        is_str = (bits & V.TAG_MASK) == V.STR_TAG
        return [("s", lookup[int(b & V.PAYLOAD_MASK)]) if s else int(b)
                for b, s in zip(bits.tolist(), is_str.tolist())]

    users = state["user_ids"]
    out = {"timers": dict(zip(users, state["timers"].tolist())),
           "members": {s: sorted(users[i] for i in idx) for s, idx in state["members"].items()},
           "traits": {n: dict(zip(users, values(v))) for n, v in state["traits"].items()}, "events": {}}
    for t, ev in state["events"].items():
        per_user: dict = {}
        cols = {p: values(v) for p, v in ev["columns"].items()}
        for k, (o, ts) in enumerate(zip(ev["owner"].tolist(), ev["timestamp_ms"].tolist())):
            per_user.setdefault(users[o], []).append((ts, {p: cols[p][k] for p in sorted(cols)}))
        out["events"][t] = per_user
    return out


# ----------------------------------------------------------------------------- flat arrays

_TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from(["\x00", "/", ".", "ş", "🙂"]), max_size=6)


@st.composite
def states(draw) -> dict:
    """Random export states: any names, any float bit patterns, owners grouped or not."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    users = draw(st.lists(_TEXT, max_size=40, unique=True))
    n = len(users)

    def floats(k):
        bits = rng.integers(-2**63, 2**63 - 1, k, dtype=np.int64)
        bits[rng.random(k) < 0.3] = V.NULL_BITS
        tagged = rng.random(k) < 0.3
        bits[tagged] = V.STR_TAG | rng.integers(0, 5, int(tagged.sum()))
        return bits.view(np.float64)

    events = {}
    for t in draw(st.lists(_TEXT, max_size=4, unique=True)):
        k = draw(st.integers(0, 60)) if n else 0
        owner = rng.integers(0, max(n, 1), k).astype(np.int64)
        if draw(st.booleans()):
            owner.sort()
        cols = draw(st.lists(_TEXT, max_size=3, unique=True))
        events[t] = {"owner": owner, "timestamp_ms": rng.integers(-2**62, 2**62, k),
                     "columns": {c: floats(k) for c in cols}}
    members = {}
    for s in draw(st.lists(_TEXT, max_size=4, unique=True)):
        k = draw(st.integers(0, n))
        idx = rng.choice(n, k, replace=False).astype(np.int64) if n else np.zeros(0, np.int64)
        members[s] = np.sort(idx) if draw(st.booleans()) else idx
    strings = draw(st.lists(st.text(max_size=5), max_size=5, unique=True))
    return {
        "user_ids": users,
        "events": events,
        "traits": {name: floats(n) for name in draw(st.lists(_TEXT, max_size=4, unique=True))},
        "members": members,
        "timers": rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64),
        "string_codes": np.sort(rng.choice(1000, len(strings), replace=False)).astype(np.int64),
        "strings": strings,
    }


@settings(max_examples=150)
@given(state=states())
def test_flatten_round_trips_exactly(state):
    arrays = flatten_state(state)
    for key, a in arrays.items():
        assert isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype.kind in "iuf", key
        assert key.isascii() and "\x00" not in key
    _same_state(unflatten_state(arrays), state)


def test_flatten_round_trips_through_a_file(tmp_path):
    state = {
        "user_ids": ["u1", "", "ö/ü", "🙂"], "timers": np.array([1, 2, 3, 2**62], np.int64),
        "events": {"\x00type/x": {"owner": np.array([0, 0, 3], np.int64), "timestamp_ms": np.array([5, 6, 7]),
                                  "columns": {"\x00": np.array([np.nan, -0.0, np.inf]),
                                              "a/b": np.array([1.0, 2.0, 3.0])}}},
        "traits": {"\x00score:m": np.array([0.5, np.nan, 1e-300, -1.0])},
        "members": {"seg\x00/ment": np.array([0, 1, 2, 3], np.int64), "none": np.zeros(0, np.int64)},
        "string_codes": np.array([2, 9], np.int64), "strings": ["x", "ş"],
    }
    path = write_snapshot(tmp_path, "snap-1", flatten_state(state), {"k": [1, "two"]})
    meta, arrays = read_snapshot(path)
    assert meta == {"k": [1, "two"]}
    _same_state(unflatten_state(arrays), state)


def test_an_empty_shard_and_users_without_events(tmp_path):
    core = ShardCore(7 * D)
    arrays, meta = core_snapshot(core)
    path = write_snapshot(tmp_path, "snap-empty", arrays, meta)
    meta, arrays = read_snapshot(path)
    assert restore_core(ShardCore(7 * D), arrays, meta) == 0
    # users known only by traits: no event list at all
    cols, _ = prepare_traits([(f"u{i}", {"country": "TR", "n": i}, B) for i in range(5)],
                             now_ms=B, retention_ms=7 * D, clock="event")
    core.apply_traits(cols, B)
    arrays, meta = core_snapshot(core)
    assert meta["users"] == 5 and meta["events"] == 0
    other = ShardCore(7 * D)
    meta, arrays = read_snapshot(write_snapshot(tmp_path, "snap-traits", arrays, meta))
    assert restore_core(other, arrays, meta) == 5
    assert other.user_view("u3") == core.user_view("u3")


# ----------------------------------------------------------------------------- restored cores


def _stream_ops(seed: int, n_users: int = 120, steps: int = 36) -> list:
    """A seeded stream of event batches, trait updates, clock moves and a user deletion."""
    rng = np.random.default_rng(seed)
    now = B
    ops = []
    for step in range(steps):
        now += int(rng.integers(0, 4 * H))
        events = []
        for _ in range(int(rng.integers(20, 60))):
            etype = str(rng.choice(["view", "buy", "cart/ö"], p=[0.7, 0.15, 0.15]))
            ev = {"user_id": f"u{rng.integers(0, n_users)}", "type": etype,
                  "timestamp_ms": now - int(rng.integers(0, 6 * H))}
            if etype == "buy":
                ev["value"] = float(rng.integers(0, 80)) / 4
            if etype != "cart/ö" or rng.random() < 0.5:
                ev["properties"] = {"sku": str(rng.choice(["a", "b", "c", "ş"]))}
            events.append(ev)
        ops.append(Ingest(tuple(events), columns=bool(step % 2)))
        if step % 3 == 0:
            uid = f"u{rng.integers(0, n_users)}"
            traits = {"country": str(rng.choice(["TR", "DE"])), "trial_end": now + int(rng.integers(0, 3 * D))}
            ops.append(SetTraits(uid, traits))
        if step % 5 == 4:
            ops.append(Advance(now + int(rng.integers(0, 2 * D))))
        if step == 9:
            ops.append(DeleteUser("u1"))
    return ops


_FIXED = {
    "views": "count(view, 1d) >= 2",
    "lapsed": "since(buy) > 2d",
    "sku_a": 'affinity(view.sku, 2d) == "a"',
    "tr_views": 'trait.country == "TR" and segment("views")',
    "spend": "sum(buy.value, 7d) > 10",
    "scored": 'score("m") >= 0.5',
    "old_viewer": "since_first(view) >= 1d",
    "trial": "until(trait.trial_end) between 0 and 1d",
    "carts/ş": 'count("cart/ö" where sku == "ş", 2d) >= 1',
}


@pytest.mark.parametrize("seed,cut", [(1, 12), (2, 25), (3, 40)])
def test_a_restored_core_goes_on_exactly_like_the_original(tmp_path, seed, cut):
    cores = Cores(7 * D, cap=4, deps=[_deployment()])   # 4 events per type: the cap bites
    ops = [Create(name, text) for name, text in _FIXED.items()] + _stream_ops(seed)
    for i, op in enumerate(ops):
        if i == cut:
            b = cores.restore_from(tmp_path, f"snap-{i:020d}")
            a = cores.cores[0]
            assert _readable(b.export_slots(range(4096))) == _readable(a.export_slots(range(4096)))
        cores.check_same(cores.run(op), op)
    assert len(cores.cores) == 2
    assert cores.cores[0].stats()["events_dropped"] > 0
    assert {"lapsed", "scored", "trial", "views", "old_viewer"} <= cores.moved   # timers and scores at work
    cores.check_final()


@settings(max_examples=100)
@given(script=scripts(max_steps=24), data=st.data())
def test_random_scripts_restored_at_a_random_step(tmp_path_factory, script, data):
    cores = Cores(script.retention_ms, script.max_events_per_type, deps=[_deployment()])
    fixed = [Create("f_lapsed", "since(buy) > 2d"), Create("f_score", 'score("m") >= 0.5')]
    ops = fixed + list(script.ops)
    cut = data.draw(st.integers(len(fixed), len(ops)), label="snapshot before op")
    root = tmp_path_factory.mktemp("snap")
    for i, op in enumerate(ops):
        if i == cut:
            cores.restore_from(root, "snap")
        cores.check_same(cores.run(op), op)
    if len(cores.cores) == 1:
        cores.restore_from(root, "snap")
    cores.check_final()


def test_slot_moves_still_round_trip_through_export_and_import():
    """export_slots/import_state of some slots (a shard move) after their fast paths."""
    cores = Cores(7 * D, cap=4)
    for op in [Create(n, t) for n, t in _FIXED.items() if n != "scored"] + _stream_ops(5, steps=12):
        cores.run(op)
    a = cores.cores[0]
    half = range(0, 4096, 2)
    state = a.export_slots(half)
    b = ShardCore(a.retention_ms, a.max_per)
    for d in topological_order(cores.registry.all()):
        b.create_segment(d, cores.now)
    assert b.import_state(state) == len(state["user_ids"]) > 0
    assert _readable(b.export_slots(range(4096))) == _readable(state)
    # and into a shard whose users already have lists: the one-by-one path
    rest = a.export_slots(range(1, 4096, 2))
    assert b.import_state(rest) == len(rest["user_ids"])
    assert _readable(b.export_slots(range(4096))) == _readable(a.export_slots(range(4096)))


def test_restore_refuses_a_core_without_the_same_segments_or_models():
    cores = Cores(7 * D, cap=8, deps=[_deployment()])
    for op in [Create(n, t) for n, t in _FIXED.items()] + _stream_ops(4, steps=3):
        cores.run(op)
    arrays, meta = core_snapshot(cores.cores[0])
    defs = topological_order(cores.registry.all())
    bare = ShardCore(7 * D)
    with pytest.raises(UnknownSegment):
        restore_core(bare, arrays, meta)                  # no segments
    extra = ShardCore(7 * D)
    extra.deploy_model(_deployment(), cores.now)
    for d in defs:
        extra.create_segment(d, cores.now)
    extra.create_segment(cores.registry.validate("later", "count(view, 1d) >= 1", now_ms=cores.now), cores.now)
    with pytest.raises(ValueError, match="after restoring"):
        restore_core(extra, arrays, meta)                 # its backfill would miss the users
    # a model no segment uses: its scores are in the snapshot all the same
    scored = Cores(7 * D, cap=8, deps=[_deployment()])
    for op in [Create("views", "count(view, 1d) >= 2")] + _stream_ops(4, steps=3):
        scored.run(op)
    arrays, meta = core_snapshot(scored.cores[0])
    no_model = ShardCore(7 * D)
    no_model.create_segment(scored.registry.get("views"), scored.now)
    with pytest.raises(UnknownModel):
        restore_core(no_model, arrays, meta)
    for core in (bare, extra, no_model):
        assert core.stats()["users"] == 0                 # refused before anything changed


def test_malformed_arrays_are_refused():
    arrays = flatten_state(ShardCore(7 * D).export_slots(range(4096)))
    for change in ({"format": np.array([99])}, {"users.offsets": np.array([0, 5])},
                   {"timers": np.zeros(3, np.int64)}, {"names.utf8": np.zeros(2, np.float64)}):
        with pytest.raises(SnapshotCorrupt):
            unflatten_state({**arrays, **change})
    with pytest.raises(SnapshotCorrupt, match="missing"):
        unflatten_state({k: v for k, v in arrays.items() if k != "timers"})


# ----------------------------------------------------------------------------- files


def _snapshot(root: Path, name: str = "snap-00000000000000000007") -> Path:
    cores = Cores(7 * D, cap=8)
    for op in [Create("views", "count(view, 1d) >= 2")] + _stream_ops(9, steps=4):
        cores.run(op)
    arrays, meta = core_snapshot(cores.cores[0])
    return write_snapshot(root, name, arrays, meta)


def _part(path: Path) -> Path:
    (f,) = [p for p in path.iterdir() if p.suffix == ".npz"]
    return f


def _corrupt(path: Path) -> str:
    with pytest.raises(SnapshotCorrupt) as info:
        read_snapshot(path)
    assert info.value.path == path
    return info.value.reason


def test_a_snapshot_reads_back_and_leaves_no_temporary_files(tmp_path):
    path = _snapshot(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "shard.npz"]
    meta, arrays = read_snapshot(path)
    assert meta["users"] > 0 and all(a.dtype.kind in "iuf" for a in arrays.values())
    with pytest.raises(FileExistsError):
        write_snapshot(tmp_path, path.name, arrays, meta)


def test_truncated_part(tmp_path):
    path = _snapshot(tmp_path)
    f = _part(path)
    data = f.read_bytes()
    for size in (len(data) - 1, len(data) // 2, 0):
        f.write_bytes(data[:size])
        assert "bytes" in _corrupt(path)


def test_bit_flips_anywhere_in_a_part_are_caught(tmp_path):
    path = _snapshot(tmp_path)
    f = _part(path)
    data = f.read_bytes()
    rng = np.random.default_rng(0)
    for pos in [*rng.integers(0, len(data), 25).tolist(), 0, len(data) - 1, len(data) // 2]:
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        f.write_bytes(bytes(flipped))
        assert "checksum" in _corrupt(path)
    f.write_bytes(data)
    read_snapshot(path)


def test_manifest_missing_bad_or_altered(tmp_path):
    path = _snapshot(tmp_path)
    mf = path / "manifest.json"
    good = mf.read_text()
    mf.write_text(good[: len(good) // 2])
    assert "valid" in _corrupt(path)
    doc = json.loads(good)
    doc["manifest"]["meta"]["users"] += 1                 # a change that is still valid JSON
    mf.write_text(json.dumps(doc))
    assert "checksum" in _corrupt(path)
    doc = json.loads(good)
    doc["manifest"]["parts"]["shard"]["crc32c"] ^= 1      # a wrong part checksum, manifest re-signed
    import crc32c

    from engine.durability.snapshot import _canonical
    doc["crc32c"] = crc32c.crc32c(_canonical(doc["manifest"]))
    mf.write_text(json.dumps(doc))
    assert "checksum" in _corrupt(path)
    mf.unlink()
    assert "missing" in _corrupt(path)
    assert list_snapshots(tmp_path) == []                 # no manifest: not a snapshot


def test_missing_part_and_extra_files(tmp_path):
    path = _snapshot(tmp_path)
    (path / "junk.npy").write_bytes(b"\x93NUMPY")
    assert "unexpected" in _corrupt(path)
    (path / "junk.npy").unlink()
    (path / "sub").mkdir()
    assert "unexpected" in _corrupt(path)
    (path / "sub").rmdir()
    _part(path).unlink()
    assert "missing" in _corrupt(path)


def test_listing_pruning_and_temporary_directories(tmp_path):
    names = [f"snap-{lsn:020d}" for lsn in (5, 120, 7, 99)]
    for n in names:
        _snapshot(tmp_path, n)
    tmp = begin_snapshot(tmp_path, "snap-00000000000000000200")   # a crash mid-write
    write_part(tmp, "shard-0", {"x": np.arange(3)})
    (tmp_path / ".tmp-snap-x-abc").mkdir()
    listed = [p.name for p in list_snapshots(tmp_path)]
    assert listed == sorted(names, reverse=True)
    assert remove_stale_temp(tmp_path) == 2
    assert not tmp.exists()
    removed = prune_snapshots(tmp_path, keep=2)
    assert [p.name for p in removed] == sorted(names, reverse=True)[2:]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)[2:]
    assert list_snapshots(tmp_path / "nowhere") == [] and remove_stale_temp(tmp_path / "nowhere") == 0
    with pytest.raises(ValueError):
        begin_snapshot(tmp_path, ".tmp-x")
    with pytest.raises(ValueError):
        begin_snapshot(tmp_path, "a/b")


def test_a_snapshot_of_several_shards_in_parts(tmp_path):
    """The gateway's form: each shard writes its part, the snapshot is completed once."""
    shards = []
    for seed in (11, 12):
        cores = Cores(7 * D, cap=8)
        segments = [Create("views", "count(view, 1d) >= 2"), Create("lapsed", "since(buy) > 2d")]
        for op in segments + _stream_ops(seed, steps=5):
            cores.run(op)
        shards.append(cores)
    name = "snap-00000000000000000042"
    tmp = begin_snapshot(tmp_path, name)
    parts = {}
    for i, cores in enumerate(shards):
        arrays, meta = core_snapshot(cores.cores[0])
        parts[f"shard-{i}"] = {**write_part(tmp, f"shard-{i}", arrays), "meta": meta}
    assert list_snapshots(tmp_path) == []                 # not complete yet
    path = finish_snapshot(tmp_path, tmp, name, {"lsn": 42}, parts)
    assert list_snapshots(tmp_path) == [path] and not tmp.exists()
    manifest = read_manifest(path)
    assert set(manifest["parts"]) == {"shard-0", "shard-1"} and manifest["meta"]["lsn"] == 42
    for i, cores in enumerate(shards):
        arrays = read_part(path, f"shard-{i}", manifest)
        core = ShardCore(7 * D, 8)
        for d in topological_order(cores.registry.all()):
            core.create_segment(d, cores.now)
        restore_core(core, arrays, manifest["parts"][f"shard-{i}"]["meta"])
        a = cores.cores[0]
        assert _readable(core.export_slots(range(4096))) == _readable(a.export_slots(range(4096)))
        _same_stats(a, core)
    with pytest.raises(ValueError):
        read_snapshot(path)                               # two parts: say which
    with pytest.raises(SnapshotCorrupt):
        read_part(path, "shard-7")
    # one part damaged: that part is refused, the other still reads
    f = path / "shard-1.npz"
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0x10
    f.write_bytes(bytes(data))
    read_part(path, "shard-0")
    with pytest.raises(SnapshotCorrupt):
        read_part(path, "shard-1")


def test_files_are_plain_npz_without_pickles(tmp_path):
    path = _snapshot(tmp_path)
    with np.load(_part(path), allow_pickle=False) as z:
        assert all(z[k].dtype.kind in "iuf" for k in z.files)
    assert os.stat(path / "manifest.json").st_size < 4096
