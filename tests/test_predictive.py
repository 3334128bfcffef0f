"""Predictive segments on a synthetic population whose propensity is known by construction.

Every user has a latent activity level and taste; ``app_open``, ``view_product`` and
``purchase`` events arrive as Poisson processes over the weeks before a scoring point. Whether
a user purchases in the horizon after that point is drawn from a **known logistic function of
observable history features** (``Population.TRUTH``, evaluated by a numpy copy of the language's
window rule), so the generator's own AUC, each user's true probability and the expected number
of buyers are known. The engine only ever sees the events.

A second population (*fresh* users, never trained on) is generated the same way with its
scoring point at the engine's ``now``: the deployed model scores them as they are ingested,
and their true probabilities say what the thresholds and the forecast should be.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine import Engine, ExpressionError, ModelError, ModelInUse, UnknownModel

DAY = 86_400_000
START = 1_700_006_400_000              # 2023-11-15 00:00 UTC
END = START + 60 * DAY                 # the engine's now after the replay
HORIZON = 14 * DAY
LOOKBACK = 45 * DAY
RETENTION = "75d"                      # >= lookback + horizon
TYPES = np.array(["app_open", "view_product", "purchase"], dtype=object)
APP, VIEW, BUY = range(3)


class Population:
    """Users, their events and their true purchase probability at a scoring point ``at``.

    With ``label=True`` the scoring point is ``end - horizon`` (the training cutoff): events
    over ``history_days`` before it, then browsing goes on until ``end`` and the users drawn
    as converting (``y``) purchase 1 + Poisson(0.3) times in ``(at, end]``; nobody else does.
    With ``label=False`` the scoring point is ``end`` itself and the outcome ``y`` is drawn
    (for a future the engine never sees).
    """

    TRUTH = (("count(purchase, 30d)", 0.45), ("active_days(app_open, 14d)", 0.15),
             ("count(view_product, 7d)", 0.06))
    B0 = -3.0

    def __init__(self, n: int, seed: int, end_ms: int = END, horizon_ms: int = HORIZON,
                 history_days: int = 45, prefix: str = "u", label: bool = True):
        rng = np.random.default_rng(seed)
        self.n, self.end_ms = n, end_ms
        self.ids = np.array([f"{prefix}{i}" for i in range(n)], dtype=object)
        self.index = {u: i for i, u in enumerate(self.ids.tolist())}
        self.at = end_ms - horizon_ms if label else end_ms
        self.activity = np.exp(rng.normal(0.0, 0.6, n))
        taste = np.exp(rng.normal(0.0, 0.5, n))
        lo = self.at - history_days * DAY
        rates = {APP: 0.4 * self.activity, VIEW: 0.6 * self.activity, BUY: 0.05 * self.activity * taste}
        parts = [(np.arange(n), np.full(n, APP), rng.integers(lo + 1, self.at + 1, n))]  # everyone is known
        for t, rate in rates.items():
            u = np.repeat(np.arange(n), rng.poisson(rate * history_days))
            parts.append((u, np.full(len(u), t), rng.integers(lo + 1, self.at + 1, len(u))))
        if label:
            for t in (APP, VIEW):
                u = np.repeat(np.arange(n), rng.poisson(rates[t] * horizon_ms / DAY))
                parts.append((u, np.full(len(u), t), rng.integers(self.at + 1, end_ms + 1, len(u))))
        self._set([np.concatenate(x) for x in zip(*parts)], rng)
        self.p = self.probability(self.at)
        self.y = rng.random(n) < self.p
        if label:
            u = np.repeat(np.arange(n), np.where(self.y, 1 + rng.poisson(0.3, n), 0))
            more = (u, np.full(len(u), BUY), rng.integers(self.at + 1, end_ms + 1, len(u)))
            self._set([np.concatenate([a, b]) for a, b in zip((self.u, self.t, self.ts), more)], rng,
                      keep=self.value)

    def _set(self, cols, rng, keep=None):
        u, t, ts = cols
        ts = ts.astype(np.int64)
        value = np.where(t == BUY, np.maximum(1.0, np.round(rng.lognormal(3.5, 0.7, len(u)) * 4) / 4), 0.0)
        if keep is not None:
            value[: len(keep)] = keep
        order = np.argsort(ts, kind="stable")
        self.u, self.t, self.ts, self.value = u[order], t[order], ts[order], value[order]

    # numpy copies of the language's functions, window (now - W, now]
    def _in(self, typ, w, now):
        return (self.t == typ) & (self.ts > now - w) & (self.ts <= now)

    def count(self, typ, w, now):
        return np.bincount(self.u[self._in(typ, w, now)], minlength=self.n).astype(np.float64)

    def active_days(self, typ, w, now):
        m = self._in(typ, w, now)
        pairs = np.unique(self.u[m].astype(np.int64) * 1_000_000 + self.ts[m] // DAY)
        return np.bincount(pairs // 1_000_000, minlength=self.n).astype(np.float64)

    def truth_features(self, now):
        return np.stack([self.count(BUY, 30 * DAY, now), self.active_days(APP, 14 * DAY, now),
                         self.count(VIEW, 7 * DAY, now)], axis=1)

    def probability(self, now):
        w = np.array([w for _, w in self.TRUTH])
        return 1.0 / (1.0 + np.exp(-(self.B0 + self.truth_features(now) @ w)))

    def columns(self, sel=slice(None)):
        return {"user_id": self.ids[self.u[sel]], "type": TYPES[self.t[sel]], "timestamp_ms": self.ts[sel],
                "value": self.value[sel]}

    def rows_of(self, user_ids) -> np.ndarray:
        return np.array([self.index[u] for u in user_ids], np.int64)


def features_of_truth() -> list[str]:
    return [f for f, _ in Population.TRUTH]


def auc(score, y) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(y, bool), np.asarray(score, np.float64)))


def ingest(eng, pop: Population, chunk: int = 200_000, upto: int | None = None) -> None:
    n = len(pop.ts)
    for a in range(0, n, chunk):
        r = eng.ingest_columns(**pop.columns(slice(a, min(a + chunk, n))))
        assert r.rejected == 0, r.rejections[:3]
    eng.advance_clock(pop.end_ms if upto is None else upto)


def make_engine(pop: Population, retention: str = RETENTION, **kw) -> Engine:
    eng = Engine(clock="event", retention=retention, **kw)
    eng.advance_clock(int(pop.ts[0]))
    ingest(eng, pop)
    return eng


def validation_mask(hashes) -> np.ndarray:
    """scoring's split of users by hash: True for the validation users."""
    from scoring.training import split_by_user

    return split_by_user(np.asarray(hashes, np.uint64))[0] == 2


