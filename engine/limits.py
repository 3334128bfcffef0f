"""Hard input limits: how large, how far ahead and how many of everything the engine accepts.

One frozen :class:`Limits` holds every bound (docs/limits.md gives each default and why).
Per-event limits reject just the event (a ``Rejection`` naming the limit and the value, from
``engine._batch``); a request that no limit allows as a whole raises :class:`LimitExceeded`
(INVALID_ARGUMENT); a full engine raises ``engine.errors.Overloaded`` (RESOURCE_EXHAUSTED).

:class:`NameBudget` is the record of the distinct names an engine has accepted (event types,
the properties of each type, traits), which the ``max_event_types``,
``max_properties_per_type`` and ``max_traits`` limits are counted against: per-user state
grows with users x names, so names are the one input whose count must be bounded.

>>> lim = Limits.from_mapping({"max_future_ms": "2h", "max_event_types": 64})
>>> (lim.max_future_ms, lim.max_event_types, lim.max_traits)
(7200000, 64, 1024)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields

import numpy as np

from ._values import NULL_BITS
from .errors import ClockError, ConfigError

__all__ = [
    "DEFAULT_LIMITS",
    "LimitExceeded",
    "Limits",
    "NameBudget",
    "check_clock_move",
    "format_bytes",
    "wall_now_ms",
]

DAY_MS = 86_400_000
KIB = 1024
# traits whose names start so are written by goals only (engine._goals); SetTraits refuses them
RESERVED_TRAIT_PREFIX = "goal:"
MIB = 1024 * KIB


from .errors import LimitExceeded  # noqa: E402,F401 - defined with the other errors


def wall_now_ms() -> int:
    """The machine's UTC clock in ms (the other half of the future bound)."""
    return time.time_ns() // 1_000_000


