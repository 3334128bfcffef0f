"""Webhook destinations: the deltas of chosen segments POSTed to a URL in signed JSON batches.

Each destination is one asyncio task on the gateway's loop that reads the shared delta log
from its own cursor, as a subscription does (``_subscriptions``), and POSTs what it read with
its own HTTP client. Nothing on the round path awaits it: a receiver that is slow or down
holds back its own destination only, never ingestion or the other destinations.

* **At least once.** The cursor (the last acknowledged sequence) moves only after a 2xx; a
  failure or a timeout retries the *same* batch after an exponential backoff with jitter
  (``backoff_ms``), so the order of deltas is kept per destination, hence per segment.
* **Batches.** Up to ``batch_size`` deltas a POST; fewer go once the first of them has waited
  ``max_wait_ms`` (``Batcher``).
* **Durable** with a data dir: definitions are written to ``DATA_DIR/destinations.json``
  (temp file + fsync + rename) as they change, cursors at most every
  ``CURSOR_SAVE_INTERVAL_MS`` and at shutdown. A restart resumes after the saved cursor: the
  restored delta log has the same sequence numbers (``_recovery``), so deltas acknowledged
  after the last save are delivered again, none is lost.
* **Too old.** A cursor older than the retained delta log (``--delta-log-size``) cannot be
  honoured: delivery resumes from the oldest retained delta and the destination reports the
  skipped sequences in ``skipped`` and ``last_error``.

Also the Destination messages both ways (``destination_to_pb`` for the servicer,
``destination_from_pb`` for the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import random
import re
import secrets as _secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from engine.errors import (
    ConfigError,
    DestinationError,
    DestinationExists,
    SequenceTooOld,
    UnknownDestination,
)

log = logging.getLogger("rtseg.destinations")

DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 10_000
DEFAULT_MAX_WAIT_MS = 200
MAX_MAX_WAIT_MS = 60_000
DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 300_000
BACKOFF_INITIAL_MS = 200
BACKOFF_MAX_MS = 30_000
CURSOR_SAVE_INTERVAL_MS = 500
MAX_DESTINATIONS = 64
MIN_SECRET_CHARS = 16
STATE_FILE = "destinations.json"
FILE_FORMAT = 1
ERROR_TEXT_CHARS = 300

SIGNATURE_HEADER = "X-Rtseg-Signature"
DELIVERY_HEADER = "X-Rtseg-Delivery"
DELIVERING, BACKING_OFF = "DELIVERING", "BACKING_OFF"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


# ----------------------------------------------------------------------------- spec

@dataclass(frozen=True)
class DestinationSpec:
    """A validated destination definition (``validate_spec``)."""

    name: str
    url: str
    segments: tuple[str, ...]           # empty: every segment
    secret: str
    batch_size: int = DEFAULT_BATCH_SIZE
    max_wait_ms: int = DEFAULT_MAX_WAIT_MS
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    created_ms: int = 0


@dataclass(frozen=True)
class DestinationInfo:
    """What ``ListDestinations`` reports of one destination. ``secret`` is set only in the
    reply to its creation."""

    name: str
    url: str
    segments: tuple[str, ...]
    cursor: int
    delivered: int
    failures: int
    last_error: str
    state: str                          # DELIVERING | BACKING_OFF
    next_retry_ms: int                  # BACKING_OFF: when the next try goes (UTC ms)
    batch_size: int
    max_wait_ms: int
    timeout_ms: int
    created_ms: int
    skipped: int                        # sequences no longer retained when reached
    last_sequence: int                  # newest delta of the server (lag: last - cursor)
    secret: str = ""


def validate_spec(name: str, url: str, segments=(), secret: str = "", batch_size: int = 0,
                  max_wait_ms: int = 0, timeout_ms: int = 0, *, known_segments=None,
                  now_ms: int = 0) -> DestinationSpec:
    """-> a DestinationSpec (defaults filled in, a secret generated when none is given), or
    DestinationError naming the field. ``known_segments``: a container of segment names."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise DestinationError(
            f"destination name {name!r} is not valid: 1 to 128 letters, digits or _ . : - "
            "(starting with a letter or digit)")
    _check_url(url)
    segs: list[str] = []
    for s in segments or ():
        if s in segs:
            continue
        if known_segments is not None and s not in known_segments:
            raise DestinationError(f"segment {s!r} does not exist: create it first, or leave "
                                   "segments empty to get the deltas of every segment")
        segs.append(s)
    if secret and len(secret) < MIN_SECRET_CHARS:
        raise DestinationError(f"secret must have at least {MIN_SECRET_CHARS} characters "
                               "(or leave it empty and one is generated)")
    batch_size = _bounded("batch_size", batch_size, DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE)
    max_wait_ms = _bounded("max_wait_ms", max_wait_ms, DEFAULT_MAX_WAIT_MS, MAX_MAX_WAIT_MS)
    timeout_ms = _bounded("timeout_ms", timeout_ms, DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS)
    return DestinationSpec(name, url, tuple(sorted(segs)), secret or _secrets.token_hex(32),
                           batch_size, max_wait_ms, timeout_ms, int(now_ms))