def buy_spec(**kw):
    from scoring.spec import ModelSpec

    base = dict(name="buy", target="purchase", horizon_ms=HORIZON, lookback_ms=LOOKBACK)
    base.update(kw)
    return ModelSpec(**base)


def scores(eng: Engine, user_ids, model: str) -> np.ndarray:
    return np.array([eng.get_user(u)["scores"].get(model, np.nan) for u in user_ids], np.float64)


# --------------------------------------------------------------------------- the big population


@pytest.fixture(scope="module")
def world():
    """40,000 training users, a model trained on them with the default features, then 10,000
    fresh users scored by it."""
    pop = Population(40_000, seed=1)
    eng = make_engine(pop)
    report = eng.train_model(buy_spec())
    # the training rows as the engine had them (the fresh users join the population later)
    td = eng._core.training_data(features_of_truth(), buy_spec().resolved(eng.retention_ms), report.cutoff_ms, END)
    fresh = Population(10_000, seed=2, label=False, prefix="f")
    ingest(eng, fresh)
    return {"pop": pop, "eng": eng, "report": report, "td": td, "fresh": fresh,
            "fresh_scores": scores(eng, fresh.ids.tolist(), "buy")}


@pytest.fixture(scope="module")
def small():
    """4,000 users for the tests that change their engine (each builds its own)."""
    return Population(4_000, seed=11)


