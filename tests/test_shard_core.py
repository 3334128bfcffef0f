"""ShardCore below the Engine: moving users between shards, compaction, memory figures."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Engine, _arena
from engine._shard import ShardCore

BASE = 1_700_000_000_000
H = 3_600_000

SEGMENTS = {
    "views": "count(view, 2h) >= 2",
    "sku": 'top_count(view.sku, 1d) >= 2 and affinity(view.sku, 1d) == "a"',
    "spend": "sum(buy.value, 1d) > 10 and since(buy) < 3h",
    "tr": 'trait.country == "TR" and segment("views")',
    "first": "since_first(view where sku in [\"a\", \"b\"]) >= 1h",
}


def _stream(rng, n_users=200, n=3000):
    users = [f"u{i}" for i in rng.integers(0, n_users, n)]
    types = rng.choice(["view", "buy"], n, p=[0.8, 0.2]).tolist()
    ts = BASE + np.sort(rng.integers(0, 20 * H, n))
    skus = rng.choice(["a", "b", "c"], n).tolist()
    vals = np.where(np.array(types) == "buy", rng.random(n) * 20, 0.0)
    return users, types, ts, vals, skus


def _engine(rng):
    eng = Engine(clock="event", retention="2d")
    for k, v in SEGMENTS.items():                     # "views" comes before "tr", which uses it
        eng.create_segment(k, v)
    users, types, ts, vals, skus = _stream(rng)
    eng.ingest_columns(user_id=users, type=types, timestamp_ms=ts, value=vals, properties={"sku": skus})
    for i in range(0, 200, 3):
        eng.set_traits(f"u{i}", {"country": "TR" if i % 2 else "DE"})
    return eng


def test_export_import_moves_users_without_changing_anything():
    rng = np.random.default_rng(7)
    src = _engine(rng)
    ref = _engine(np.random.default_rng(7))           # the same history, never moved
    core = src._core
    target = ShardCore(core.retention_ms, core.max_per)
    from engine._segments import topological_order
    for d in topological_order(list(core.defs.values())):
        target.create_segment(d, src.now_ms)
    half = list(range(0, 4096, 2))
    state = core.export_slots(half)
    moved = len(state["user_ids"])
    assert moved > 0
    assert target.import_state(state) == moved
    assert core.drop_slots(half) == moved
    for name in SEGMENTS:
        assert set(core.members(name)) | set(target.members(name)) == ref.members(name)
        assert not set(core.members(name)) & set(target.members(name))
    # time goes on: both halves together still behave exactly like the unmoved engine
    later = src.now_ms + 30 * H
    d1 = core.advance(later)
    d2 = target.advance(later)
    ref.advance_clock(later)
    for name in SEGMENTS:
        assert set(core.members(name)) | set(target.members(name)) == ref.members(name)
    got = sorted(zip(d1.segments + d2.segments, d1.user_ids + d2.user_ids))
    want = sorted((d.segment, d.user_id) for d in ref.deltas() if d.at_ms == later)
    assert got == want
    assert target.user_view(state["user_ids"][0])["known"]


def test_compaction_keeps_every_list_and_frees_expired_events():
    rng = np.random.default_rng(3)
    eng = _engine(rng)
    before = {n: eng.members(n) for n in SEGMENTS}
    core = eng._core
    retained = core.retained_events()

    def compact(cutoff):
        # the rewrite is sized by the bump pointer: what it writes never passes it
        from engine.kernels import _store as KS
        nt = len(core.type_names)
        bump = int(core.astate[0])
        need = KS._compact_size(core.arena, core.nrows, nt, core.width, core.width, core.h, KS.CAPS, cutoff)
        core._compact(cutoff=cutoff)
        assert int(core.astate[0]) == need <= bump <= core.arena.shape[0]

    compact(-np.inf)
    assert core.retained_events() == retained
    assert {n: eng.members(n) for n in SEGMENTS} == before
    assert core.astate[0] == core.astate[1]            # no holes left
    eng.advance_clock(eng.now_ms + 3 * 24 * H)         # everything is now past the 2d retention
    compact(float(eng.now_ms - core.retention_ms))
    assert core.retained_events() == 0


def test_memory_figures_add_up():
    eng = _engine(np.random.default_rng(1))
    m = eng.memory()
    assert m["bytes_total"] == m["user_arrays"] + m["user_ids"] + m["events"] + m["strings"]
    assert m["users"] == eng.stats()["users"] == 200
    assert m["retained_events"] == eng.stats()["events_retained"] > 0


def test_per_type_limit_is_configurable_and_counted():
    eng = Engine(clock="event", max_events_per_type=8)
    eng.create_segment("c", "count(view, 1d) >= 8")
    eng.ingest([{"user_id": "u", "type": "view", "timestamp_ms": BASE + i} for i in range(20)])
    assert eng.members("c") == {"u"}
    assert eng.stats()["events_dropped"] == 12
    assert eng.stats()["events_retained"] == 8
    with pytest.raises(ValueError):
        Engine(max_events_per_type=5000)


def test_a_new_column_after_a_user_deletion_does_not_reuse_narrow_free_blocks():
    # deleting the only user frees its blocks; a batch that then adds a column to the type must
    # not hand out those blocks, sized for the old width (a regression found by the
    # differential tests)
    eng = Engine(clock="event", max_events_per_type=5)
    eng.create_segment("a", 'affinity(view.sku, 1d) == "a"')
    eng.ingest([{"user_id": "u", "type": "view", "timestamp_ms": BASE + i} for i in range(4)])
    eng.delete_user("u")
    batch = [{"user_id": "u", "type": "view", "timestamp_ms": BASE + 10, "value": float(i % 3),
              "properties": {"sku": "a"} if i == 3 else {"price": 1.0}} for i in range(8)]
    eng.ingest(batch)
    assert eng.members("a") == {"u"}
    assert eng.stats()["events_retained"] == 5


@pytest.mark.parametrize("held", [False, True])
def test_a_mapped_arena_grows_in_place_or_by_a_copy(held):
    """A mapped arena is remapped in place when nothing else views it, else copied into a
    new map (the view keeps the old words): its words are kept either way."""
    arena = _arena.allocate(1 << 20)                     # 8 MB: a map
    mm = _arena._map_of(arena)
    assert mm is not None
    arena[:1000] = np.arange(1000.0)
    view = arena[:8] if held else None
    held_list = [arena]
    del arena
    grown = _arena.grown(held_list, 1000, 3 << 19)
    assert held_list == [None] and grown.shape == (3 << 19,)
    assert (grown[:1000] == np.arange(1000.0)).all()
    grown[-1] = 1.0                                      # the new tail is writable
    assert (_arena._map_of(grown) is mm) is not held
    if held:
        assert (view == np.arange(8.0)).all()
    assert _arena.allocate(100).base is None             # small arenas: ordinary numpy memory


@pytest.mark.parametrize("held", [False, True])
def test_the_arena_grows_in_place_or_by_a_copy_with_the_same_state(held, monkeypatch):
    """The engine's arena grows in place when nothing else refers to it, else by a copy (a
    view held outside, as a debugger or a caller might): the same events either way."""
    monkeypatch.setattr(_arena, "MAP_MIN_BYTES", 0)     # map even this small arena
    rng = np.random.default_rng(11)
    eng = Engine(clock="event", retention="30d")     # no retention sweep (a new arena) meanwhile
    for k, v in SEGMENTS.items():
        eng.create_segment(k, v)
    core = eng._core
    first = _stream(np.random.default_rng(3), n=500)
    eng.ingest_columns(user_id=first[0], type=first[1], timestamp_ms=first[2], value=first[3],
                       properties={"sku": first[4]})
    core._grow_arena(1)                                 # now a map
    size = core.arena.shape[0]
    mm = _arena._map_of(core.arena)
    assert mm is not None
    view = core.arena[:8] if held else None
    users, types, ts, vals, skus = _stream(rng, n=40_000)
    eng.ingest_columns(user_id=users, type=types, timestamp_ms=ts + 20 * H, value=vals, properties={"sku": skus})
    assert core.arena.shape[0] > size                  # it grew
    assert (_arena._map_of(core.arena) is mm) is not held   # remapped, or copied beside the view
    assert view is None or view.base is not core.arena.base
    ref = Engine(clock="event", retention="30d")
    for k, v in SEGMENTS.items():
        ref.create_segment(k, v)
    ref._core._grow_arena(40_000 * 8)                  # room ahead: no growth on the way
    for u, t, s, v, k, off in (first + (0,), (users, types, ts, vals, skus, 20 * H)):
        ref.ingest_columns(user_id=u, type=t, timestamp_ms=s + off, value=v, properties={"sku": k})
    for name in SEGMENTS:
        assert eng.members(name) == ref.members(name)
    assert eng.deltas() == ref.deltas()


def test_a_step_with_more_flips_than_the_evaluation_first_makes_room_for():
    """An evaluation starts with room for 1,024 flips and grows it between rows: 5,000 users
    entering at once, then leaving at once by time, then a segment created over them all."""
    n = 5_000
    eng = Engine(clock="event", retention="30d")
    eng.create_segment("v", "count(view, 1h) >= 1")
    users = [f"u{i}" for i in range(n)]
    eng.ingest_columns(user_id=users, type=["view"] * n, timestamp_ms=[BASE + i for i in range(n)])
    assert eng.members("v") == set(users)
    eng.advance_clock(BASE + 2 * H)
    assert eng.members("v") == set()
    eng.create_segment("w", "count(view, 30d) >= 1")
    assert eng.members("w") == set(users)
    kinds = [(d.segment, d.kind) for d in eng.deltas()]
    assert kinds.count(("v", "ENTER")) == n and kinds.count(("v", "EXIT")) == n
    assert kinds.count(("w", "ENTER")) == n


def test_an_arena_that_cannot_grow_is_kept_as_it_was(monkeypatch):
    """No memory for a larger arena: the error is raised and the arena, with its words, stays."""
    arena = _arena.allocate(1 << 20)
    arena[:10] = np.arange(10.0)
    held = [arena]
    del arena

    def no_memory(words):
        raise MemoryError("no room")

    monkeypatch.setattr(_arena, "allocate", no_memory)
    view = held[0][:4]                                   # a view: the map cannot be remapped
    with pytest.raises(MemoryError):
        _arena.grown(held, 10, 1 << 22)
    assert held[0] is not None and (held[0][:10] == np.arange(10.0)).all()
    assert (view == np.arange(4.0)).all()
