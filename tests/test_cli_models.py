"""``rtseg model train|deploy|get|list|delete`` against a live ``rtseg serve`` (real Ray):
the progress bar over the phases, the report and its precision/recall table, ``--json``,
and the errors (exit status 1, the reason on stderr)."""

from __future__ import annotations

import json

import pytest

from engine.client import Client
from tests.test_cli import rtseg
from tests.test_server_models import USER_FEATURES, population, user_onnx
from tests.test_server_support import TOKEN, start_server

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "--shards", "2", "--clock", "event", "--token", TOKEN)
    with Client(srv.target, TOKEN, timeout_s=120) as c:
        for day in population()[:28]:
            assert c.ingest_columns(**day).rejected == 0
    yield srv
    assert srv.stop() == 0, srv.stderr_tail()


@pytest.fixture(scope="module")
def env(server):
    return {"RTSEG_TARGET": server.target, "RTSEG_TOKEN": TOKEN}


def _ok(r):
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_train_prints_progress_report_and_curve(server, env):
    r = rtseg("model", "train", "buyers", "--target", "purchase", "--horizon", "7d",
              "--algorithm", "logistic", "--seed", "1", env=env)
    out = _ok(r)
    for phase in ("features", "fit", "calibration", "export", "deploy", "done"):
        assert f"training: {phase}" in r.stderr, r.stderr
    assert "5/5" in r.stderr
    lines = out.splitlines()
    assert lines[0].startswith("model buyers  version 1  (logistic, ")
    assert "purchase within 7d" in out and "AUC" in out and "calibration error" in out
    table = [ln.split() for ln in lines if ln.strip().startswith(">=")]
    assert [row[1] for row in table] == ["0.5", "0.6", "0.7", "0.8", "0.9", "0.95"]
    reached = [row for row in table if row[2] != "unreachable"]
    assert reached and all(float(row[3]) >= float(row[1]) for row in reached)

    again = json.loads(_ok(rtseg("model", "train", "buyers", "--target", "purchase",
                                 "--horizon", "7d", "--lookback", "14d", "--churn",
                                 "--feature", "count(view, 7d)", "--feature", "since(purchase)",
                                 "--bucket-high", "0.8", "--bucket-medium", "0.4",
                                 "--json", "--quiet", env=env)))
    assert (again["name"], again["version"], again["churn"]) == ("buyers", 2, True)
    assert again["features"] == ["count(view, 7d)", "since(purchase)"]
    assert (again["lookback_ms"], again["bucket_high"], again["bucket_medium"]) == \
        (14 * 86_400_000, 0.8, 0.4)
    assert "training:" not in _ok_err(rtseg("model", "get", "buyers", env=env))


def _ok_err(r):
    assert r.returncode == 0, r.stderr
    return r.stderr


def test_deploy_get_list_delete(server, env, tmp_path):
    path = tmp_path / "own.onnx"
    path.write_bytes(user_onnx(2))
    args = []
    for f in USER_FEATURES:
        args += ["--feature", f]
    out = _ok(rtseg("model", "deploy", "own", str(path), *args, env=env))
    assert out.startswith("model own  version 1  (onnx, ") and "no validation curve" in out
    got = json.loads(_ok(rtseg("model", "get", "own", "--json", env=env)))
    assert (got["name"], got["algorithm"], got["features"]) == ("own", "onnx", USER_FEATURES)
    # the address as a flag instead of RTSEG_TARGET
    listed = json.loads(_ok(rtseg("model", "list", "--json", "--server", server.target,
                                  env={"RTSEG_TOKEN": TOKEN})))
    assert [m["name"] for m in listed] == ["buyers", "own"]
    table = _ok(rtseg("model", "list", env=env)).splitlines()
    assert table[0].split()[:3] == ["name", "version", "algorithm"]
    assert [ln.split()[0] for ln in table[1:]] == ["buyers", "own"]

    with Client(server.target, TOKEN) as c:
        c.create_segment("own_high", 'score("own") >= 0.5')
    r = rtseg("model", "delete", "own", env=env)
    assert r.returncode == 1 and "own_high" in r.stderr and "error:" in r.stderr
    _ok(rtseg("segment", "delete", "own_high", env=env))
    assert json.loads(_ok(rtseg("model", "delete", "own", "--json", env=env)))["name"] == "own"
    r = rtseg("model", "get", "own", env=env)
    assert r.returncode == 1 and "own" in r.stderr


def test_errors_are_reported(server, env, tmp_path):
    r = rtseg("model", "train", "bad", "--target", "purchase", env=env)
    assert r.returncode == 1 and "horizon" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    r = rtseg("model", "deploy", "bad", str(bad), "--feature", "count(view, 1d)", env=env)
    assert r.returncode == 1 and "ONNX" in r.stderr and "Traceback" not in r.stderr
    r = rtseg("model", "deploy", "bad", str(bad), env=env)
    assert r.returncode == 2 and "--feature" in r.stderr