def test_the_engine_sees_the_generators_features_and_labels(world):
    """Point-in-time rows from the engine equal the generator's own, computed in numpy."""
    pop, rep = world["pop"], world["report"]
    assert rep.cutoff_ms == END - HORIZON == pop.at
    td = world["td"]
    rows = pop.rows_of(td["user_ids"])
    assert len(rows) == pop.n == rep.rows
    np.testing.assert_array_equal(td["X"], pop.truth_features(pop.at)[rows])
    np.testing.assert_array_equal(td["y"], pop.y[rows])
    assert rep.positives == int(pop.y.sum())


def test_validation_auc_is_the_generators_own(world):
    pop, rep, td = world["pop"], world["report"], world["td"]
    val = validation_mask(td["hashes"])
    rows = pop.rows_of(td["user_ids"])[val]
    assert rep.validation_rows == len(rows) and rep.validation_positives == int(pop.y[rows].sum())
    oracle = auc(pop.p[rows], pop.y[rows])
    assert abs(rep.auc - oracle) <= 0.02, (rep.auc, oracle, rep.algorithm, rep.candidates)
    assert 0.75 < oracle < 0.9           # the population is neither trivial nor hopeless


def test_validation_forecast_and_calibration(world):
    """Sum of calibrated probabilities over the validation users against the generator's
    expected count of buyers among them and the count that happened."""
    pop, rep, td = world["pop"], world["report"], world["td"]
    rows = pop.rows_of(td["user_ids"])[validation_mask(td["hashes"])]
    p = pop.p[rows]
    expected, sd = p.sum(), np.sqrt((p * (1 - p)).sum())
    assert abs(rep.predicted_positives - expected) <= 3 * sd, (rep.predicted_positives, expected, sd)
    assert abs(rep.predicted_positives - rep.validation_positives) <= 3 * sd
    assert rep.calibration_error < 0.03
    assert abs(rep.base_rate - pop.y.mean()) < 0.02


def test_forecast_on_fresh_users(world):
    """The scores of users never trained on add up to the generator's expected count."""
    fresh, s = world["fresh"], world["fresh_scores"]
    assert not np.isnan(s).any() and ((0 <= s) & (s <= 1)).all()
    expected, sd = fresh.p.sum(), np.sqrt((fresh.p * (1 - fresh.p)).sum())
    assert abs(s.sum() - expected) <= 3 * sd, (s.sum(), expected, sd)
    assert abs(s.sum() - expected) / expected < 0.05
    assert abs(s.sum() - fresh.y.sum()) <= 3 * sd + abs(fresh.y.sum() - expected)
    assert auc(s, fresh.p > np.median(fresh.p)) > 0.9      # ranks users like the truth does


@pytest.mark.parametrize("level", [0.5, 0.6, 0.7])
def test_precision_levels_hold_on_fresh_users(world, level):
    from scoring.spec import threshold_for

    eng, fresh, s, rep = world["eng"], world["fresh"], world["fresh_scores"], world["report"]
    name = f"likely_{int(level * 100)}"
    eng.create_segment(name, f'likely("buy", {level})')
    t = threshold_for(rep.curve, level)
    members = eng.members(name)
    chosen = np.array([u in members for u in fresh.ids.tolist()])
    np.testing.assert_array_equal(chosen, s >= t)          # likely() is score >= t(P)
    assert chosen.sum() >= 300
    precision = fresh.p[chosen].mean()                     # the expected precision of the audience
    assert abs(precision - level) <= 0.03, (level, precision, t, int(chosen.sum()))
    realised = fresh.y[chosen].mean()                      # and the one drawn
    assert abs(realised - level) <= 0.03 + 3 * np.sqrt(level * (1 - level) / chosen.sum())


