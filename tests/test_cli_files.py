"""Files in and out: ``engine._files`` (JSON lines / CSV / gzip -> columnar batches with line
numbers, no server) and ``rtseg ingest`` / ``rtseg traits`` / ``rtseg segment export -o``
against a real ``rtseg serve`` (real Ray)."""

from __future__ import annotations

import gzip
import io
import json
import random

import numpy as np
import pytest

from engine import _files as F
from tests.test_cli import rtseg
from tests.test_server_support import TOKEN, start_server, wait_until

T0 = 1_700_000_000_000


def _batches(data: bytes, fmt: str, **kw) -> list[F.EventBatch]:
    return list(F.event_batches(io.BytesIO(data), fmt, **kw))


def _rows(batches) -> list[tuple]:
    """(line, user_id, type, timestamp_ms, value, {present properties}) of every row."""
    out = []
    for b in batches:
        for i in range(len(b)):
            props = {k: col[i] for k, col in b.properties.items() if col[i] is not None}
            out.append((int(b.lines[i]), b.user_id[i], b.type[i], int(b.timestamp_ms[i]),
                        float(b.value[i]), props))
    return out


def _rejections(batches) -> list[tuple[int, str]]:
    return [(r.line, r.reason) for b in batches for r in b.rejections]


def _jsonl(*objs) -> bytes:
    return b"".join((o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n" for o in objs)


# ----------------------------------------------------------------------------- JSON lines


def test_jsonl_rows_properties_and_line_numbers():
    data = _jsonl(
        {"user_id": "u1", "type": "view", "timestamp_ms": T0, "value": 2,
         "properties": {"country": "TR", "price": 9, "ratio": 0.5, "vip": True, "gone": None}},
        b"",                                                    # blank: skipped, still counted
        {"user_id": 42, "type": "buy", "timestamp_ms": float(T0 + 1)},
        b"   ",
        {"user_id": "u3", "type": "buy"})
    batches = _batches(data, "jsonl")
    assert _rejections(batches) == []
    assert _rows(batches) == [
        (1, "u1", "view", T0, 2.0, {"country": "TR", "price": 9.0, "ratio": 0.5, "vip": True}),
        (3, "42", "buy", T0 + 1, 0.0, {}),       # an integer id reads as in a CSV file
        (5, "u3", "buy", 0, 0.0, {})]            # no timestamp: 0 (the wall clock's now)
    [b] = batches
    assert b.timestamp_ms.dtype == np.int64 and b.value.dtype == np.float64
    assert b.properties["vip"] == [True, None, None]
    assert isinstance(b.properties["price"][0], float)
    assert set(b.columns()) == {"user_id", "type", "timestamp_ms", "value", "properties"}


def test_jsonl_bad_lines_are_rejections_with_their_line_numbers():
    good = {"user_id": "u", "type": "t", "timestamp_ms": T0}
    data = _jsonl(
        good,
        b'{"user_id": "u", "type": ',                                      # 2: truncated
        {"user_id": "u", "timestamp_ms": T0},                              # 3: no type
        {"user_id": "u", "type": "t", "timestamp_ms": "yesterday"},        # 4
        {"user_id": "u", "type": "t", "timestamp_ms": T0 + 0.5},           # 5: not whole ms
        [1, 2],                                                            # 6
        {"user_id": "u", "type": "t", "ts": T0},                           # 7: unknown field
        {"user_id": "u", "type": "t", "properties": {"tags": ["a"]}},      # 8: nested value
        {"user_id": "u", "type": "t", "properties": [1]},                  # 9
        {"user_id": True, "type": "t"},                                    # 10
        {"user_id": "u", "type": "t", "value": "cheap"},                   # 11
        b'{"user_id": "\xff", "type": "t"}',                               # 12: not UTF-8
        {"user_id": "u", "type": "t", "timestamp_ms": 2**63},              # 13
        good)
    batches = _batches(data, "jsonl")
    assert [r[0] for r in _rows(batches)] == [1, 14]
    reasons = dict(_rejections(batches))
    assert sorted(reasons) == list(range(2, 14))
    assert reasons[2].startswith("not valid JSON")
    assert reasons[3] == "missing type"
    assert "timestamp_ms" in reasons[4] and "yesterday" in reasons[4]
    assert "timestamp_ms" in reasons[5] and "integer" in reasons[5]
    assert "JSON object" in reasons[6] and "array" in reasons[6]
    assert 'unknown field "ts"' in reasons[7] and "--map ts=" in reasons[7]
    assert 'property "tags" is an array' in reasons[8]
    assert "properties must be a JSON object" in reasons[9]
    assert "user_id must be a string, got boolean" == reasons[10]
    assert "value must be a number" in reasons[11]
    assert "UTF-8" in reasons[12]
    assert "out of range" in reasons[13]


def test_jsonl_map_renames_keys():
    data = _jsonl({"uid": "u1", "event": "view", "ts": T0, "properties": {"a": "b"}})
    rows = _rows(_batches(data, "jsonl", mapping=F.parse_mapping(
        ["uid=user_id", "event=type", "ts=timestamp_ms"])))
    assert rows == [(1, "u1", "view", T0, 0.0, {"a": "b"})]


# ----------------------------------------------------------------------------- CSV


CSV = (b"user_id,type,timestamp_ms,value,country,age,vip,zip\n"
       b"u1,view,1700000000000,1.5,TR,33,true,01234\n"
       b"u2,buy,1700000000001,,US,,FALSE,\n"
       b"\n"
       b'u3,view,1700000000002,0,"Istanbul, TR",4e1,maybe,x\n')


def test_csv_columns_become_typed_properties():
    rows = _rows(_batches(CSV, "csv"))
    assert rows == [
        (2, "u1", "view", T0, 1.5, {"country": "TR", "age": 33.0, "vip": True, "zip": 1234.0}),
        (3, "u2", "buy", T0 + 1, 0.0, {"country": "US", "vip": False}),   # empty cell: absent
        (5, "u3", "view", T0 + 2, 0.0, {"country": "Istanbul, TR", "age": 40.0, "vip": "maybe",
                                        "zip": "x"})]
    as_text = _rows(_batches(CSV, "csv", infer_types=False))
    assert as_text[0][5] == {"country": "TR", "age": "33", "vip": "true", "zip": "01234"}
    assert F.cell_value("") is None and F.cell_value("-0.5e3") == -500.0
    assert F.cell_value("1,5") == "1,5" and F.cell_value("nan") == "nan"


def test_csv_bad_lines_and_multiline_records_keep_file_line_numbers():
    data = (b"user_id,type,timestamp_ms,note\n"
            b"u1,view,1700000000000,ok\n"
            b"u2,view\n"                                      # 3: missing columns
            b"u3,view,soon,x\n"                               # 4
            b'u4,view,1700000000001,"two\nlines"\n'           # 5-6: one record
            b"u5,view,1700000000002,x,extra\n"                # 7: one column too many
            b"u6,view,1.7e12,\xff\n"                          # 8: not UTF-8
            b"u7,view,1700000000003.0,x\n")                   # 9: a whole number is fine
    batches = _batches(data, "csv")
    rows = _rows(batches)
    assert [(r[0], r[1]) for r in rows] == [(2, "u1"), (5, "u4"), (9, "u7")]
    assert rows[1][5] == {"note": "two\nlines"} and rows[2][3] == T0 + 3
    reasons = dict(_rejections(batches))
    assert sorted(reasons) == [3, 4, 7, 8]
    assert reasons[3].startswith("the line has 2 fields but the header has 4")
    assert reasons[4] == "timestamp_ms 'soon' is not an integer (ms since the Unix epoch)"
    assert "has 5 fields" in reasons[7]
    assert reasons[8] == "line 8 is not valid UTF-8"


def test_csv_header_problems_are_file_errors():
    with pytest.raises(F.FileError, match="no type column.*--map COLUMN=type"):
        _batches(b"user_id,event,timestamp_ms\nu,v,1\n", "csv")
    with pytest.raises(F.FileError, match="two columns named"):
        _batches(b"user_id,type,user_id\n", "csv")
    with pytest.raises(F.FileError, match="empty"):
        _batches(b"", "csv")
    with pytest.raises(F.FileError, match="COL=FIELD|COLUMN=FIELD"):
        F.parse_mapping(["user_id"])
    with pytest.raises(F.FileError, match="renamed to 'type'"):
        F.parse_mapping(["a=type", "b=type"])
    # renames fix the header; a BOM and a tab delimiter are fine
    rows = _rows(_batches("\ufeffcustomer\tevent\tts\n1\tview\t5\n".encode(), "csv",
                          delimiter="\t", mapping={"customer": "user_id", "event": "type",
                                                   "ts": "timestamp_ms"}))
    assert rows == [(2, "1", "view", 5, 0.0, {})]


def test_batches_split_by_rows_and_carry_their_rejections():
    lines = [{"user_id": f"u{i}", "type": "t", "timestamp_ms": T0 + i} for i in range(25)]
    lines[11] = b"not json"
    batches = _batches(_jsonl(*lines), "jsonl", batch_rows=10)
    assert [len(b) + len(b.rejections) for b in batches] == [10, 10, 5]
    assert batches[1].lines.tolist() == [11, *range(13, 21)] and _rejections(batches)[0][0] == 12
    assert [r[0] for r in _rows(batches)] == [i for i in range(1, 26) if i != 12]
    with pytest.raises(F.FileError):
        _batches(b"", "jsonl", batch_rows=0)


# ----------------------------------------------------------------------------- sources


def test_gzip_by_suffix_or_magic_bytes_and_stdin(tmp_path):
    data = _jsonl(*({"user_id": f"u{i}", "type": "t", "timestamp_ms": T0} for i in range(50)))
    packed = gzip.compress(data)
    for name in ("events.jsonl.gz", "events.bin"):
        path = tmp_path / name
        path.write_bytes(packed)
        with F.open_source(str(path)) as src:
            assert src.compressed and src.size_bytes == len(packed)
            fmt = F.detect_format(str(path), src.stream)
            assert fmt == "jsonl"
            assert len(_rows(F.event_batches(src.stream, fmt))) == 50
            assert src.position() == len(packed)
    plain = tmp_path / "events.csv"
    plain.write_bytes(CSV)
    with F.open_source(str(plain)) as src:
        assert not src.compressed and F.detect_format(str(plain), src.stream) == "csv"
    with F.open_source("-", stdin=io.BytesIO(packed)) as src:
        assert src.compressed and src.size_bytes is None
        assert F.detect_format("-", src.stream) == "jsonl"
        assert [len(b) for b in F.event_batches(src.stream, "jsonl")] == [50]
    with F.open_source("-", stdin=io.BytesIO(CSV)) as src:
        assert F.detect_format("-", src.stream) == "csv"
    with pytest.raises(F.FileError, match="cannot open"):
        F.open_source(str(tmp_path / "missing.jsonl"))


# ----------------------------------------------------------------------------- traits


def test_trait_files():
    data = _jsonl({"user_id": "u1", "traits": {"plan": "pro", "seats": 5, "old": None}},
                  {"user_id": "u2", "traits": {"plan": "free"}, "timestamp_ms": T0},
                  {"user_id": "u3"},
                  {"user_id": "u4", "traits": {"x": {"deep": 1}}},
                  {"user_id": "u5", "traits": {}, "plan": "pro"})
    [b] = F.trait_batches(io.BytesIO(data), "jsonl")
    assert b.lines.tolist() == [1, 2]
    assert b.updates == [("u1", {"plan": "pro", "seats": 5.0, "old": None}, None),
                         ("u2", {"plan": "free"}, T0)]
    assert [(r.line, r.reason) for r in b.rejections] == [
        (3, "missing traits"),
        (4, 'trait "x" is an object: a value is a string, number, boolean or null'),
        (5, 'unknown field "plan" (a trait update has user_id, traits, timestamp_ms)')]
    csv_data = (b"user_id,timestamp_ms,plan,seats,beta\n"
                b"u1,,pro,5,true\n"
                b"u2,1700000000000,,,\n"           # empty cells leave the traits as they are
                b"u3,later,pro,1,false\n")
    [b] = F.trait_batches(io.BytesIO(csv_data), "csv")
    assert b.updates == [("u1", {"plan": "pro", "seats": 5.0, "beta": True}, None),
                         ("u2", {}, T0)]
    assert [r.line for r in b.rejections] == [4]
    with pytest.raises(F.FileError, match="no user_id column"):
        list(F.trait_batches(io.BytesIO(b"id,plan\n"), "csv"))


# ----------------------------------------------------------------------------- load()


class _Result:
    def __init__(self, accepted, rejections):
        self.accepted, self.rejections = accepted, rejections


class _Rej:
    def __init__(self, index, reason):
        self.index, self.reason = index, reason


def test_load_maps_engine_rejections_to_lines_and_retries_transient_errors():
    from engine.errors import LimitExceeded, Unavailable

    data = _jsonl(*[{"user_id": "" if i in (4, 17) else f"u{i}", "type": "t",
                     "timestamp_ms": T0 + i} if i != 9 else b"{" for i in range(1, 26)])
    calls: list[str] = []

    def send(batch, batch_id):
        calls.append(batch_id)
        if len(calls) == 2:                       # the second batch fails once
            raise Unavailable("a shard is recovering")
        bad = [_Rej(i, "user_id must not be empty") for i, u in enumerate(batch.user_id)
               if u == ""]
        return _Result(len(batch) - len(bad), bad)

    seen = []
    summary = F.load(F.event_batches(io.BytesIO(data), "jsonl", batch_rows=10), send,
                     on_rejection=seen.append, keep=2, backoff_s=0)
    assert (summary.accepted, summary.rejected, summary.batches) == (22, 3, 3)
    assert [r.line for r in seen] == [4, 9, 17]
    assert [r.line for r in summary.rejections] == [4, 9]            # the first `keep`
    assert calls[1] == calls[2] and len(set(calls)) == 3             # a retry keeps its id
    out = summary.to_dict()
    assert list(out) == ["accepted", "rejected", "batches", "seconds", "rejections"]
    assert out["rejections"][0] == {"line": 4, "reason": "user_id must not be empty"}

    def refuse_second(batch, batch_id):
        if int(batch.lines[0]) > 10:
            raise LimitExceeded("the batch has too many events (max_batch_events)")
        return _Result(len(batch), [])

    summary = F.load(F.event_batches(io.BytesIO(data), "jsonl", batch_rows=10), refuse_second,
                     backoff_s=0)
    assert (summary.accepted, summary.batches, summary.stopped_at_line) == (9, 1, 11)
    assert "max_batch_events" in summary.error and summary.rejected == 1

    cut = gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(data)[:-30]))     # a truncated file
    summary = F.load(F.event_batches(cut, "jsonl"), lambda b, i: _Result(len(b), []))
    assert summary.error is not None and "cannot read the file" in summary.error


