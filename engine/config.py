"""The server's one configuration object: flags, then ``RTSEG_*`` environment variables, then
defaults, read once into a frozen :class:`ServerConfig`.

Every option is declared once in ``OPTIONS``; the command line (``rtseg serve --help`` shows
the variable of each flag), the environment reader and the validation all come from it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from engine.errors import ConfigError

ENV_PREFIX = "RTSEG_"


def parse_duration_ms(text: str | int) -> int:
    """``"30d"`` -> 2592000000 (the engine's own duration rules)."""
    from engine._units import parse_duration_ms as parse

    return parse(text, "retention")


def parse_interval_ms(text: str | int, what: str) -> int:
    """A schedule's period: a duration (``1h``, ``24h``), or ``0``/``off`` to disable it."""
    if isinstance(text, str) and text.strip().lower() in ("0", "off", "none", "never"):
        return 0
    if text == 0 and not isinstance(text, bool):
        return 0
    from engine._units import parse_duration_ms as parse

    return parse(text, what)


def _duration(text: str | int, what: str) -> int:
    from engine._units import parse_duration_ms as parse

    return parse(text, what)


def _clock(text: str) -> str:
    if text not in ("wall", "event"):
        raise ConfigError(f"--clock must be 'wall' or 'event', not {text!r}")
    return text


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"port out of range: {port}")
    return port


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise ConfigError(f"not an integer: {text!r}") from None
        if n < minimum:
            raise ConfigError(f"must be at least {minimum}: {n}")
        return n
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _niceness(text: str) -> int:
    n = _non_negative_int(text)
    if n > 19:
        raise ConfigError(f"a nice value is at most 19, not {n}")
    return n


def _fsync(text: str) -> str:
    if text not in ("always", "interval", "never"):
        raise ConfigError(f"fsync must be always, interval or never, not {text!r}")
    return text


def _optional_str(text: str) -> str | None:
    return text or None


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"not a yes/no value: {text!r} (use 1/0, true/false)")


@dataclass(frozen=True)
class _Option:
    field: str
    flag: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()