def test_an_unreachable_precision_is_refused(small):
    """A model that cannot tell users apart (a constant feature) reaches only the base rate."""
    from scoring.spec import best_precision

    eng = make_engine(small)
    rep = eng.train_model(buy_spec(name="blind", features=("count(no_such_event, 7d)",), algorithm="logistic"))
    best = best_precision(rep.curve)
    assert best == pytest.approx(rep.validation_positives / rep.validation_rows) and rep.auc == 0.5
    with pytest.raises((ExpressionError, ModelError)) as err:
        eng.create_segment("too_sure", 'likely("blind", 0.5)')
    assert f"{best:.2f}" in str(err.value) and "blind" in str(err.value)
    eng.create_segment("fine", f'likely("blind", {best - 0.01:.2f})')   # everyone qualifies
    assert len(eng.members("fine")) == small.n
    with pytest.raises(ExpressionError, match="1:"):
        eng.create_segment("nope", 'score("no_such_model") > 0.5')


def test_scores_buckets_and_likely_in_get_user_and_segments(world):
    eng, fresh, s, rep = world["eng"], world["fresh"], world["fresh_scores"], world["report"]
    assert (rep.bucket_high, rep.bucket_medium) == (0.75, 0.5)
    for b in ("high", "medium", "low"):
        eng.create_segment(f"bucket_{b}", f'bucket("buy") == "{b}"')
    eng.create_segment("score_03", 'score("buy") >= 0.3')
    ids = fresh.ids.tolist()
    want = {"high": s >= 0.75, "medium": (s >= 0.5) & (s < 0.75), "low": s < 0.5}
    for b, mask in want.items():
        got = eng.members(f"bucket_{b}")
        np.testing.assert_array_equal([u in got for u in ids], mask)
    assert want["high"].any() and want["medium"].any()
    got = eng.members("score_03")
    np.testing.assert_array_equal([u in got for u in ids], s >= 0.3)
    for u in ids[:50]:
        view = eng.get_user(u)
        assert view["known"] and set(view["scores"]) == {"buy"}
        sc = view["scores"]["buy"]
        expect_bucket = "bucket_high" if sc >= 0.75 else "bucket_medium" if sc >= 0.5 else "bucket_low"
        assert expect_bucket in view["segments"]
        assert ("score_03" in view["segments"]) == (sc >= 0.3)
    assert eng.get_user("nobody")["scores"] == {}


def test_fresh_users_were_scored_as_they_arrived(world):
    """Ingesting the fresh users scored them: no separate call was needed."""
    eng, fresh = world["eng"], world["fresh"]
    assert eng.get_user(fresh.ids[0])["scores"]["buy"] == world["fresh_scores"][0]


def test_model_reports(world):
    eng, rep = world["eng"], world["report"]
    assert rep.name == "buy" and rep.version == 1 and rep.algorithm in ("logistic", "gbt")
    # auto fits both and keeps the better (the candidates' AUCs are measured before validation)
    assert set(rep.candidates) == {"logistic", "gbt"}
    assert rep.candidates[rep.algorithm] == max(rep.candidates.values())
    assert len(rep.features) >= 15 and rep.horizon_ms == HORIZON and rep.lookback_ms == LOOKBACK
    assert rep.target == "purchase" and rep.trained_ms == END
    assert [m.name for m in eng.list_models()] == ["buy"]
    assert eng.get_model("buy") == rep
    ps = [c.precision for c in rep.curve]
    assert rep.curve and all(0 <= c.recall <= 1 for c in rep.curve)
    assert max(ps) > 0.7 and min(c.threshold for c in rep.curve) <= rep.base_rate
    with pytest.raises(UnknownModel):
        eng.get_model("absent")


# --------------------------------------------------------------------------- smaller engines


