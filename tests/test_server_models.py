"""Predictive models through a real ``rtseg serve`` (real Ray, real gRPC, 3 shards), against
the embedded ``Engine`` fed the same operations: TrainModel, then ``score()``/``bucket()``/
``likely()`` segments with the same members, the same scores and the same deltas; a user's
own ONNX model (and a mismatched one refused); DeleteModel refused while a segment uses it;
a retrain moving members with MODEL_UPDATED deltas; the models and their versions back after
a restart of ``rtseg serve`` on the same data dir; the retraining schedule."""

from __future__ import annotations


import grpc
import numpy as np
import pytest

from engine import Engine, ExpressionError, ModelError, ModelInUse, UnknownModel
from engine._pb import pb, pb_grpc
from engine.client import Client
from tests.test_server_support import ServerProcess, wait_until

pytestmark = pytest.mark.ray

T0 = 1_700_000_000_000
H = 3_600_000
D = 24 * H
N_USERS = 1200
DAYS = 34
TRAIN_DAY = 28             # the first model is trained after days [0, 28)
RETRAIN_DAY = 30           # and again after [0, 30)
SPEC = dict(name="buyers", target="purchase", horizon="7d", seed=3)
PHASES = ["features", "fit", "calibration", "export", "deploy"]


def population(seed: int = 7) -> list[dict]:
    """One columnar batch per day: users whose purchase propensity grows with a latent
    activity that also drives their views and carts (so the history predicts the label)."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(-0.4, 0.9, N_USERS)
    joined = np.where(rng.random(N_USERS) < 0.25, rng.uniform(0, 20 * D, N_USERS), 0.0)
    users = np.array([f"u{i:05d}" for i in range(N_USERS)], dtype=object)
    items = np.array([f"item{k}" for k in range(40)], dtype=object)
    days = []
    for day in range(DAYS):
        parts = []
        for kind, rate in (("view", 1.2 * activity), ("cart", 0.25 * activity),
                           ("purchase", 0.035 * activity ** 1.5)):
            n = rng.poisson(rate)
            idx = np.repeat(np.arange(N_USERS), n)
            t = T0 + day * D + rng.integers(0, D, len(idx))
            keep = t >= T0 + joined[idx]
            idx, t = idx[keep], t[keep]
            value = rng.gamma(2.0, 25.0, len(idx)) if kind == "purchase" else np.zeros(len(idx))
            parts.append((idx, t, np.full(len(idx), kind, dtype=object), value))
        idx = np.concatenate([p[0] for p in parts])
        order = np.argsort(np.concatenate([p[1] for p in parts]), kind="stable")
        days.append(dict(user_id=users[idx][order],
                         type=np.concatenate([p[2] for p in parts])[order],
                         timestamp_ms=np.concatenate([p[1] for p in parts])[order].astype(np.int64),
                         value=np.concatenate([p[3] for p in parts])[order],
                         properties={"item": items[rng.integers(0, len(items), len(idx))]}))
    return days


def user_onnx(n_features: int = 2) -> bytes:
    """A user's own model: scikit-learn logistic regression exported by skl2onnx."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    X = rng.poisson(3.0, (400, n_features)).astype(np.float32)
    y = (X[:, 0] + rng.normal(0, 1.5, 400) > 3.5).astype(int)
    lr = LogisticRegression().fit(X, y)
    return to_onnx(lr, X[:1], options={id(lr): {"zipmap": False}}, target_opset=17).SerializeToString()


USER_FEATURES = ["count(view, 3d)", "count(cart, 7d)"]