# ----------------------------------------------------------------------------- CLI, no server


def test_cli_usage_errors_exit_2(tmp_path):
    env = {"RTSEG_TARGET": "127.0.0.1:1"}
    r = rtseg("ingest", str(tmp_path / "nope.jsonl"), env=env, timeout=60)
    assert r.returncode == 2 and "cannot open" in r.stderr and "nope.jsonl" in r.stderr
    good = tmp_path / "e.csv"
    good.write_bytes(CSV)
    r = rtseg("ingest", str(good), "--map", "oops", env=env, timeout=60)
    assert r.returncode == 2 and "COLUMN=FIELD" in r.stderr
    r = rtseg("ingest", str(good), "--batch-size", "0", env=env, timeout=60)
    assert r.returncode == 2 and "--batch-size" in r.stderr
    r = rtseg("traits", str(good), "--map", "user_id=uid", env=env, timeout=60)
    assert r.returncode == 2 and "no user_id column" in r.stderr and r.stdout == ""


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "--shards", "1", "--clock", "event", "--token", TOKEN)
    yield srv
    assert srv.stop() == 0, srv.stderr_tail()


@pytest.fixture(scope="module")
def env(server):
    return {"RTSEG_TARGET": server.target, "RTSEG_TOKEN": TOKEN}