def test_an_event_after_the_cutoff_changes_no_training_feature(small):
    pop = small
    eng = make_engine(pop)
    rep = eng.train_model(buy_spec())
    spec = buy_spec().resolved(eng.retention_ms)
    feats = list(rep.features) + features_of_truth() + ["since(purchase)", "since_first(app_open)",
                                                         "max(purchase.value, 30d)"]
    before = eng._core.training_data(feats, spec, rep.cutoff_ms, END)
    # every kind of event, for every user, strictly after the cutoff and up to now
    rng = np.random.default_rng(5)
    k = 3 * pop.n
    late = {"user_id": pop.ids[rng.integers(0, pop.n, k)], "type": TYPES[rng.integers(0, 3, k)],
            "timestamp_ms": rng.integers(rep.cutoff_ms + 1, END + 1, k).astype(np.int64),
            "value": np.round(rng.random(k) * 400, 2)}
    late["timestamp_ms"][:10] = rep.cutoff_ms + 1          # right after the cutoff
    assert eng.ingest_columns(**late).rejected == 0 and eng.now_ms == END
    after = eng._core.training_data(feats, spec, rep.cutoff_ms, END)
    assert after["user_ids"] == before["user_ids"]
    np.testing.assert_array_equal(after["X"], before["X"])          # NaN == NaN here
    assert (after["y"] & ~before["y"]).any()                          # the labels did see them
    # and a user seen only after the cutoff is not in the population
    eng.ingest([{"user_id": "newcomer", "type": "purchase", "timestamp_ms": END, "value": 9.0}])
    assert "newcomer" not in eng._core.training_data(feats, spec, rep.cutoff_ms, END)["user_ids"]


def test_a_retention_shorter_than_lookback_plus_horizon_is_refused():
    eng = Engine(clock="event", retention="30d")
    eng.ingest([{"user_id": f"u{i}", "type": "purchase", "timestamp_ms": START + i * 1000} for i in range(100)])
    with pytest.raises(ModelError) as err:
        eng.train_model(name="m", target="purchase", horizon_ms=7 * DAY, lookback_ms=30 * DAY)
    msg = str(err.value)
    assert "retention" in msg and "30d" in msg and "lookback" in msg and "horizon" in msg and "37d" in msg
    assert eng.list_models() == []
    with pytest.raises(ModelError, match="horizon"):
        eng.train_model(name="m", target="purchase", horizon_ms=31 * DAY)


def test_a_retrain_moves_membership_with_model_updated_deltas(small):
    pop = small
    eng = make_engine(pop)
    v1 = eng.train_model(buy_spec(name="m", features=("count(purchase, 30d)",)))
    eng.create_segment("keen", 'score("m") >= 0.35')
    eng.create_segment("keen_likely", 'likely("m", 0.5)')
    before = {n: eng.members(n) for n in ("keen", "keen_likely")}
    seq = eng.last_sequence
    v2 = eng.train_model(buy_spec(name="m", features=features_of_truth()))
    assert (v1.version, v2.version) == (1, 2) and eng.get_model("m").version == 2
    assert v2.auc > v1.auc
    deltas = eng.deltas(after_sequence=seq)
    assert deltas and {d.cause for d in deltas} == {"MODEL_UPDATED"}
    assert {d.kind for d in deltas if d.segment == "keen"} == {"ENTER", "EXIT"}
    s = scores(eng, pop.ids.tolist(), "m")
    now = {n: eng.members(n) for n in ("keen", "keen_likely")}
    assert now["keen"] == {u for u, x in zip(pop.ids.tolist(), s) if x >= 0.35}
    for n in before:                     # the deltas are exactly the difference
        d = [x for x in deltas if x.segment == n]
        assert {x.user_id for x in d if x.kind == "ENTER"} == now[n] - before[n]
        assert {x.user_id for x in d if x.kind == "EXIT"} == before[n] - now[n]
    assert now["keen"] != before["keen"]