def _check_url(url) -> None:
    ok = isinstance(url, str) and not any(c.isspace() for c in url)
    if ok:
        try:
            parts = urlsplit(url)
            _ = parts.port                   # raises ValueError for a port that is not one
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
    if not ok:
        raise DestinationError(f"url {url!r} is not an http:// or https:// URL with a host")


def _bounded(field: str, value, default: int, maximum: int) -> int:
    value = int(value or 0)
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise DestinationError(f"{field} must be between 1 and {maximum:,} (0: the default "
                               f"{default:,}), not {value}")
    return value


# ----------------------------------------------------------------------------- wire format

def encode_batch(destination: str, deltas) -> bytes:
    """The JSON body of one POST (compact, UTF-8)."""
    return json.dumps({"destination": destination, "deltas": [
        {"sequence": d.sequence, "segment": d.segment, "user_id": d.user_id, "kind": d.kind,
         "cause": d.cause, "at_ms": d.at_ms} for d in deltas]},
        separators=(",", ":"), ensure_ascii=False).encode()


def sign(secret: str, body: bytes) -> str:
    """The ``X-Rtseg-Signature`` header of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """A receiver's check of ``X-Rtseg-Signature`` (constant time)."""
    return hmac.compare_digest(sign(secret, body), header or "")


def delivery_id(deltas) -> str:
    """``X-Rtseg-Delivery``: the first and last sequence of the batch, ``"first..last"``."""
    return f"{deltas[0].sequence}..{deltas[-1].sequence}"


def headers_for(secret: str, body: bytes, deltas) -> dict[str, str]:
    return {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body),
            DELIVERY_HEADER: delivery_id(deltas), "User-Agent": "rtseg-webhooks/1"}


# ----------------------------------------------------------------------------- batching, backoff

def backoff_ms(attempt: int, rng: random.Random | None = None, initial_ms: int = BACKOFF_INITIAL_MS,
               max_ms: int = BACKOFF_MAX_MS) -> int:
    """Delay before retry ``attempt`` (1 after the first failure): ``initial_ms`` doubled per
    attempt up to ``max_ms``, then jittered to between half and all of it, so that receivers
    that come back are not hit by every destination at once."""
    if attempt < 1:
        return 0
    ceiling = min(max_ms, initial_ms * (1 << min(attempt - 1, 30)))
    return int(ceiling * (0.5 + 0.5 * (rng or random).random()))


class Batcher:
    """The deltas of one destination read from the log and not yet sent.

    ``end`` is the log position read through (deltas of other segments in between are passed
    over); a batch goes when ``batch_size`` deltas are pending or when the first pending one
    has waited ``max_wait_ms``. Times are monotonic milliseconds given by the caller."""

    def __init__(self, batch_size: int, max_wait_ms: int, end: int = 0):
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self.end = end
        self.pending: list = []
        self.first_ms: float | None = None

    @property
    def room(self) -> int:
        return self.batch_size - len(self.pending)

    def add(self, deltas: list, end: int, now_ms: float) -> None:
        if deltas and not self.pending:
            self.first_ms = now_ms
        self.pending.extend(deltas)
        self.end = max(self.end, end)

    def ready(self, now_ms: float) -> bool:
        return bool(self.pending) and (len(self.pending) >= self.batch_size
                                       or now_ms - self.first_ms >= self.max_wait_ms)

    def wait_ms(self, now_ms: float) -> float | None:
        """How long until the pending batch goes by itself (None: nothing pending)."""
        if not self.pending:
            return None
        return max(0.0, self.first_ms + self.max_wait_ms - now_ms)

    def take(self) -> tuple[list, int]:
        """-> (the batch, the log position it acknowledges up to)."""
        batch, self.pending, self.first_ms = self.pending, [], None
        return batch, self.end

    def restart(self, end: int) -> None:
        self.pending, self.first_ms, self.end = [], None, end