@pytest.fixture()
def client(server):
    from engine.client import Client

    with Client(server.target, TOKEN, timeout_s=120) as c:
        yield c


def _summary(r) -> dict:
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def _workload(seed: int, prefix: str, n: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"user_id": f"{prefix}{rng.randrange(60)}", "type": rng.choice(["view", "purchase"]),
             "timestamp_ms": T0 + i * 1000, "value": float(rng.randrange(0, 80)),
             "properties": {"country": rng.choice(["TR", "US", "DE"])}} for i in range(n)]


@pytest.mark.ray
def test_ingest_jsonl_gz_then_csv_segments_match_accepted_events(server, env, client, tmp_path):
    client.create_segment("f_buyers", "count(purchase, 30d) >= 2")
    client.create_segment("f_tr", 'count(view where country == "TR", 30d) >= 1')
    client.create_segment("f_spend", "sum(purchase.value, 30d) >= 100")
    client.create_segment("f_vip", "count(view where vip == true, 30d) >= 1")
    events = _workload(7, "j", 2500)
    lines: list = [dict(e) for e in events]
    bad = {    # 1-based line -> what is wrong; the parser's and the engine's rejections
        10: b'{"user_id": "j1", "type": ',
        250: {"user_id": "j2", "type": "view", "timestamp_ms": "noon"},
        1001: {"user_id": "j3", "timestamp_ms": T0},
        1500: {"user_id": "", "type": "view", "timestamp_ms": T0},           # engine: empty id
        2222: {"user_id": "j4", "type": "view"},                              # engine: no time
    }
    for line, obj in sorted(bad.items()):
        lines.insert(line - 1, obj)
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(_jsonl(*lines)))
    r = rtseg("ingest", str(path), "--batch-size", "1000", env=env)
    out = _summary(r)
    assert r.returncode == 1, r.stderr
    assert (out["accepted"], out["rejected"], out["batches"]) == (2500, 5, 3)
    assert [x["line"] for x in out["rejections"]] == sorted(bad)
    reasons = {x["line"]: x["reason"] for x in out["rejections"]}
    assert "not valid JSON" in reasons[10] and "noon" in reasons[250]
    assert reasons[1001] == "missing type"
    assert "user_id" in reasons[1500] and "timestamp_ms is required" in reasons[2222]
    assert "ingest" in r.stderr and "B" in r.stderr          # the progress bar, in bytes

    csv_lines = ["user_id,type,timestamp_ms,value,country,vip"]
    csv_events = []
    for i in range(300):
        e = {"user_id": f"c{i % 40}", "type": "view" if i % 3 else "purchase",
             "timestamp_ms": T0 + 2_500_000 + i, "value": float(i % 7) * 10,
             "properties": {"country": ["TR", "US"][i % 2], "vip": i % 5 == 0}}
        csv_events.append(e)
        csv_lines.append(f"{e['user_id']},{e['type']},{e['timestamp_ms']},{e['value']:g},"
                         f"{e['properties']['country']},{str(e['properties']['vip']).lower()}")
    csv_lines.insert(50, "c1,view")                        # line 51: two fields
    csv_lines.insert(100, "c2,view,12:00,1,TR,false")      # line 101
    csv_path = tmp_path / "events.csv"
    csv_path.write_text("\n".join(csv_lines) + "\n")
    rej_path = tmp_path / "rejections.jsonl"
    r = rtseg("ingest", str(csv_path), "--rejections", str(rej_path), "--quiet", env=env)
    out = _summary(r)
    assert r.returncode == 1 and r.stderr == ""
    assert (out["accepted"], out["rejected"], out["batches"]) == (300, 2, 1)
    written = [json.loads(x) for x in rej_path.read_text().splitlines()]
    assert [x["line"] for x in written] == [51, 101] == [x["line"] for x in out["rejections"]]
    assert "12:00" in written[1]["reason"]

    accepted = events + csv_events
    expect: dict[str, set] = {"f_buyers": set(), "f_tr": set(), "f_spend": set(), "f_vip": set()}
    buys: dict[str, int] = {}
    spend: dict[str, float] = {}
    for e in accepted:
        u, p = e["user_id"], e["properties"]
        if e["type"] == "purchase":
            buys[u] = buys.get(u, 0) + 1
            spend[u] = spend.get(u, 0.0) + e["value"]
        elif p.get("country") == "TR":
            expect["f_tr"].add(u)
        if e["type"] == "view" and p.get("vip") is True:
            expect["f_vip"].add(u)
    expect["f_buyers"] = {u for u, n in buys.items() if n >= 2}
    expect["f_spend"] = {u for u, s in spend.items() if s >= 100}
    for name, members in expect.items():
        assert members, name
        wait_until(lambda name=name, members=members: client.members(name) == members,
                   timeout_s=60)

    exported = rtseg("segment", "export", "f_buyers", env=env)
    assert exported.returncode == 0 and set(exported.stdout.split()) == expect["f_buyers"]
    target = tmp_path / "out" / "buyers.txt"
    target.parent.mkdir()
    r = rtseg("segment", "export", "f_buyers", "-o", str(target), env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"segment": "f_buyers", "members": len(expect["f_buyers"]),
                                    "output": str(target)}
    ids = target.read_text().splitlines()
    assert len(ids) == len(set(ids)) and set(ids) == expect["f_buyers"]
    r = rtseg("segment", "export", "f_nope", "-o", str(tmp_path / "out" / "nope.txt"), env=env)
    assert r.returncode == 1 and "does not exist" in r.stderr
    assert sorted(p.name for p in target.parent.iterdir()) == ["buyers.txt"]   # nothing half-written


