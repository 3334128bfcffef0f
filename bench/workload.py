"""A seeded synthetic e-commerce stream, and the segments the benchmark maintains over it.

Everything is derived from ``WorkloadConfig.seed`` with numpy Generators: no wall clock, no
network. The stream is cut into fixed blocks of ``BLOCK`` events, each generated from its own
seed, so the same events come out whatever the batch size and wherever a run starts.

Shape of the data:

- ``users`` users with Zipf-like activity (share of user at rank r proportional to r**-0.8,
  ranks shuffled over ids), capped at ``max_events_per_user`` expected events so that no user
  gets near the engine's 4096 events per (user, type) bound: results stay exact.
- About 35 % of users are buyers; the others never check out or purchase.
- Six event types, ``app_open view_product add_to_cart checkout purchase search``.
  Properties: ``product_id`` (str, a few thousand, popularity Zipf, and each user returns to
  three favourite products), ``category`` (str, 20 values, a function of the product),
  ``discount`` (number, present on ~40 % of product events, sometimes 0) and ``query`` (str,
  on ``search``). ``value`` is the purchase amount (a multiple of 0.25, so sums are exact in
  any order), 0.0 otherwise.
- Timestamps advance evenly over ``days`` simulated days; ``late_fraction`` of the events
  arrive late by up to ``max_late_ms`` (exponentially distributed, mean 30 min).
- Traits: ``country``, ``plan``, ``signup_at`` (ms), ``trial_end`` (ms, trial plans only),
  ``lat``/``lon`` (70 % of users, around a city of their country).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
START_MS = 1_700_006_400_000  # 2023-11-15 00:00 UTC: day boundaries fall on whole days
BLOCK = 1 << 16

EVENT_TYPES = ("app_open", "view_product", "add_to_cart", "checkout", "purchase", "search")
APP_OPEN, VIEW, ADD, CHECKOUT, PURCHASE, SEARCH = range(6)
# Probabilities of each type above, for buyers and for the others.
_TYPE_P_BUYER = (0.14, 0.42, 0.14, 0.07, 0.09, 0.14)
_TYPE_P_OTHER = (0.18, 0.52, 0.13, 0.00, 0.00, 0.17)
_PRODUCT_TYPES = (VIEW, ADD, PURCHASE)

CATEGORIES = ("shoes", "electronics", "books", "toys", "beauty", "grocery", "home", "garden",
              "sports", "fashion", "jewelry", "music", "movies", "games", "pets", "baby", "auto",
              "health", "office", "outdoor")
_DISCOUNTS = np.array([0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 50.0])
_DISCOUNT_P = np.array([0.30, 0.15, 0.15, 0.10, 0.10, 0.08, 0.07, 0.05])

COUNTRIES = ("TR", "US", "DE", "GB", "FR", "BR", "IN", "ES", "NL", "IT")
_COUNTRY_P = (0.25, 0.20, 0.12, 0.10, 0.08, 0.08, 0.07, 0.05, 0.03, 0.02)
# (lat, lon, weight within the country)
_CITIES = {
    "TR": ((41.0082, 28.9784, 0.60), (39.9334, 32.8597, 0.25), (38.4237, 27.1428, 0.15)),
    "US": ((40.7128, -74.0060, 1.0),), "DE": ((52.5200, 13.4050, 1.0),),
    "GB": ((51.5072, -0.1276, 1.0),), "FR": ((48.8566, 2.3522, 1.0),),
    "BR": ((-23.5505, -46.6333, 1.0),), "IN": ((19.0760, 72.8777, 1.0),),
    "ES": ((40.4168, -3.7038, 1.0),), "NL": ((52.3676, 4.9041, 1.0),),
    "IT": ((41.9028, 12.4964, 1.0),),
}
PLANS = ("free", "trial", "pro", "team")
_PLAN_P = (0.60, 0.15, 0.18, 0.07)

# Twenty segments mixing every function family of EXPRESSIONS.md (windows <= 30d). Creation
# order matters: a segment may only reference segments created before it.
SEGMENTS: dict[str, str] = {
    "cart_abandoners": "since(add_to_cart) between 15m and 7d and since(checkout) > since(add_to_cart)",
    "product_fixated": "top_count(view_product.product_id, 5d) >= 3 and count(checkout, 5d) == 0",
    "big_spenders": "sum(purchase.value, 30d) >= 400",
    "high_aov": "sum(purchase.value, 30d) / count(purchase, 30d) > 100",
    "discount_sensitive": ("count(purchase where discount > 0, 30d) / count(purchase, 30d) >= 0.5"
                           " and count(purchase, 30d) >= 2"),
    "highly_engaged": "active_days(app_open, 14d) >= 6",
    "tr_premium": 'trait.country == "TR" and trait.plan in ["pro", "team"]',
    "new_no_browse": "since(trait.signup_at) <= 3d and count(view_product, 3d) == 0",
    "trial_ending": "until(trait.trial_end) between 0 and 3d",
    "istanbul_active": "near(41.0082, 28.9784, 50km) and count(app_open, 7d) >= 1",
    "search_funnel": "sequence(search, view_product, add_to_cart where discount >= 10, 3d)",
    "shoe_affinity": 'affinity(view_product.category, 14d) == "shoes"',
    "category_hoppers": "distinct(view_product.category, 7d) >= 5",
    "price_spread": "max(purchase.value, 30d) > 3 * min(purchase.value, 30d)",
    "discount_hunters": ("avg(view_product.discount where exists(discount), 7d) >= 15"
                         " and count(view_product where discount > 0, 7d) >= 3"),
    "lapsed_buyers": "since(purchase) > 7d and count(purchase, 30d) >= 2",
    "first_purchase_recent": "since_first(purchase) <= 2d and trait.lat > 0",
    "vip": ("sum(purchase.value, 30d) >= 500 or count(purchase where value >= 150, 30d) >= 2"
            " or since(purchase where value >= 300) <= 1d"),
    "vip_at_risk": 'segment("vip") and since(app_open) > 3d and trait.plan != "free"',
    "browsers_not_buyers": ('not segment("vip") and trait.plan not in ["pro", "team"]'
                            " and count(view_product, 7d) - 2 * count(add_to_cart, 7d) >= 4"
                            ' and count(search where query in ["q0", "q1", "q2", "q3"], 7d) >= 1'),
}

ONE_SEGMENT_NAME = "window_shoppers"
ONE_SEGMENT = "count(view_product, 48h) >= 3 and count(purchase, 48h) == 0"


@dataclass(frozen=True)
class WorkloadConfig:
    users: int = 1_000_000
    events: int = 10_000_000
    days: float = 35.0
    seed: int = 1
    start_ms: int = START_MS
    late_fraction: float = 0.03
    max_late_ms: int = 6 * HOUR_MS
    zipf_s: float = 0.8
    max_events_per_user: int = 3000
    products: int = 4000
    queries: int = 500
    buyer_fraction: float = 0.35

    @property
    def span_ms(self) -> int:
        return int(self.days * DAY_MS)


@dataclass
class Batch:
    """One columnar batch. Property arrays are object arrays holding str/float, None = absent."""

    user_index: np.ndarray  # int64, row of the user in Workload.user_ids
    user_id: np.ndarray  # object (str)
    type: np.ndarray  # object (str)
    timestamp_ms: np.ndarray  # int64
    value: np.ndarray  # float64
    properties: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.timestamp_ms)

    def take(self, sel: np.ndarray) -> "Batch":
        return Batch(self.user_index[sel], self.user_id[sel], self.type[sel], self.timestamp_ms[sel],
                     self.value[sel], {k: v[sel] for k, v in self.properties.items()})

    def columns(self) -> dict:
        """Keyword arguments for ``Engine.ingest_columns`` (and the baseline's)."""
        return {"user_id": self.user_id, "type": self.type, "timestamp_ms": self.timestamp_ms,
                "value": self.value, "properties": dict(self.properties)}

    @staticmethod
    def concat(parts: list["Batch"]) -> "Batch":
        if len(parts) == 1:
            return parts[0]
        return Batch(*(np.concatenate([getattr(p, f) for p in parts])
                       for f in ("user_index", "user_id", "type", "timestamp_ms", "value")),
                     {k: np.concatenate([p.properties[k] for p in parts]) for k in parts[0].properties})


def _zipf_cdf(n: int, s: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -s
    c = np.cumsum(w)
    return c / c[-1]


def _capped_shares(n: int, s: float, cap: float) -> np.ndarray:
    """Shares proportional to rank**-s, none above ``cap``, summing to 1 (water filling)."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -s
    if cap * n <= 1.0:
        return np.full(n, 1.0 / n)
    lo, hi = 0.0, 1.0 / w[-1]  # sum(min(c*w, cap)) is increasing in c; at hi every share is cap
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if np.minimum(mid * w, cap).sum() < 1.0:
            lo = mid
        else:
            hi = mid
    p = np.minimum(hi * w, cap)
    return p / p.sum()


def _strings(prefix: str, n: int) -> np.ndarray:
    out = np.empty(n, dtype=object)
    out[:] = [f"{prefix}{i}" for i in range(n)]
    return out


class Workload:
    """The users, their traits and the event stream of one ``WorkloadConfig``."""

    def __init__(self, config: WorkloadConfig = WorkloadConfig()):
        if config.users < 1 or config.events < 0:
            raise ValueError("need at least one user and a non-negative number of events")
        self.config = c = config
        rng = np.random.default_rng([c.seed, 1])
        self.user_ids = _strings("u", c.users)
        shares = _capped_shares(c.users, c.zipf_s, c.max_events_per_user / max(c.events, 1))
        self._rank_cdf = np.cumsum(shares)
        self._rank_cdf[-1] = 1.0
        self._rank_user = rng.permutation(c.users).astype(np.int64)  # rank -> user row
        self.is_buyer = rng.random(c.users) < c.buyer_fraction
        self._type_cdf = np.stack([np.cumsum(_TYPE_P_OTHER), np.cumsum(_TYPE_P_BUYER)])
        self._type_cdf[:, -1] = 1.0
        self.type_names = np.array(EVENT_TYPES, dtype=object)

        self.product_names = _strings("p", c.products)
        self._product_cdf = _zipf_cdf(c.products, 1.0)
        self.product_category = rng.integers(0, len(CATEGORIES), c.products)
        self.category_names = np.array(CATEGORIES, dtype=object)
        self.query_names = _strings("q", c.queries)
        self._query_cdf = _zipf_cdf(c.queries, 1.0)
        self._traits = self._make_traits(np.random.default_rng([c.seed, 2]))
        self._cache: tuple[int, Batch] | None = None

    # ------------------------------------------------------------------ traits

    def _make_traits(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        c, n = self.config, self.config.users
        country = rng.choice(len(COUNTRIES), n, p=_COUNTRY_P)
        plan = rng.choice(len(PLANS), n, p=_PLAN_P)
        recent = rng.random(n) < 0.15
        signup = np.where(recent, c.start_ms + rng.random(n) * c.span_ms,
                          c.start_ms - rng.random(n) * 400 * DAY_MS).astype(np.int64)
        trial_end = (c.start_ms + (rng.random(n) * (c.span_ms + 10 * DAY_MS) - 5 * DAY_MS)).astype(np.int64)
        lat = np.full(n, np.nan)
        lon = np.full(n, np.nan)
        located = rng.random(n) < 0.70
        pick = rng.random(n)
        for k, code in enumerate(COUNTRIES):
            cities = _CITIES[code]
            cum = np.cumsum([w for _, _, w in cities])
            rows = np.flatnonzero((country == k) & located)
            which = np.minimum(np.searchsorted(cum / cum[-1], pick[rows]), len(cities) - 1)
            lat[rows] = np.array([la for la, _, _ in cities])[which]
            lon[rows] = np.array([lo for _, lo, _ in cities])[which]
        lat += np.where(located, rng.normal(0.0, 0.25, n), 0.0)
        lon += np.where(located, rng.normal(0.0, 0.25, n), 0.0)

        def obj(values, present=None):
            out = np.empty(n, dtype=object)
            out[:] = list(values)
            if present is not None:
                out[~present] = None
            return out

        return {
            "country": np.array(COUNTRIES, dtype=object)[country],
            "plan": np.array(PLANS, dtype=object)[plan],
            "signup_at": obj(signup.tolist()),
            "trial_end": obj(trial_end.tolist(), plan == PLANS.index("trial")),
            "lat": obj(np.round(lat, 5).tolist(), located),
            "lon": obj(np.round(lon, 5).tolist(), located),
        }

    def trait_columns(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Trait name -> object array over users (or over ``rows``); None = not set."""
        if rows is None:
            return dict(self._traits)
        return {k: v[rows] for k, v in self._traits.items()}

    def traits_of(self, row: int) -> dict:
        """The traits of one user as a dict (unset traits left out)."""
        return {k: v[row] for k, v in self._traits.items() if v[row] is not None}

    # ------------------------------------------------------------------ events

    def _block(self, k: int) -> Batch:
        if self._cache is not None and self._cache[0] == k:
            return self._cache[1]
        c = self.config
        a = k * BLOCK
        b = min(a + BLOCK, c.events)
        n = b - a
        rng = np.random.default_rng([c.seed, 3, k])
        rank = np.minimum(np.searchsorted(self._rank_cdf, rng.random(n), side="right"), c.users - 1)
        user = self._rank_user[rank]
        buyer = self.is_buyer[user].astype(np.int64)
        r = rng.random(n)
        tcode = np.empty(n, dtype=np.int64)
        for cls in (0, 1):
            sel = buyer == cls
            tcode[sel] = np.minimum(np.searchsorted(self._type_cdf[cls], r[sel], side="right"), 5)

        step = c.span_ms / max(c.events, 1)
        ts = c.start_ms + np.floor(np.arange(a, b, dtype=np.float64) * step).astype(np.int64)
        late = rng.random(n) < c.late_fraction
        lateness = np.minimum(1 + np.floor(rng.exponential(30 * 60_000, n)), c.max_late_ms).astype(np.int64)
        ts = np.where(late, ts - lateness, ts)

        has_product = np.isin(tcode, _PRODUCT_TYPES)
        popular = np.minimum(np.searchsorted(self._product_cdf, rng.random(n), side="right"), c.products - 1)
        fav = (user * 2_654_435_761 + rng.integers(0, 3, n) * 40_503 + 12_345) % c.products
        product = np.where(rng.random(n) < 0.35, fav, popular)
        pid = self.product_names[product]
        pid[~has_product] = None
        cat = self.category_names[self.product_category[product]]
        cat[~has_product] = None

        disc_present = has_product & (rng.random(n) < 0.40)
        disc_level = rng.choice(len(_DISCOUNTS), n, p=_DISCOUNT_P)
        disc = np.empty(n, dtype=object)
        disc[:] = _DISCOUNTS[disc_level].tolist()
        disc[~disc_present] = None

        is_search = tcode == SEARCH
        q = self.query_names[np.minimum(np.searchsorted(self._query_cdf, rng.random(n), side="right"),
                                        c.queries - 1)]
        q[~is_search] = None

        amount = np.maximum(1.0, np.round(rng.lognormal(3.7, 0.8, n) * 4.0) / 4.0)
        value = np.where(tcode == PURCHASE, amount, 0.0)

        out = Batch(user, self.user_ids[user], self.type_names[tcode], ts, value,
                    {"product_id": pid, "category": cat, "discount": disc, "query": q})
        self._cache = (k, out)
        return out

    def slice(self, a: int, b: int) -> Batch:
        """Events with stream positions ``[a, b)``."""
        b = min(b, self.config.events)
        parts = []
        k = a // BLOCK
        while k * BLOCK < b:
            blk = self._block(k)
            lo = max(a - k * BLOCK, 0)
            hi = min(b - k * BLOCK, len(blk))
            parts.append(blk if (lo == 0 and hi == len(blk)) else blk.take(slice(lo, hi)))
            k += 1
        if not parts:
            return self._block(0).take(slice(0, 0))
        return Batch.concat(parts)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None,
                user_mask: np.ndarray | None = None):
        """Yield the stream in batches of ``batch_size`` positions; with ``user_mask`` (bool
        per user) each batch keeps only the events of the selected users (same batch
        boundaries in time as the unfiltered stream)."""
        stop = self.config.events if stop is None else min(stop, self.config.events)
        for a in range(start, stop, batch_size):
            b = self.slice(a, min(a + batch_size, stop))
            if user_mask is not None:
                b = b.take(user_mask[b.user_index])
            yield b

    @property
    def end_ms(self) -> int:
        return self.config.start_ms + self.config.span_ms