def _monotonic_ms() -> float:
    return time.monotonic() * 1000.0


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


# ----------------------------------------------------------------------------- the service

@dataclass(eq=False)
class _Destination:
    spec: DestinationSpec
    cursor: int
    delivered: int = 0
    failures: int = 0
    skipped: int = 0
    last_error: str = ""
    state: str = DELIVERING
    next_retry_ms: int = 0
    attempt: int = 0
    task: asyncio.Task | None = None

    def record(self) -> dict:
        return {**dataclasses.asdict(self.spec), "segments": list(self.spec.segments),
                "cursor": self.cursor, "delivered": self.delivered, "failures": self.failures,
                "skipped": self.skipped, "last_error": self.last_error}


class DestinationService:
    """The gateway's webhook destinations: definitions, delivery tasks, the state file."""

    def __init__(self, gateway, rng: random.Random | None = None):
        self.gw = gateway
        self._rng = rng or random.Random()
        self._dests: dict[str, _Destination] = {}
        self._lock = asyncio.Lock()          # one definition change (and file write) at a time
        self._dirty = False                  # cursors moved since the last save
        self._saver: asyncio.Task | None = None
        self._writing: asyncio.Future | None = None   # the state file's write in progress
        self._started = False

    @property
    def path(self) -> Path | None:
        root = self.gw.config.data_dir if self.gw.store is not None else ""
        return Path(root) / STATE_FILE if root else None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """After recovery (the delta log restored): load the definitions and cursors, start
        delivering."""
        for rec in await asyncio.to_thread(self._load):
            d = _Destination(_spec_from_record(rec), int(rec.get("cursor", 0)),
                             int(rec.get("delivered", 0)), int(rec.get("failures", 0)),
                             int(rec.get("skipped", 0)), str(rec.get("last_error", "")))
            self._dests[d.spec.name] = d
            self._launch(d)
        self._started = True
        if self.path is not None:
            self._saver = asyncio.ensure_future(self._save_loop())
        if self._dests:
            log.info("%d webhook destination(s) resume delivery: %s", len(self._dests),
                     ", ".join(f"{d.spec.name} after sequence {d.cursor}"
                               for d in self._dests.values()))

    async def stop(self) -> None:
        """Cancel the deliveries (a POST in flight is not acknowledged, so it goes again after
        a restart) and save the cursors."""
        tasks = [d.task for d in self._dests.values() if d.task is not None]
        if self._saver is not None:
            tasks.append(self._saver)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):   # stopping anyway
                await t
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
        if self._started and self.path is not None:
            try:
                await self._save()
            except OSError as exc:
                log.warning("could not save the webhook cursors at shutdown (%s); deliveries "
                            "since the last save go again after a restart", exc)
        self._started = False

    # ------------------------------------------------------------------ operations

    async def create(self, name: str, url: str, segments=(), secret: str = "",
                     batch_size: int = 0, max_wait_ms: int = 0,
                     timeout_ms: int = 0) -> DestinationInfo:
        async with self._lock:
            if name in self._dests:
                raise DestinationExists(f"destination {name!r} already exists: delete it first "
                                        "to change it")
            spec = validate_spec(name, url, segments, secret, batch_size, max_wait_ms,
                                 timeout_ms, known_segments=self.gw.registry, now_ms=_wall_ms())
            if len(self._dests) >= MAX_DESTINATIONS:
                raise DestinationError(f"the server has {MAX_DESTINATIONS} destinations, the "
                                       "most it keeps: delete one first")
            # like Subscribe with after_sequence 0: the deltas from now on
            d = _Destination(spec, self.gw.log.last_sequence)
            self._dests[name] = d
            try:
                await self._save()
            except BaseException:
                del self._dests[name]
                raise
            self._launch(d)
            return dataclasses.replace(self._info(d), secret=spec.secret)

    def list(self) -> list[DestinationInfo]:
        return [self._info(self._dests[n]) for n in sorted(self._dests)]

    def get(self, name: str) -> DestinationInfo:
        return self._info(self._find(name))

    async def delete(self, name: str) -> DestinationInfo:
        async with self._lock:
            d = self._find(name)
            del self._dests[name]
            if d.task is not None:
                d.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await d.task
            await self._save()
            return self._info(d)

    def _find(self, name: str) -> _Destination:
        try:
            return self._dests[name]
        except KeyError:
            raise UnknownDestination(f"destination {name!r} does not exist") from None

    def _info(self, d: _Destination) -> DestinationInfo:
        s = d.spec
        return DestinationInfo(s.name, s.url, s.segments, d.cursor, d.delivered, d.failures,
                               d.last_error, d.state,
                               d.next_retry_ms if d.state == BACKING_OFF else 0,
                               s.batch_size, s.max_wait_ms, s.timeout_ms, s.created_ms,
                               d.skipped, self.gw.log.last_sequence)

    # ------------------------------------------------------------------ delivery

    def _launch(self, d: _Destination) -> None:
        d.task = asyncio.ensure_future(self._deliver_loop(d))

    async def _deliver_loop(self, d: _Destination) -> None:
        import httpx2

        seq = self.gw.sequencer
        wanted = set(d.spec.segments) or None
        batcher = Batcher(d.spec.batch_size, d.spec.max_wait_ms, d.cursor)
        epoch = seq.epoch
        timeout = httpx2.Timeout(d.spec.timeout_ms / 1000.0)
        # a client (connection pool) of its own: a receiver that hangs ties up only these
        async with httpx2.AsyncClient(timeout=timeout, follow_redirects=False) as http:
            while not seq.closed:
                try:
                    if seq.epoch != epoch:          # Reset (tests): the log starts again at 1
                        epoch = seq.epoch
                        batcher.restart(0)
                        self._acknowledge(d, 0)
                    self._fill(d, batcher, wanted)
                    if not batcher.pending:
                        self._acknowledge(d, batcher.end)   # other segments' deltas: passed
                        await seq.wait_beyond(batcher.end, epoch)
                        continue
                    now = _monotonic_ms()
                    if not batcher.ready(now):
                        try:
                            await asyncio.wait_for(seq.wait_beyond(batcher.end, epoch),
                                                   batcher.wait_ms(now) / 1000.0)
                        except TimeoutError:
                            pass
                        continue
                    batch, end = batcher.take()
                    await self._post_until_acknowledged(d, http, batch)
                    self._acknowledge(d, end)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("webhook destination %s: delivery failed unexpectedly",
                                  d.spec.name)
                    batcher.restart(d.cursor)       # what was not acknowledged goes again
                    await asyncio.sleep(1.0)

    def _fill(self, d: _Destination, batcher: Batcher, wanted) -> None:
        """Read the log after ``batcher.end`` into the batcher (as much as it has room for)."""
        lg = self.gw.log
        last = lg.last_sequence
        if batcher.end > last:
            # the log holds less than was acknowledged (a data dir whose newest frames were
            # lost, say): new deltas will take those numbers, so go on from the log's end
            self._note(d, f"the cursor {batcher.end} was ahead of the delta log (newest "
                          f"{last}); delivery goes on after sequence {last}")
            log.warning("webhook destination %s: %s", d.spec.name, d.last_error)
            batcher.restart(last)
            self._acknowledge(d, last)
            return
        if batcher.end >= last or batcher.room <= 0:
            return
        try:
            items = lg.read(batcher.end, wanted, limit=batcher.room)
        except SequenceTooOld:
            first = lg.first_retained
            lost = first - 1 - batcher.end
            d.skipped += lost
            self._note(d, f"deltas {batcher.end + 1}..{first - 1} were no longer retained in "
                          f"the delta log (--delta-log-size) when delivery reached them: "
                          f"{lost} sequence(s) skipped, delivery resumed from sequence {first}")
            log.warning("webhook destination %s: %s", d.spec.name, d.last_error)
            if not batcher.pending:
                self._acknowledge(d, first - 1)
            batcher.end = first - 1
            items = lg.read(batcher.end, wanted, limit=batcher.room)
        if len(items) >= batcher.room:
            end = items[-1].sequence
        else:
            end = last
            items = [x for x in items if x.sequence <= last]
        batcher.add(items, end, _monotonic_ms())

    async def _post_until_acknowledged(self, d: _Destination, http, batch: list) -> None:
        """POST one batch until a 2xx, backing off between tries (the same body each time)."""
        import httpx2

        body = encode_batch(d.spec.name, batch)
        headers = headers_for(d.spec.secret, body, batch)
        while True:
            d.state = DELIVERING
            try:
                # httpx2's timeout bounds each phase; this bounds the whole exchange
                async with asyncio.timeout(d.spec.timeout_ms / 1000.0):
                    reply = await http.post(d.spec.url, content=body, headers=headers)
                if 200 <= reply.status_code < 300:
                    d.delivered += len(batch)
                    d.attempt = 0
                    d.next_retry_ms = 0
                    return
                error = f"HTTP {reply.status_code} from {d.spec.url}"
                text = reply.text.strip()
                if text:
                    error += f": {text[:ERROR_TEXT_CHARS]}"
            except (httpx2.TimeoutException, TimeoutError):
                error = f"no reply from {d.spec.url} within {d.spec.timeout_ms} ms"
            except httpx2.HTTPError as exc:
                error = f"{type(exc).__name__} posting to {d.spec.url}: {exc}"[:ERROR_TEXT_CHARS]
            d.failures += 1
            d.attempt += 1
            delay = backoff_ms(d.attempt, self._rng)
            self._note(d, f"{error} (deltas {delivery_id(batch)}, try {d.attempt}; next in "
                          f"{delay} ms)")
            d.state = BACKING_OFF
            d.next_retry_ms = _wall_ms() + delay
            self._dirty = True
            await asyncio.sleep(delay / 1000.0)

    def _acknowledge(self, d: _Destination, cursor: int) -> None:
        if cursor != d.cursor:
            d.cursor = cursor
            self._dirty = True

    @staticmethod
    def _note(d: _Destination, error: str) -> None:
        d.last_error = error

    # ------------------------------------------------------------------ the state file

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(CURSOR_SAVE_INTERVAL_MS / 1000.0)
            if not self._dirty:
                continue
            try:
                async with self._lock:
                    await self._save()
            except OSError as exc:
                log.warning("could not save the webhook cursors (%s); retrying", exc)

    async def _save(self) -> None:
        """Write every definition and cursor now (no-op without a data dir)."""
        path = self.path
        if path is None:
            self._dirty = False
            return
        self._dirty = False
        doc = {"format": FILE_FORMAT, "destinations": [d.record() for d in self._dests.values()]}
        data = json.dumps(doc, indent=1).encode()
        try:
            # shielded: a cancelled saver must not leave a write running under the next one
            self._writing = asyncio.get_running_loop().run_in_executor(None, write_atomic,
                                                                      path, data)
            await asyncio.shield(self._writing)
        except BaseException:
            self._dirty = True
            raise

    def _load(self) -> list[dict]:
        path = self.path
        if path is None or not path.exists():
            return []
        try:
            doc = json.loads(path.read_bytes())
            if doc.get("format") != FILE_FORMAT:
                raise ValueError(f"format {doc.get('format')!r} is not {FILE_FORMAT}")
            return list(doc["destinations"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"the webhook destinations file {path} cannot be read ({exc}); "
                              "fix or remove it (removing it forgets every destination)") from None


def _spec_from_record(rec: dict) -> DestinationSpec:
    return DestinationSpec(rec["name"], rec["url"], tuple(rec.get("segments") or ()),
                           rec["secret"], int(rec["batch_size"]), int(rec["max_wait_ms"]),
                           int(rec["timeout_ms"]), int(rec.get("created_ms", 0)))


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` whole or not at all (temp file, fsync, rename, fsync of
    the directory); readable by the owner only, since it holds the destinations' secrets."""
    from engine.durability.files import fsync_dir

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


# ----------------------------------------------------------------------------- messages

_SCALARS = ("name", "url", "cursor", "delivered", "failures", "last_error", "next_retry_ms",
            "batch_size", "max_wait_ms", "timeout_ms", "created_ms", "skipped", "last_sequence",
            "secret")


def destination_to_pb(info: DestinationInfo, out=None):
    from engine._pb import pb

    out = pb.Destination() if out is None else out
    for f in _SCALARS:
        setattr(out, f, getattr(info, f))
    out.segments.extend(info.segments)
    out.state = pb.DestinationState.Value(info.state)
    return out


def destination_from_pb(msg) -> DestinationInfo:
    from engine._pb import pb

    kw = {f: getattr(msg, f) for f in _SCALARS}
    for f in ("cursor", "delivered", "failures", "next_retry_ms", "batch_size", "max_wait_ms",
              "timeout_ms", "created_ms", "skipped", "last_sequence"):
        kw[f] = int(kw[f])
    return DestinationInfo(segments=tuple(msg.segments),
                           state=pb.DestinationState.Name(msg.state), **kw)