@pytest.mark.ray
def test_ingest_from_stdin_all_accepted_exits_0(server, env, client):
    client.create_segment("s_all", "count(ping, 30d) >= 1")
    data = _jsonl(*({"user_id": f"s{i}", "type": "ping", "timestamp_ms": T0 + i,
                     "properties": {"n": i}} for i in range(120)))
    r = rtseg("ingest", "-", "--batch-size", "50", env=env, input=data.decode())
    out = _summary(r)
    assert r.returncode == 0, r.stderr
    assert out["accepted"] == 120 and out["rejected"] == 0 and out["batches"] == 3
    assert out["rejections"] == [] and out["seconds"] >= 0
    assert "rows" in r.stderr                         # no size on stdin: the bar counts rows
    wait_until(lambda: client.members("s_all") == {f"s{i}" for i in range(120)}, timeout_s=60)


@pytest.mark.ray
def test_traits_files_end_to_end(server, env, client, tmp_path):
    client.create_segment("t_pro", 'trait.plan == "pro" and trait.seats >= 5')
    client.create_segment("t_beta", "trait.beta == true")
    path = tmp_path / "traits.jsonl"
    path.write_bytes(_jsonl(
        {"user_id": "t1", "traits": {"plan": "pro", "seats": 10}},
        {"user_id": "t2", "traits": {"plan": "pro", "seats": 2}},
        {"user_id": "t3", "traits": "pro"},                                    # line 3
        {"user_id": "t4", "traits": {"plan": "pro", "seats": 5}, "timestamp_ms": T0}))
    r = rtseg("traits", str(path), env=env)
    out = _summary(r)
    assert r.returncode == 1
    assert (out["accepted"], out["rejected"]) == (3, 1) and out["rejections"][0]["line"] == 3
    wait_until(lambda: client.members("t_pro") == {"t1", "t4"}, timeout_s=60)

    csv_path = tmp_path / "traits.csv.gz"
    csv_path.write_bytes(gzip.compress(
        b"id,plan,seats,beta\n"
        b"t2,,7,true\n"              # seats 7, plan kept (empty cell): enters t_pro
        b"t1,free,,false\n"          # leaves t_pro
        b"t5,pro,9,TRUE\n"))
    r = rtseg("traits", str(csv_path), "--map", "id=user_id", env=env)
    out = _summary(r)
    assert r.returncode == 0 and (out["accepted"], out["rejected"]) == (3, 0), out
    wait_until(lambda: client.members("t_pro") == {"t2", "t4", "t5"}, timeout_s=60)
    assert client.members("t_beta") == {"t2", "t5"}
    assert client.get_user("t2")["traits"] == {"plan": "pro", "seats": 7.0, "beta": True}
    r = rtseg("traits", str(csv_path), "--csv-strings", "--map", "id=user_id", env=env)
    assert r.returncode == 0
    wait_until(lambda: client.members("t_beta") == set(), timeout_s=60)      # "true" != true
    assert client.get_user("t5")["traits"]["seats"] == "9"


def test_ingest_against_no_server_reports_where_it_stopped(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_bytes(_jsonl({"user_id": "u", "type": "t", "timestamp_ms": T0}))
    r = rtseg("ingest", str(path), "--quiet", env={"RTSEG_TARGET": "127.0.0.1:1"}, timeout=120)
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["accepted"] == 0 and out["stopped_at_line"] == 1 and out["error"]