def padded(onnx_bytes: bytes, mb: int) -> bytes:
    """The same model with an unused initializer of ``mb`` megabytes (a large upload)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model_from_string(onnx_bytes)
    model.graph.initializer.append(numpy_helper.from_array(
        np.zeros(mb * 262_144, np.float32), name="padding"))
    return model.SerializeToString()


class Servers:
    """The served engine (restartable on the same data dir) and the embedded twin."""

    def __init__(self, tmp_path_factory):
        self.data_dir = tmp_path_factory.mktemp("models-data")
        self._tmp = tmp_path_factory
        self.args = ("--shards", "3", "--clock", "event", "--data-dir", str(self.data_dir),
                     "--retrain-interval", "3d", "--model-slice-users", "60")  # slices, as at scale
        self.proc = self._start()
        self.client = Client(self.proc.target, timeout_s=120)
        self.eng = Engine(clock="event")
        self.seen = 0

    def _start(self) -> ServerProcess:
        return ServerProcess(self._tmp.mktemp("rtseg-serve"), *self.args)

    def restart(self) -> None:
        self.client.close()
        assert self.proc.stop() == 0, self.proc.stderr_tail()
        self.proc = self._start()
        self.client = Client(self.proc.target, timeout_s=120)

    def both(self, method: str, *args, **kwargs):
        """Call both engines, then compare the deltas the call made; -> (served result,
        embedded result)."""
        out = getattr(self.client, method)(*args, **kwargs), getattr(self.eng, method)(*args, **kwargs)
        self.check_deltas(method)
        return out

    def check_deltas(self, what: str = "") -> None:
        """The same sequence numbers; within one operation the shards' deltas may come in
        another order (as in tests/test_server_differential.py)."""
        ds, de = self.client.deltas(self.seen), self.eng.deltas(self.seen)
        assert [d.sequence for d in ds] == [d.sequence for d in de], what
        key = lambda d: (d.segment, d.user_id, d.kind, d.at_ms, d.cause)  # noqa: E731
        assert sorted(map(key, ds)) == sorted(map(key, de)), what
        self.seen = de[-1].sequence if de else self.seen

    def stop(self) -> None:
        self.client.close()
        return self.proc.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = Servers(tmp_path_factory)
    w.days = population()
    for day in w.days[:TRAIN_DAY]:
        a, b = w.both("ingest_columns", **day)
        assert (a.accepted, a.now_ms) == (b.accepted, b.now_ms) and a.rejected == 0
    yield w
    assert w.stop() == 0, w.proc.stderr_tail()


def stub_of(world):
    channel = grpc.insecure_channel(world.proc.target)
    return channel, pb_grpc.SegmentEngineStub(channel)


def code_of(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value.code(), info.value.details()


def assert_same_state(world, segments, sample=80) -> None:
    for name in segments:
        served, embedded = world.client.members(name), world.eng.members(name)
        assert served == embedded, (name, len(served), len(embedded),
                                    sorted(served ^ embedded)[:5])
    rng = np.random.default_rng(0)
    for uid in rng.choice([f"u{i:05d}" for i in range(N_USERS)], sample, replace=False):
        got, want = world.client.get_user(str(uid)), world.eng.get_user(str(uid))
        assert got["known"] == want["known"] and got["segments"] == want["segments"], uid
        assert got["scores"].keys() == want["scores"].keys(), uid
        for m, p in want["scores"].items():
            assert abs(got["scores"][m] - p) <= 1e-6, (uid, m, got["scores"][m], p)


def comparable(report) -> dict:
    d = report.to_dict()
    for k in ("auc", "calibration_error", "predicted_positives", "base_rate"):
        d[k] = round(d[k], 9)
    d["curve"] = [(round(p["threshold"], 9), round(p["precision"], 9), p["size"]) for p in d["curve"]]
    d["candidates"] = {k: round(v, 9) for k, v in d["candidates"].items()}
    return d


# ----------------------------------------------------------------------------- wire


def test_spec_and_report_round_trip_the_wire():
    from engine.server import _codec as codec
    from scoring.spec import CurvePoint, ModelReport, ModelSpec

    spec = ModelSpec(name="m", target="purchase where value > 5", horizon_ms=7 * D,
                     lookback_ms=14 * D, churn=True, features=("count(view, 1d)",),
                     algorithm="gbt", bucket_high=0.9, bucket_medium=0.3, seed=4)
    msg = pb.ModelSpec.FromString(codec.spec_to_pb(spec).SerializeToString())
    assert codec.spec_from_pb(msg) == spec
    bare = codec.spec_from_pb(pb.ModelSpec(name="m", target="purchase", horizon_ms=D))
    assert (bare.algorithm, bare.bucket_high, bare.bucket_medium) == ("auto", 0.75, 0.5)
    report = ModelReport(name="m", version=3, auc=0.81, base_rate=0.1, rows=1000, positives=100,
                         curve=(CurvePoint(0.2, 0.5, 0.8, 160), CurvePoint(0.6, 0.9, 0.1, 11)),
                         features=("a", "b"), trained_ms=T0, cutoff_ms=T0 - D, algorithm="gbt",
                         calibration_error=0.01, validation_rows=200, validation_positives=20,
                         predicted_positives=19.5, target="purchase", horizon_ms=D,
                         lookback_ms=14 * D, churn=True, bucket_high=0.8, bucket_medium=0.4,
                         candidates={"logistic": 0.8, "gbt": 0.81})
    msg = pb.ModelReport.FromString(codec.report_to_pb(report).SerializeToString())
    assert codec.report_from_pb(msg) == report


# ----------------------------------------------------------------------------- training


def test_train_model_matches_the_embedded_engine(world):
    phases: list[str] = []
    served = world.client.train_model(**SPEC, progress=phases.append)
    embedded = world.eng.train_model(**SPEC)
    world.check_deltas("train_model")
    assert phases == PHASES
    assert (served.name, served.version, served.rows, served.positives) == \
        ("buyers", 1, embedded.rows, embedded.positives)
    assert served.cutoff_ms == embedded.cutoff_ms == served.trained_ms - 7 * D
    assert comparable(served) == comparable(embedded)
    assert served.rows > 0.7 * N_USERS and 0.6 < served.auc <= 1.0 and len(served.features) >= 15
    assert world.client.get_model("buyers") == served
    assert world.client.list_models() == [served]


def test_score_bucket_likely_segments_equal_the_embedded_engine(world):
    report = world.client.get_model("buyers")
    best = max(p.precision for p in report.curve)
    level = round(min(0.6, best - 0.05), 2)
    world.segments = {"warm": 'score("buyers") >= 0.2',
                      "hot": 'bucket("buyers") == "high" or bucket("buyers") == "medium"',
                      "likely": f'likely("buyers", {level})',
                      "likely_viewers": 'segment("likely") and count(view, 1d) >= 1'}
    for name, expr in world.segments.items():
        a, b = world.both("create_segment", name, expr)
        assert (a.name, a.size) == (b.name, b.size)
    assert world.client.get_segment("likely").size > 0
    assert_same_state(world, world.segments)
    # scores follow each event: the next days move members within the same batches
    for day in world.days[TRAIN_DAY:RETRAIN_DAY]:
        world.both("ingest_columns", **day)
    assert_same_state(world, world.segments)
    assert {d.cause for d in world.client.deltas()} >= {"SEGMENT_CREATED", "EVENT", "TIME"}


def test_segment_errors_name_the_model_with_line_and_column(world):
    channel, stub = stub_of(world)
    try:
        code, details = code_of(stub.CreateSegment, pb.SegmentSpec(
            name="x", expression='count(view, 1d) > 1 and score("nope") > 0.5'))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("1:25:") and "nope" in details, details
        code, details = code_of(stub.CreateSegment, pb.SegmentSpec(
            name="x", expression='likely("buyers", 0.9999)'))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("1:1:") and "best precision" in details, details
        code, details = code_of(stub.TrainModel, pb.ModelSpec(name="bad", target="purchase"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "horizon" in details, details
        code, details = code_of(stub.TrainModel, pb.ModelSpec(
            name="bad", target="purchase", horizon_ms=7 * D, lookback_ms=30 * D))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "retention" in details, details
        code, details = code_of(stub.GetModel, pb.ModelRef(name="nope"))
        assert code == grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()
    with pytest.raises(ExpressionError):
        world.client.create_segment("x", 'score("nope") > 0.5')
    with pytest.raises(ModelError):
        world.client.train_model(name="bad", target="purchase where", horizon="7d")
    with pytest.raises(UnknownModel):
        world.client.delete_model("nope")


# ----------------------------------------------------------------------------- user models


def test_a_users_onnx_model_and_a_mismatch(world):
    onnx = user_onnx(2)
    served, embedded = world.both("deploy_model", "own", onnx, USER_FEATURES)
    assert served == embedded and served.algorithm == "onnx" and served.version == 1
    a, b = world.both("create_segment", "own_high", 'score("own") >= 0.5')
    assert a.size == b.size > 0
    world.segments["own_high"] = 'score("own") >= 0.5'
    assert_same_state(world, ["own_high"])

    channel, stub = stub_of(world)
    try:
        code, details = code_of(stub.DeployModel, pb.DeployModelRequest(
            name="own2", onnx=onnx, features=USER_FEATURES + ["count(purchase, 7d)"]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "2" in details and "3" in details, details
        code, details = code_of(stub.DeployModel, pb.DeployModelRequest(
            name="own2", onnx=b"not a model", features=USER_FEATURES))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "ONNX" in details, details
        code, details = code_of(stub.DeployModel, pb.DeployModelRequest(
            name="own2", onnx=onnx, features=["count(view, 3d)", "count(view, 3d"]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "features[1]" in details, details
    finally:
        channel.close()
    assert [m.name for m in world.client.list_models()] == ["buyers", "own"]
    with pytest.raises(ExpressionError, match="curve"):
        world.client.create_segment("own_likely", 'likely("own", 0.5)')


def test_a_large_onnx_upload(world):
    big = padded(user_onnx(2), 40)
    assert len(big) > 40_000_000
    report = world.client.deploy_model("big", big, USER_FEATURES)
    assert report.version == 1 and world.client.get_user("u00002")["scores"]["big"] >= 0
    assert world.client.delete_model("big").name == "big"


def test_delete_model_refused_while_a_segment_uses_it(world):
    channel, stub = stub_of(world)
    try:
        code, details = code_of(stub.DeleteModel, pb.ModelRef(name="own"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "own_high" in details, details
    finally:
        channel.close()
    with pytest.raises(ModelInUse):
        world.client.delete_model("own")
    world.both("delete_segment", "own_high")
    del world.segments["own_high"]
    served, embedded = world.both("delete_model", "own")
    assert served == embedded and served.name == "own"
    with pytest.raises(UnknownModel):
        world.client.get_model("own")
    assert "own" not in world.client.get_user("u00001")["scores"]
    assert_same_state(world, world.segments, sample=20)


# ----------------------------------------------------------------------------- versions


def test_retrain_moves_members_with_model_updated_deltas(world):
    before = world.client.last_sequence
    served, embedded = world.both("train_model", **SPEC)
    assert served.version == embedded.version == 2
    assert comparable(served) == comparable(embedded)
    updated = [d for d in world.client.deltas(before) if d.cause == "MODEL_UPDATED"]
    assert updated and {d.segment for d in updated} <= set(world.segments)
    assert_same_state(world, world.segments)
    n_served, n_embedded = world.both("rescore")
    assert n_served == n_embedded
    assert_same_state(world, world.segments, sample=10)


def test_scaling_gives_new_shards_the_models_before_users(world):
    assert world.client.scale(4, timeout_s=300)["shards"] == 4
    assert_same_state(world, world.segments, sample=40)
    # the new shard scores the users it took over, event by event
    world.both("ingest_columns", **world.days[RETRAIN_DAY])
    assert_same_state(world, world.segments, sample=40)


def test_models_and_versions_come_back_after_a_restart(world):
    """A restart on the same data dir brings back everything: the model versions, the
    segments using them, every user's scores and the delta log (sequences go on)."""
    reports = world.client.list_models()
    assert [(r.name, r.version) for r in reports] == [("buyers", 2)]
    segments = [(s.name, s.size) for s in world.client.list_segments()]
    last = world.client.last_sequence
    world.restart()
    assert world.client.list_models() == reports
    assert [(s.name, s.size) for s in world.client.list_segments()] == segments
    assert world.client.last_sequence == last
    for day in world.days[RETRAIN_DAY - 9:RETRAIN_DAY + 1]:
        world.both("ingest_columns", **day)
    world.both("create_segment", "warm_again", 'score("buyers") >= 0.2')
    assert_same_state(world, sorted(world.segments) + ["warm_again"], sample=40)


def test_scheduled_retraining_makes_a_new_version(world):
    """--retrain-interval 3d: once the clock (event time here) is 3 days past the last
    training, the gateway trains the model again from its spec, while ingestion goes on."""
    trained = world.client.get_model("buyers")
    before = world.client.last_sequence
    for day in world.days[RETRAIN_DAY + 1:]:
        world.client.ingest_columns(**day)
    assert world.client.now_ms >= trained.trained_ms + 3 * D
    report = wait_until(lambda: (lambda r: r if r.version == 3 else None)(
        world.client.get_model("buyers")), timeout_s=60, interval_s=0.2)
    assert report.trained_ms >= trained.trained_ms + 3 * D
    assert report.cutoff_ms == report.trained_ms - 7 * D
    assert report.features == trained.features and report.rows > trained.rows / 2
    updated = wait_until(lambda: [d for d in world.client.deltas(before)
                                  if d.cause == "MODEL_UPDATED"], timeout_s=10)
    assert "warm" in {d.segment for d in updated}
