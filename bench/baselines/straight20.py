"""The strongest straightforward pure Python for exactly the 20 segments of bench/workload.py.

``Straight20`` is what a careful Python programmer writes for *these* segments, not for the
expression language: every segment is a hand-written function, and each user keeps only the
event types and properties some segment reads, each in one ``collections.deque`` of tuples in
time order (a late event is inserted in place), expired with ``popleft`` on each event at the
longest window that type needs:

==============  =====================================  ======
type            kept                                   window
==============  =====================================  ======
view_product    (t, product_id, category, discount)    14d
add_to_cart     (t, discount) + the newest add's t     7d
checkout        the newest checkout's t                 -
purchase        (t, value, discount)                   30d (the retention)
app_open        t                                      14d
search          (t, query)                             7d
==============  =====================================  ======

Traits are plain dicts; ``near`` is computed once per user (its traits never change here);
``segment("vip")`` is the other segment's membership set, evaluated just before.

After each batch (at ``now`` = the largest timestamp so far, as rtseg does) a touched user
re-evaluates only the segments that read the types it received (a ``vip`` change also
re-evaluates the two segments that read ``vip``). Time-driven changes use a heap of per-user
check times: each segment function returns, besides its value, the earliest time at which
its value may change with no new event (``None`` when it cannot), and the user's check time
is the minimum over its segments; a check may be early (nothing changes), never late.
Setting up evaluates every segment for every user with traits (rtseg's backfill at
creation). The event clock only; events older than the retention are rejected as rtseg does.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter, deque
from heapq import heappop, heappush
from itertools import islice

from bench.workload import SEGMENTS

DAY = 86_400_000
HOUR = 3_600_000
MIN = 60_000
RETENTION = 30 * DAY
EARTH_RADIUS_M = 6_371_008.8
IST_LAT, IST_LON, IST_DIST = 41.0082, 28.9784, 50_000.0
VIEW_W, ADD_W, BUY_W, OPEN_W, SEARCH_W = 14 * DAY, 7 * DAY, 30 * DAY, 14 * DAY, 7 * DAY
NEVER = 1 << 62  # no check needed
QUERIES = frozenset(("q0", "q1", "q2", "q3"))

NAMES = tuple(SEGMENTS)
S = {n: i for i, n in enumerate(NAMES)}
assert len(NAMES) == 20


def _near(lat, lon) -> bool:
    if not isinstance(lat, (int, float)) or not isinstance(lon, (int, float)) or isinstance(lat, bool):
        return False
    p1, p2 = math.radians(lat), math.radians(IST_LAT)
    dp = math.radians(IST_LAT - lat)
    dl = math.radians(IST_LON - lon)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a))) <= IST_DIST


def _num(x) -> bool:
    return (type(x) is int or type(x) is float)


class User:
    __slots__ = (
        "adds",
        "buys",
        "due",
        "last_add",
        "last_checkout",
        "last_open",
        "member",
        "near",
        "nxt",
        "opens",
        "searches",
        "traits",
        "uid",
        "views",
    )

    def __init__(self, uid: str, traits: dict | None = None):
        self.uid = uid
        self.traits = traits if traits is not None else {}
        self.views: deque = deque()
        self.adds: deque = deque()
        self.last_add = None
        self.last_checkout = None
        self.buys: deque = deque()
        self.opens: deque = deque()
        self.last_open = None
        self.searches: deque = deque()
        self.member = [False] * 20
        self.nxt = [NEVER] * 20
        self.due = None
        self.near = _near(self.traits.get("lat"), self.traits.get("lon"))


def _in_window(d: deque, cut: int) -> list:
    """Elements with t > cut, newest first (d holds tuples (t, ...) in time order)."""
    if not d or d[-1][0] <= cut:
        return []
    if d[0][0] > cut:
        out = list(d)
    else:
        out = list(islice(d, bisect_right(d, cut, key=_key0), None))
    out.reverse()
    return out


def _min_next(*xs):
    m = None
    for x in xs:
        if x is not None and (m is None or x < m):
            m = x
    return m


# --------------------------------------------------------------------------- the segments
# Each: (user, now) -> (value, next check time or None).

def cart_abandoners(u, now):
    la = u.last_add
    if la is None or la <= now - RETENTION:
        return False, None
    s = now - la
    lc = u.last_checkout
    ok = 15 * MIN <= s <= 7 * DAY and (lc is None or lc <= now - RETENTION or lc < la)
    if s < 15 * MIN:
        return ok, la + 15 * MIN
    if s <= 7 * DAY:
        return ok, la + 7 * DAY + 1
    return ok, None


def product_fixated(u, now):
    cut = now - 5 * DAY
    win = _in_window(u.views, cut)
    lc = u.last_checkout
    no_checkout = lc is None or lc <= cut
    top = max(Counter(e[1] for e in win if e[1] is not None).values(), default=0)
    nxt = _min_next(win[-1][0] + 5 * DAY if win and top >= 3 else None,
                    lc + 5 * DAY if not no_checkout and top >= 3 else None)
    return top >= 3 and no_checkout, nxt


def _buys_30d(u, now):
    cut = now - BUY_W
    return _in_window(u.buys, cut)


def big_spenders(u, now):
    win = _buys_30d(u, now)
    total = sum(e[1] for e in win)
    return total >= 400, (win[-1][0] + BUY_W if total >= 400 else None)


def high_aov(u, now):
    win = _buys_30d(u, now)
    if not win:
        return False, None
    return sum(e[1] for e in win) / len(win) > 100, win[-1][0] + BUY_W


def discount_sensitive(u, now):
    win = _buys_30d(u, now)
    n = len(win)
    if n < 2:
        return False, None
    d = sum(1 for e in win if _num(e[2]) and e[2] > 0)
    return d / n >= 0.5, win[-1][0] + BUY_W


def highly_engaged(u, now):
    cut = now - OPEN_W
    days = set()
    oldest = None
    for i in range(len(u.opens) - 1, -1, -1):
        t = u.opens[i]
        if t <= cut:
            break
        days.add(t // DAY)
        oldest = t
    ok = len(days) >= 6
    return ok, (oldest + OPEN_W if ok else None)


def tr_premium(u, now):
    tr = u.traits
    return tr.get("country") == "TR" and tr.get("plan") in ("pro", "team"), None


def new_no_browse(u, now):
    su = u.traits.get("signup_at")
    if not _num(su):
        return False, None
    s = now - su
    cut = now - 3 * DAY
    newest = u.views[-1][0] if u.views else None
    no_view = newest is None or newest <= cut
    ok = s <= 3 * DAY and no_view
    nxt = _min_next(su + 3 * DAY + 1 if s <= 3 * DAY else None,
                    newest + 3 * DAY if not no_view and s <= 3 * DAY else None)
    return ok, nxt


def trial_ending(u, now):
    te = u.traits.get("trial_end")
    if not _num(te):
        return False, None
    if now < te - 3 * DAY:
        return False, te - 3 * DAY
    if now <= te:
        return True, te + 1
    return False, None


def istanbul_active(u, now):
    if not u.near:
        return False, None
    newest = u.opens[-1] if u.opens else None
    ok = newest is not None and newest > now - 7 * DAY
    return ok, (newest + 7 * DAY if ok else None)


def search_funnel(u, now):
    cut = now - 3 * DAY
    adds = [e[0] for e in _in_window(u.adds, cut) if _num(e[1]) and e[1] >= 10]  # newest first
    if not adds:
        return False, None
    # The chain with the latest first step (it lasts longest): latest add, latest view before
    # it, latest search before that.
    a3 = adds[0]
    v2 = None
    for e in _in_window(u.views, cut):
        if e[0] < a3:
            v2 = e[0]
            break
    if v2 is None:
        return False, None
    s1 = None
    for e in _in_window(u.searches, cut):
        if e[0] < v2:
            s1 = e[0]
            break
    if s1 is None:
        return False, None
    return True, s1 + 3 * DAY


def shoe_affinity(u, now):
    win = _in_window(u.views, now - VIEW_W)  # newest first
    if not win:
        return False, None
    counts: dict = {}
    latest: dict = {}
    for i, e in enumerate(win):
        c = e[2]
        if c is None:
            continue
        if c not in counts:
            counts[c] = 0
            latest[c] = -i
        counts[c] += 1
    if not counts:
        return False, win[-1][0] + VIEW_W
    best = max(counts, key=lambda k: (counts[k], latest[k]))
    return best == "shoes", win[-1][0] + VIEW_W


def category_hoppers(u, now):
    win = _in_window(u.views, now - 7 * DAY)
    ok = len({e[2] for e in win if e[2] is not None}) >= 5
    return ok, (win[-1][0] + 7 * DAY if ok else None)


def price_spread(u, now):
    win = _buys_30d(u, now)
    if not win:
        return False, None
    vals = [e[1] for e in win]
    return max(vals) > 3 * min(vals), win[-1][0] + BUY_W


def discount_hunters(u, now):
    win = _in_window(u.views, now - 7 * DAY)
    with_d = [e for e in win if _num(e[3])]
    positive = sum(1 for e in with_d if e[3] > 0)
    if positive < 3:
        return False, None
    avg = sum(e[3] for e in with_d) / len(with_d)
    return avg >= 15, with_d[-1][0] + 7 * DAY


def lapsed_buyers(u, now):
    win = _buys_30d(u, now)
    if len(win) < 2:
        return False, None
    lp = win[0][0]
    ok = now - lp > 7 * DAY
    return ok, _min_next(lp + 7 * DAY + 1 if not ok else None, win[-1][0] + BUY_W)


def first_purchase_recent(u, now):
    win = _buys_30d(u, now)
    if not win:
        return False, None
    first = win[-1][0]
    lat = u.traits.get("lat")
    if not (_num(lat) and lat > 0):
        return False, None
    recent = now - first <= 2 * DAY
    if recent:
        return True, first + 2 * DAY + 1
    return False, (first + BUY_W if len(win) > 1 else None)


def vip(u, now):
    win = _buys_30d(u, now)
    if not win:
        return False, None
    total = sum(e[1] for e in win)
    big = [e[0] for e in win if e[1] >= 150]
    l300 = next((e[0] for e in win if e[1] >= 300), None)  # newest first
    ok = total >= 500 or len(big) >= 2 or (l300 is not None and now - l300 <= DAY)
    nxt = _min_next(win[-1][0] + BUY_W, l300 + DAY + 1 if l300 is not None and now - l300 <= DAY else None)
    return ok, nxt


def vip_at_risk(u, now):
    if not u.member[S["vip"]] or u.traits.get("plan") in (None, "free"):
        return False, None
    lo = u.last_open
    if lo is None or lo <= now - RETENTION:
        return True, None
    ok = now - lo > 3 * DAY
    return ok, (None if ok else lo + 3 * DAY + 1)


def browsers_not_buyers(u, now):
    if u.member[S["vip"]] or u.traits.get("plan") in ("pro", "team"):
        return False, None
    if "plan" not in u.traits:
        return False, None
    cut = now - 7 * DAY
    qs = [e[0] for e in _in_window(u.searches, cut) if e[1] in QUERIES]
    if not qs:
        return False, None
    views = _in_window(u.views, cut)
    adds = _in_window(u.adds, cut)
    ok = len(views) - 2 * len(adds) >= 4
    nxt = _min_next(qs[-1] + 7 * DAY, views[-1][0] + 7 * DAY if views else None,
                    adds[-1][0] + 7 * DAY if adds else None)
    return ok, nxt


FUNCS = (cart_abandoners, product_fixated, big_spenders, high_aov, discount_sensitive, highly_engaged,
         tr_premium, new_no_browse, trial_ending, istanbul_active, search_funnel, shoe_affinity,
         category_hoppers, price_spread, discount_hunters, lapsed_buyers, first_purchase_recent, vip,
         vip_at_risk, browsers_not_buyers)
assert tuple(f.__name__ for f in FUNCS) == NAMES, "bench.workload.SEGMENTS changed: update straight20"

_READS = {
    "view_product": ("product_fixated", "new_no_browse", "search_funnel", "shoe_affinity", "category_hoppers",
                     "discount_hunters", "browsers_not_buyers"),
    "add_to_cart": ("cart_abandoners", "search_funnel", "browsers_not_buyers"),
    "checkout": ("cart_abandoners", "product_fixated"),
    "purchase": ("big_spenders", "high_aov", "discount_sensitive", "price_spread", "lapsed_buyers",
                 "first_purchase_recent", "vip"),
    "app_open": ("highly_engaged", "istanbul_active", "vip_at_risk"),
    "search": ("search_funnel", "browsers_not_buyers"),
}
TYPE_BIT = {t: 1 << k for k, t in enumerate(_READS)}
_VIP = S["vip"]
_VIP_READERS = (S["vip_at_risk"], S["browsers_not_buyers"])


def _segments_of(mask: int) -> tuple[int, ...]:
    idx = set()
    for t, bit in TYPE_BIT.items():
        if mask & bit:
            idx.update(S[n] for n in _READS[t])
    if _VIP in idx:
        idx.update(_VIP_READERS)
    return tuple(sorted(idx))  # creation order: vip before its readers


SEGS_OF_MASK = {m: _segments_of(m) for m in range(1 << len(TYPE_BIT))}


class Straight20:
    """The 20 segments, hand-coded; ``members(name)``, ``deltas`` (ENTER + EXIT counts)."""

    name = "straight20_python"

    def __init__(self, start_ms: int = 0):
        self.now_ms = int(start_ms)
        self.users: dict[str, User] = {}
        self.sets = [set() for _ in NAMES]
        self.heap: list[tuple[int, str]] = []
        self.enters = 0
        self.exits = 0
        self.rejected = 0
        self.out: list[tuple[str, str, bool, int]] = []  # the last call's deltas: (segment, user, enter?, at)

    @property
    def deltas(self) -> int:
        return self.enters + self.exits

    def members(self, name: str) -> set[str]:
        return set(self.sets[S[name]])

    def advance_clock(self, now_ms: int) -> None:
        self.now_ms = max(self.now_ms, int(now_ms))
        self.out = []
        self._timers(evaluate=True)

    def set_traits_many(self, updates) -> None:
        """``(user, traits, ts)`` updates, before the first event; then every segment is
        evaluated for every user (rtseg's backfill when the segments are created)."""
        users = self.users
        for uid, traits, _ in updates:
            users[uid] = User(uid, dict(traits))
        all_segs = tuple(range(20))
        now = self.now_ms
        for u in users.values():
            self._evaluate(u, all_segs, now)

    def ingest_columns(self, user_id, type, timestamp_ms, value=None, properties=None) -> int:
        props = properties or {}
        n = len(timestamp_ms)
        pid = props.get("product_id")
        cat = props.get("category")
        disc = props.get("discount")
        query = props.get("query")
        none = [None] * n
        users = self.users
        now = self.now_ms
        touched: dict[str, int] = {}
        for u, t, ts, v, p, c, d, q in zip(
                user_id.tolist(), type.tolist(), timestamp_ms.tolist(),
                value.tolist() if value is not None else [0.0] * n,
                pid.tolist() if pid is not None else none, cat.tolist() if cat is not None else none,
                disc.tolist() if disc is not None else none, query.tolist() if query is not None else none):
            now = max(now, ts)
            if ts <= now - RETENTION:
                self.rejected += 1
                continue
            bit = TYPE_BIT.get(t)
            if bit is None:
                continue
            usr = users.get(u)
            if usr is None:
                usr = users[u] = User(u)
            if t == "view_product":
                _put(usr.views, (ts, p, c, d), now - VIEW_W)
            elif t == "add_to_cart":
                _put(usr.adds, (ts, d), now - ADD_W)
                if usr.last_add is None or ts > usr.last_add:
                    usr.last_add = ts
            elif t == "checkout":
                if usr.last_checkout is None or ts > usr.last_checkout:
                    usr.last_checkout = ts
            elif t == "purchase":
                _put(usr.buys, (ts, v, d), now - BUY_W)
            elif t == "app_open":
                _put_t(usr.opens, ts, now - OPEN_W)
                if usr.last_open is None or ts > usr.last_open:
                    usr.last_open = ts
            else:
                _put(usr.searches, (ts, q), now - SEARCH_W)
            touched[u] = touched.get(u, 0) | bit
        self.now_ms = now
        before = self.deltas
        self.out = []
        due = self._timers()
        for uid, mask in touched.items():
            usr = users[uid]
            segs = SEGS_OF_MASK[mask] if uid not in due else tuple(range(20))
            self._evaluate(usr, segs, now)
        for uid in due:
            if uid not in touched:
                usr = users[uid]
                nxt = usr.nxt
                segs = [i for i in range(20) if nxt[i] <= now]
                if _VIP in segs:
                    segs = sorted(set(segs) | set(_VIP_READERS))
                self._evaluate(usr, segs, now)
        return self.deltas - before

    def _timers(self, evaluate: bool = False) -> set[str]:
        """Users whose check time has come (popped from the heap); evaluates the untouched
        ones when called from ``advance_clock``."""
        heap, users, now = self.heap, self.users, self.now_ms
        due = set()
        while heap and heap[0][0] <= now:
            at, uid = heappop(heap)
            u = users[uid]
            if u.due == at:
                u.due = None
                due.add(uid)
        if evaluate:  # advance_clock
            for uid in due:
                u = users[uid]
                segs = [i for i in range(20) if u.nxt[i] <= now]
                if _VIP in segs:
                    segs = sorted(set(segs) | set(_VIP_READERS))
                self._evaluate(u, segs, now)
        return due

    def _evaluate(self, u: User, segs, now: int) -> None:
        member, nxt, sets = u.member, u.nxt, self.sets
        for i in segs:
            ok, n = FUNCS[i](u, now)
            nxt[i] = NEVER if n is None else n
            if ok != member[i]:
                member[i] = ok
                if ok:
                    sets[i].add(u.uid)
                    self.enters += 1
                else:
                    sets[i].discard(u.uid)
                    self.exits += 1
                self.out.append((NAMES[i], u.uid, ok, now))
        due = min(nxt)
        if due == NEVER:
            due = None
        elif due <= now:
            due = now + 1  # cannot happen for exact timers; keeps the heap moving forward
        if due != u.due:
            u.due = due
            if due is not None:
                heappush(self.heap, (due, u.uid))


def _key0(e):
    return e[0]


def _put(d: deque, e: tuple, cut: int) -> None:
    """Insert in time order (late events in place) and expire from the left."""
    if not d or e[0] >= d[-1][0]:
        d.append(e)
    else:
        d.insert(bisect_right(d, e[0], key=_key0), e)
    while d and d[0][0] <= cut:
        d.popleft()


def _put_t(d: deque, t: int, cut: int) -> None:
    if not d or t >= d[-1]:
        d.append(t)
    else:
        d.insert(bisect_right(d, t), t)
    while d and d[0] <= cut:
        d.popleft()