def format_bytes(n: int) -> str:
    """``65536`` -> ``"64 KiB"``; exact binary units only, else plain bytes."""
    for unit, size in (("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", KIB)):
        if n and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def _duration_text(ms: int) -> str:
    for unit, size in (("d", DAY_MS), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class Limits:
    """Every hard limit of one engine or server; validated on construction (ConfigError).

    All values are ints; ``*_ms`` fields are milliseconds and ``*_bytes`` fields UTF-8 bytes.
    ``max_message_bytes``, ``max_subscribers``, ``subscriber_buffer`` and ``max_queue_ops``
    are read by the gRPC server only.
    """

    # Timestamps (and AdvanceClock targets) after max(now, machine clock) + this are refused.
    max_future_ms: int = DAY_MS
    # Events (or trait updates) in one batch; a larger batch is refused as a whole.
    max_batch_events: int = 1_000_000
    # Events x distinct property names in one batch: a batch's property columns are dense.
    max_batch_cells: int = 1 << 26
    # One user id, in UTF-8 bytes.
    max_id_bytes: int = 1024
    # One event type, property, trait, segment or model name, in UTF-8 bytes.
    max_name_bytes: int = 256
    # One string value (property, trait, string literal of an expression), in UTF-8 bytes.
    max_string_bytes: int = 64 * KIB
    # Properties given in one event.
    max_properties_per_event: int = 256
    # Distinct event types one engine accepts.
    max_event_types: int = 1024
    # Distinct property names one event type accepts.
    max_properties_per_type: int = 256
    # Distinct trait names one engine accepts.
    max_traits: int = 1024
    # Segments defined at once.
    max_segments: int = 10_000
    # Characters of one expression.
    max_expression_chars: int = 64 * KIB
    # Nesting levels of one expression (parentheses, not, minus, calls, operators).
    max_expression_depth: int = 64
    # Largest gRPC message received.
    max_message_bytes: int = 64 * MIB
    # Subscribe streams open at once.
    max_subscribers: int = 1000
    # Deltas buffered for one subscriber before it is cut off.
    subscriber_buffer: int = 100_000
    # Operations waiting in the gateway queue.
    max_queue_ops: int = 10_000

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ConfigError(f"limit {f.name} must be a whole number, not {v!r}")
            low = 0 if f.name == "max_future_ms" else 1
            if v < low:
                raise ConfigError(f"limit {f.name} must be at least {low}, not {v}")
            if v > 2**62:
                raise ConfigError(f"limit {f.name} is out of range: {v}")
            object.__setattr__(self, f.name, int(v))

    @classmethod
    def from_mapping(cls, values: Mapping) -> Limits:
        """Limits from ``{field name: value}``; missing fields keep their defaults.

        Values are ints or decimal strings (``"1_000"``); ``*_ms`` fields also take
        durations (``"1d"``, ``"90m"``, ``"0"``). Unknown names and bad values raise
        ConfigError naming the field.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"limits must be a mapping of name -> value, not {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        kw = {}
        for name, raw in values.items():
            if name not in known:
                raise ConfigError(f"unknown limit {name!r}; the limits are {', '.join(sorted(known))}")
            kw[name] = _parse_value(name, raw)
        return cls(**kw)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def future_bound_ms(self, now_ms: int, wall_ms: int | None = None) -> int:
        """The largest timestamp accepted now: ``max(now_ms, machine clock) + max_future_ms``.

        Relative to the machine clock too, so that an event-clock replay of real history
        (which starts from ``now = 0``) is never refused."""
        wall = wall_now_ms() if wall_ms is None else int(wall_ms)
        return max(int(now_ms), wall) + self.max_future_ms

    def future_reason(self, ts: int, bound: int) -> str:
        return (f"timestamp_ms {ts} is too far in the future: at most {bound} is accepted now "
                f"(max(now, machine clock) + max_future_ms {self.max_future_ms} = "
                f"{_duration_text(self.max_future_ms)})")


def _parse_value(name: str, raw) -> int:
    if isinstance(raw, str):
        text = raw.strip().replace("_", "")
        if text.lstrip("-").isdigit():
            return int(text)
        if name.endswith("_ms"):
            from ._units import parse_duration_ms

            return parse_duration_ms(raw, name)
        raise ConfigError(f"limit {name} must be a whole number, not {raw!r}")
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    return raw  # checked by Limits.__post_init__


DEFAULT_LIMITS = Limits()


def check_clock_move(target_ms: int, now_ms: int, limits: Limits | None = None,
                     allow_far_future: bool = False, *, wall_ms: int | None = None) -> int:
    """Check an AdvanceClock to ``target_ms`` from ``now_ms``: -> the target as an int.

    Raises ClockError when the target is beyond ``limits.future_bound_ms(now_ms)`` and
    ``allow_far_future`` is not set (one mistaken call would otherwise move ``now`` to where
    every real event is too old), or when it is not a whole number of ms.
    """
    if isinstance(target_ms, bool) or not isinstance(target_ms, (int, np.integer)):
        raise ClockError(f"advance_clock needs a whole number of ms since the epoch, not {target_ms!r}")
    target = int(target_ms)
    if not -(2**63) <= target < 2**63:
        raise ClockError(f"advance_clock to {target} is out of range (int64 ms)")
    lim = limits or DEFAULT_LIMITS
    bound = lim.future_bound_ms(now_ms, wall_ms)
    if target > bound and not allow_far_future:
        raise ClockError(
            f"advance_clock to {target} is beyond {bound}, max(now, machine clock) + max_future_ms "
            f"{lim.max_future_ms} ({_duration_text(lim.max_future_ms)}); pass allow_far_future to "
            "move there on purpose")
    return target


class NameBudget:
    """The distinct names an engine has accepted: event types, the property names of each
    type, trait names.

    ``engine._batch.prepare_events`` / ``events_from_dicts`` / ``prepare_traits`` consult it
    and add the names of the events they accept; a name that would take a count past its
    limit rejects the event that brings it. Names recorded with :meth:`add` or
    :meth:`note_columns` (recovery) are never refused, even beyond a limit that has since
    been lowered. ``to_dict()`` is plain lists and dicts of str (JSON and msgpack friendly).

    >>> b = NameBudget()
    >>> b.add(types=["view"], properties={"view": ["sku"]}, traits=["plan"])
    >>> NameBudget.from_dict(b.to_dict()).to_dict()
    {'types': {'view': ['sku']}, 'traits': ['plan']}
    """

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or DEFAULT_LIMITS
        self._types: dict[str, set[str]] = {}
        self._traits: set[str] = set()

    # ------------------------------------------------------------------ reading
    @property
    def n_types(self) -> int:
        return len(self._types)

    @property
    def n_traits(self) -> int:
        return len(self._traits)

    def n_properties(self, type_name: str) -> int:
        return len(self._types.get(type_name, ()))

    def has_type(self, type_name: str) -> bool:
        return type_name in self._types

    def has_property(self, type_name: str, prop: str) -> bool:
        props = self._types.get(type_name)
        return props is not None and prop in props

    def has_trait(self, name: str) -> bool:
        return name in self._traits

    def types(self) -> list[str]:
        return sorted(self._types)

    def properties(self, type_name: str) -> list[str]:
        return sorted(self._types.get(type_name, ()))

    def traits(self) -> list[str]:
        return sorted(self._traits)

    # ------------------------------------------------------------------ recording
    def add(self, types: Iterable[str] = (), properties: Mapping[str, Iterable[str]] | None = None,
            traits: Iterable[str] = ()) -> None:
        """Record names as accepted, without checking any limit (seeding, recovery)."""
        for t in types:
            self._types.setdefault(t, set())
        for t, props in (properties or {}).items():
            self._types.setdefault(t, set()).update(props)
        self._traits.update(traits)

    def note_columns(self, cols, events: bool = True) -> None:
        """Record the names used by accepted ``EventColumns`` (``events``) or
        ``TraitColumns`` (replaying a log: they were accepted once, so no limit applies)."""
        if len(cols) == 0:
            return
        if not events:
            self._traits.update(name for name, (_, given) in cols.traits.items() if given.any())
            return
        uniq = cols.type.uniques()
        codes = cols.type.codes
        self.add(types=uniq)
        for prop, boxed in cols.props.items():
            present = boxed.view(np.int64) != NULL_BITS
            if present.any():
                used = np.flatnonzero(np.bincount(codes[present], minlength=len(uniq)))
                for c in used.tolist():
                    self._types[uniq[c]].add(prop)

    def copy(self) -> NameBudget:
        out = NameBudget(self.limits)
        out._types = {t: set(p) for t, p in self._types.items()}
        out._traits = set(self._traits)
        return out

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """``{"types": {type: [property, ...]}, "traits": [name, ...]}``, sorted."""
        return {"types": {t: sorted(self._types[t]) for t in sorted(self._types)},
                "traits": sorted(self._traits)}

    @classmethod
    def from_dict(cls, d: Mapping | None, limits: Limits | None = None) -> NameBudget:
        """The budget ``to_dict`` described (None or {}: an empty one)."""
        out = cls(limits)
        d = d or {}
        types = d.get("types") or {}
        if not isinstance(types, Mapping):
            raise ConfigError("a name budget's types must be a mapping of type -> property names")
        out.add(types=list(types), properties={t: list(p or ()) for t, p in types.items()},
                traits=list(d.get("traits") or ()))
        return out

    @classmethod
    def from_names(cls, types: Iterable[str] = (), properties: Mapping[str, Iterable[str]] | None = None,
                   traits: Iterable[str] = (), limits: Limits | None = None) -> NameBudget:
        """A budget seeded with names already accepted (recovery from another record)."""
        out = cls(limits)
        out.add(types, properties, traits)
        return out

    def __eq__(self, other) -> bool:
        if not isinstance(other, NameBudget):
            return NotImplemented
        return self._types == other._types and self._traits == other._traits

    def __repr__(self) -> str:
        n_props = sum(len(p) for p in self._types.values())
        return f"NameBudget({self.n_types} types, {n_props} properties, {self.n_traits} traits)"