OPTIONS: tuple[_Option, ...] = (
    _Option("host", "--host", str, "127.0.0.1", "address to listen on"),
    _Option("port", "--port", _port, 50051, "gRPC port (0: pick a free one)"),
    _Option("shards", "--shards", _positive_int, None,
            "number of shard actors (default: one per CPU)", "N"),
    _Option("clock", "--clock", _clock, "wall", "wall (UTC clock) or event (event time)",
            "wall|event"),
    _Option("retention", "--retention", str, "30d", "how long events are kept, e.g. 30d",
            "DURATION"),
    _Option("data_dir", "--data-dir", str, "./rtseg-data", "directory for durable state",
            "DIR"),
    _Option("address", "--address", _optional_str, None,
            "join this Ray cluster instead of starting a local Ray", "RAY_ADDRESS"),
    _Option("tls_cert", "--tls-cert", _optional_str, None, "PEM certificate: serve TLS",
            "FILE"),
    _Option("tls_key", "--tls-key", _optional_str, None, "PEM private key of --tls-cert",
            "FILE"),
    _Option("token", "--token", _optional_str, None,
            "require 'authorization: Bearer TOKEN' on every call", "TOKEN"),
    _Option("console_host", "--console-host", str, "127.0.0.1",
            "address of the web console and /metrics", "HOST"),
    _Option("console_port", "--console-port", _port, 8080,
            "port of the web console and /metrics (0: pick a free one; taken: a warning, gRPC "
            "still serves)", "PORT"),
    _Option("no_console", "--no-console", _bool, False,
            "do not serve the web console and /metrics"),
    _Option("flush_events", "--flush-events", _positive_int, 65536,
            "micro-batch: flush a shard's batch at this many events", "N"),
    _Option("flush_interval_us", "--flush-interval-us", _positive_int, 300,
            "micro-batch: flush at the latest this long after the first waiting event", "US"),
    _Option("rounds_over_ray", "--rounds-over-ray", _bool, False,
            "send the micro-batch rounds to the shards as ordinary Ray actor calls, not over a "
            "direct channel to each shard (slower; for networks that refuse connections between "
            "nodes other than Ray's)"),
    _Option("tick_interval_ms", "--tick-interval-ms", _positive_int, 10,
            "wall clock: how often due timers are fired", "MS"),
    _Option("delta_log_size", "--delta-log-size", _positive_int, 1_000_000,
            "deltas kept for Subscribe resume", "N"),
    _Option("object_store_mb", "--object-store-mb", _positive_int, 256,
            "object store of the embedded local Ray, in MB", "MB"),
    _Option("shard_niceness", "--shard-niceness", _niceness, 5,
            "nice value of the embedded Ray's worker processes, the shards (0-19; Ray's own "
            "default is 15, which gives them a thirtieth of a core against any busy process at 0)", "N"),
    _Option("max_events_per_type", "--max-events-per-type", _positive_int, 4096,
            "events kept per user and event type (at most 4096)", "N"),
    _Option("rescore_interval", "--rescore-interval", str, "1h",
            "re-score every user with every model this often, as time moves recency "
            "features (0: never)", "DURATION"),
    _Option("rfm_interval", "--rfm-interval", str, "60s",
            "recompute the quintile boundaries of rfm_* over the whole population this often "
            "(engine clock; 0: only on demand, RecomputeRfm)", "DURATION"),
    _Option("history_interval", "--history-interval", str, "60s",
            "sample every segment's size this often of the engine clock (GetSegmentHistory; "
            "0: off)", "DURATION"),
    _Option("history_retention", "--history-retention", str, "30d",
            "keep size samples this long", "DURATION"),
    _Option("retrain_interval", "--retrain-interval", str, "24h",
            "train every model made by TrainModel again this long after its last training: a "
            "new version (0: never)", "DURATION"),
    _Option("model_slice_users", "--model-slice-users", _positive_int, 50_000,
            "users per shard gathered for training, or scored by a new model version, in one "
            "pause of ingestion (larger populations go in slices)", "N"),
    _Option("allow_reset", "--allow-reset", _bool, False,
            "accept the Reset RPC, which forgets everything (for tests only)"),
    _Option("fsync", "--fsync", _fsync, "interval",
            "when the write-ahead log is fsynced: always (before each reply), interval (every "
            "--fsync-interval-ms; a reply waits for the write only) or never (the OS decides)",
            "always|interval|never"),
    _Option("fsync_interval_ms", "--fsync-interval-ms", _positive_int, 10,
            "--fsync interval: fsync the log this often while it has unsynced frames", "MS"),
    _Option("snapshot_interval", "--snapshot-interval", str, "5m",
            "write a snapshot (and cut the log) this often (0: only by log size and at shutdown)",
            "DURATION"),
    _Option("snapshot_log_mb", "--snapshot-log-mb", _non_negative_int, 64,
            "also write a snapshot once this much log has been written since the last (0: off)",
            "MB"),
    _Option("batch_id_window", "--batch-id-window", _positive_int, 100_000,
            "batch ids remembered (also across restarts): a retried batch with one of them is "
            "not applied again", "N"),
    _Option("max_future", "--max-future", str, "1d",
            "refuse timestamps (and AdvanceClock) more than this ahead of max(now, machine clock)",
            "DURATION"),
    _Option("max_batch_events", "--max-batch-events", _positive_int, 1_000_000,
            "events (or trait updates) in one batch, at most", "N"),
    _Option("max_message_mb", "--max-message-mb", _positive_int, 64,
            "largest gRPC message received, in MB", "MB"),
    _Option("max_subscribers", "--max-subscribers", _positive_int, 1000,
            "Subscribe streams open at once, at most", "N"),
    _Option("max_queue_ops", "--max-queue-ops", _positive_int, 10_000,
            "operations waiting in the gateway queue before new ones get RESOURCE_EXHAUSTED", "N"),
    _Option("max_segments", "--max-segments", _positive_int, 10_000,
            "segments defined at once, at most", "N"),
    _Option("max_id_bytes", "--max-id-bytes", _positive_int, 1024,
            "longest user id (UTF-8 bytes); longer ones are rejected per event", "N"),
    _Option("max_name_bytes", "--max-name-bytes", _positive_int, 256,
            "longest event type, property, trait or segment name (UTF-8 bytes)", "N"),
    _Option("max_string_bytes", "--max-string-bytes", _positive_int, 65536,
            "longest string property or trait value (UTF-8 bytes)", "N"),
    _Option("max_properties_per_event", "--max-properties-per-event", _positive_int, 256,
            "properties in one event, at most", "N"),
    _Option("max_event_types", "--max-event-types", _positive_int, 1024,
            "distinct event types in the engine, at most (each costs 8 bytes per user)", "N"),
    _Option("max_properties_per_type", "--max-properties-per-type", _positive_int, 256,
            "distinct property names per event type, at most", "N"),
    _Option("max_traits", "--max-traits", _positive_int, 1024,
            "distinct trait names in the engine, at most (each costs 8 bytes per user)", "N"),
    _Option("max_expression_chars", "--max-expression-chars", _positive_int, 65536,
            "longest segment expression, in characters", "N"),
    _Option("max_expression_depth", "--max-expression-depth", _positive_int, 64,
            "deepest nesting of a segment expression", "N"),
)

LIMIT_FIELDS = ("max_batch_events", "max_subscribers", "max_queue_ops", "max_segments",
                "max_id_bytes", "max_name_bytes", "max_string_bytes", "max_properties_per_event",
                "max_event_types", "max_properties_per_type", "max_traits",
                "max_expression_chars", "max_expression_depth")