def test_score_segments_move_in_the_same_ingest_call(small):
    pop = small
    eng = make_engine(pop)
    eng.train_model(buy_spec(features=features_of_truth()))
    eng.create_segment("hot", 'likely("buy", 0.6)')
    s = scores(eng, pop.ids.tolist(), "buy")
    u = pop.ids[int(np.argmin(s))]
    assert u not in eng.members("hot")
    seq = eng.last_sequence
    now = eng.now_ms
    burst = [{"user_id": u, "type": "purchase", "timestamp_ms": now - i * 3_600_000, "value": 20.0}
             for i in range(6)]
    burst += [{"user_id": u, "type": "app_open", "timestamp_ms": now - d * DAY} for d in range(14)]
    r = eng.ingest(burst)
    assert r.accepted == len(burst)
    # right after the call returns: scored, in the segment, and the delta says EVENT
    assert eng.get_user(u)["scores"]["buy"] > s.min()
    assert u in eng.members("hot")
    mine = [d for d in eng.deltas(after_sequence=seq) if d.user_id == u and d.segment == "hot"]
    assert [(d.kind, d.cause) for d in mine] == [("ENTER", "EVENT")]


def test_rescore_after_time_moves(small):
    """Time alone moves the windows; rescore() applies it to the scores (cause TIME)."""
    pop = small
    eng = make_engine(pop)
    eng.train_model(buy_spec(features=features_of_truth()))
    eng.create_segment("keen", 'score("buy") >= 0.3')
    before = scores(eng, pop.ids.tolist(), "buy")
    seq = eng.last_sequence
    eng.advance_clock(END + 10 * DAY)
    eng.rescore()
    after = scores(eng, pop.ids.tolist(), "buy")
    assert (after < before).mean() > 0.5                   # fewer recent purchases: lower scores
    deltas = [d for d in eng.deltas(after_sequence=seq) if d.segment == "keen"]
    assert deltas and {d.kind for d in deltas} == {"EXIT"} and {d.cause for d in deltas} == {"TIME"}
    assert eng.members("keen") == {u for u, x in zip(pop.ids.tolist(), after) if x >= 0.3}


def _user_onnx(X: np.ndarray, y: np.ndarray):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=1000).fit(X, y)
    onx = to_onnx(clf, X[:1].astype(np.float32), options={id(clf): {"zipmap": False}}, target_opset=15)
    return clf, onx.SerializeToString()


def test_a_user_supplied_onnx_model(small):
    pop = small
    eng = make_engine(pop)
    feats = features_of_truth()
    ids, X = eng._core.feature_values(feats, eng.now_ms)
    clf, onnx = _user_onnx(pop.truth_features(pop.at)[pop.rows_of(ids)], pop.y[pop.rows_of(ids)])
    rep = eng.deploy_model("mine", onnx, feats)
    assert (rep.name, rep.version, rep.algorithm, tuple(rep.features)) == ("mine", 1, "onnx", tuple(feats))
    assert rep.curve == ()
    want = clf.predict_proba(X.astype(np.float32))[:, 1]
    got = scores(eng, ids, "mine")
    np.testing.assert_allclose(got, want, atol=1e-5)
    eng.create_segment("mine_high", 'score("mine") >= 0.5 and bucket("mine") != "low"')
    assert eng.members("mine_high") == {u for u, p in zip(ids, got) if p >= 0.5}
    with pytest.raises((ExpressionError, ModelError), match="curve"):
        eng.create_segment("mine_likely", 'likely("mine", 0.8)')
    # the contract is checked at deploy: the input must take exactly the features given
    with pytest.raises(ModelError, match="3"):
        eng.deploy_model("bad", onnx, feats[:2])
    with pytest.raises(ModelError):
        eng.deploy_model("bad", b"not an onnx model", feats)
    with pytest.raises(ModelError):
        eng.deploy_model("bad", onnx, ["count(purchase, 30d)", "trait.country", "1 +"])
    assert [m.name for m in eng.list_models()] == ["mine"]
    # a new event re-scores with the user's model too
    u = ids[0]
    eng.ingest([{"user_id": u, "type": "purchase", "timestamp_ms": eng.now_ms, "value": 5.0}])
    x = eng._core.feature_values(feats, eng.now_ms, [u])[1]
    assert eng.get_user(u)["scores"]["mine"] == pytest.approx(clf.predict_proba(x.astype(np.float32))[0, 1],
                                                               abs=1e-5)
    # a second deploy is a new version; a model in use cannot be deleted
    assert eng.deploy_model("mine", onnx, feats).version == 2
    with pytest.raises(ModelInUse, match="mine_high"):
        eng.delete_model("mine")
    eng.delete_segment("mine_high")
    assert eng.delete_model("mine").name == "mine"
    assert eng.list_models() == [] and "mine" not in eng.get_user(u)["scores"]