@dataclass(frozen=True)
class ServerConfig:
    """Validated, immutable settings of ``rtseg serve``."""

    host: str = "127.0.0.1"
    port: int = 50051
    shards: int | None = None
    clock: str = "wall"
    retention: str = "30d"
    data_dir: str = "./rtseg-data"
    address: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    token: str | None = None
    console_host: str = "127.0.0.1"
    console_port: int = 8080
    no_console: bool = False
    flush_events: int = 65536
    flush_interval_us: int = 300
    rounds_over_ray: bool = False
    tick_interval_ms: int = 10
    delta_log_size: int = 1_000_000
    object_store_mb: int = 256
    shard_niceness: int = 5
    max_events_per_type: int = 4096
    rescore_interval: str = "1h"
    rfm_interval: str = "60s"
    retrain_interval: str = "24h"
    history_interval: str = "60s"
    history_retention: str = "30d"
    model_slice_users: int = 50_000
    allow_reset: bool = False
    fsync: str = "interval"
    fsync_interval_ms: int = 10
    snapshot_interval: str = "5m"
    snapshot_log_mb: int = 64
    batch_id_window: int = 100_000
    max_future: str = "1d"
    max_batch_events: int = 1_000_000
    max_message_mb: int = 64
    max_subscribers: int = 1000
    max_queue_ops: int = 10_000
    max_segments: int = 10_000
    max_id_bytes: int = 1024
    max_name_bytes: int = 256
    max_string_bytes: int = 65536
    max_properties_per_event: int = 256
    max_event_types: int = 1024
    max_properties_per_type: int = 256
    max_traits: int = 1024
    max_expression_chars: int = 65536
    max_expression_depth: int = 64
    shutdown_snapshot_s: float = 120.0

    def __post_init__(self) -> None:
        _clock(self.clock)
        parse_duration_ms(self.retention)
        parse_interval_ms(self.rescore_interval, "--rescore-interval")
        parse_interval_ms(self.retrain_interval, "--retrain-interval")
        parse_interval_ms(self.history_interval, "--history-interval")
        _duration(self.history_retention, "--history-retention")
        parse_interval_ms(self.rfm_interval, "--rfm-interval")
        if self.shards is not None and self.shards < 1:
            raise ConfigError(f"shards must be at least 1: {self.shards}")
        if not 1 <= self.max_events_per_type <= 4096:
            raise ConfigError(f"max_events_per_type must be between 1 and 4096: {self.max_events_per_type}")
        _fsync(self.fsync)
        parse_interval_ms(self.snapshot_interval, "--snapshot-interval")
        parse_duration_ms(self.max_future)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")

    @property
    def retention_ms(self) -> int:
        return parse_duration_ms(self.retention)

    @property
    def rescore_interval_ms(self) -> int:
        """0: no scheduled re-scoring."""
        return parse_interval_ms(self.rescore_interval, "--rescore-interval")

    @property
    def rfm_interval_ms(self) -> int:
        """0: boundaries only on demand."""
        return parse_interval_ms(self.rfm_interval, "--rfm-interval")

    @property
    def history_interval_ms(self) -> int:
        """0: no size sampling."""
        return parse_interval_ms(self.history_interval, "--history-interval")

    @property
    def history_retention_ms(self) -> int:
        return _duration(self.history_retention, "--history-retention")

    @property
    def retrain_interval_ms(self) -> int:
        """0: no scheduled retraining."""
        return parse_interval_ms(self.retrain_interval, "--retrain-interval")

    @property
    def snapshot_interval_s(self) -> float:
        """0: no snapshot by time."""
        return parse_interval_ms(self.snapshot_interval, "--snapshot-interval") / 1000.0

    def limits(self):
        """The hard input limits of this server (``engine.limits``)."""
        from engine.limits import Limits

        return Limits(max_future_ms=parse_duration_ms(self.max_future),
                      max_message_bytes=self.max_message_mb * 1024 * 1024,
                      **{f: getattr(self, f) for f in LIMIT_FIELDS})

    @property
    def shard_count(self) -> int:
        return self.shards or max(1, os.cpu_count() or 1)

    @property
    def listen(self) -> str:
        return f"{self.host}:{self.port}"

    def replace(self, **changes: Any) -> "ServerConfig":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return ServerConfig(**values)

    @classmethod
    def load(cls, args: argparse.Namespace | Mapping[str, Any] | None = None,
             env: Mapping[str, str] | None = None) -> "ServerConfig":
        """Flags (``None`` = not given) > ``RTSEG_*`` variables > defaults."""
        given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            if given.get(opt.field) is not None:
                raw = given[opt.field]
            elif env.get(opt.env, "") != "":
                raw = env[opt.env]
            else:
                values[opt.field] = opt.default
                continue
            values[opt.field] = opt.parse(raw) if isinstance(raw, str) else raw
        return cls(**values)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option as a flag whose help names its environment variable and default."""
    for opt in OPTIONS:
        default = "one per CPU" if opt.field == "shards" else opt.default
        help_text = f"{opt.help} [env {opt.env}; default {default}]"
        if opt.parse is _bool:
            parser.add_argument(opt.flag, dest=opt.field, default=None, action="store_const",
                                const="1", help=help_text)
        else:
            parser.add_argument(opt.flag, dest=opt.field, default=None, metavar=opt.metavar,
                                help=help_text)