def test_lookalikes_rank_resembling_non_members_higher():
    """Members of a segment the features cannot see (a trait) are the very active users, but
    only 60 % of them: the other 40 % look like members and should score higher than the rest."""
    pop = Population(4_000, seed=21, label=False)
    eng = make_engine(pop)
    rng = np.random.default_rng(3)
    top = pop.activity >= np.quantile(pop.activity, 0.8)
    gold = top & (rng.random(pop.n) < 0.6)
    eng.set_traits_many([(u, {"tier": "gold" if g else "basic"}, None) for u, g in zip(pop.ids.tolist(), gold)])
    eng.create_segment("gold", 'trait.tier == "gold"')
    assert len(eng.members("gold")) == gold.sum()
    rep = eng.train_model(name="like_gold", target_segment="gold")
    assert rep.target_segment == "gold" and rep.cutoff_ms == eng.now_ms and rep.auc > 0.75
    s = scores(eng, pop.ids.tolist(), "like_gold")
    non = ~gold
    assert auc(s[non], top[non]) > 0.85                     # lookalikes first among non-members
    assert s[non & top].mean() > 2 * s[non & ~top].mean()
    eng.create_segment("gold_lookalikes", 'not segment("gold") and score("like_gold") >= 0.3')
    look = eng.members("gold_lookalikes")
    assert look and np.mean([top[pop.index[u]] for u in look]) > 0.8


def test_models_and_versions_come_back_with_the_data_dir(small, tmp_path):
    from scoring.registry import ModelRegistry

    pop = small
    d = str(tmp_path / "data")
    eng = make_engine(pop, data_dir=d)
    eng.train_model(buy_spec(features=("count(purchase, 30d)",)))
    v2 = eng.train_model(buy_spec(features=features_of_truth()))
    feats = features_of_truth()
    ids, _ = eng._core.feature_values(feats, eng.now_ms)
    _, onnx = _user_onnx(pop.truth_features(pop.at)[pop.rows_of(ids)], pop.y[pop.rows_of(ids)])
    mine = eng.deploy_model("mine", onnx, feats)
    first = scores(eng, ids[:200], "buy")
    eng.close()
    assert ModelRegistry.load(d).versions("buy") == [1, 2]

    again = Engine(clock="event", retention=RETENTION, data_dir=d)
    assert sorted((m.name, m.version) for m in again.list_models()) == [("buy", 2), ("mine", 1)]
    assert again.get_model("buy") == v2 and again.get_model("mine") == mine
    again.create_segment("hot", 'likely("buy", 0.6) or score("mine") > 0.9')
    if not again.get_user(ids[0])["known"]:             # models persist; events need replaying
        again.advance_clock(int(pop.ts[0]))
        ingest(again, pop)
    np.testing.assert_allclose(scores(again, ids[:200], "buy"), first, atol=1e-12)
    assert again.train_model(buy_spec(features=features_of_truth())).version == 3
