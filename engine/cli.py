"""``rtseg``: serve the engine, and operate a running server.

    rtseg serve [--shards N --clock wall|event ...]       start a server (flags or RTSEG_*)
    rtseg segment create|replace|get|list|delete|preview|export ...
    rtseg user ID [--delete]
    rtseg ingest FILE | rtseg traits FILE                  load JSON lines or CSV (gzip, "-")
    rtseg model train|deploy|get|list|delete ...           predictive models (--server HOST:PORT)
    rtseg watch [SEGMENT ...] [--after SEQ]
    rtseg stats
    rtseg scale --shards N
    rtseg clock NOW_MS                                     (event clock only)
    rtseg health
    rtseg mcp [--allow-write] [--http]                     an MCP server for AI assistants
    rtseg console [--port 8080] [--host H]                 the web console of a server elsewhere
    rtseg destination create NAME URL [--segments a,b] | list | delete NAME   webhooks
    rtseg report segment|goal NAME [--out FILE.png]        PNG charts (size over time, goals)
    rtseg bench ...                                        (the bench/ package, when present)

Every operator command takes ``--target`` or ``--server`` (``RTSEG_TARGET``), ``--token``
(``RTSEG_TOKEN``) and ``--tls-ca`` (``RTSEG_TLS_CA``); the ``model`` commands take
``--server`` only, since ``model train --target`` is what the model predicts. Results are
printed as JSON; ``watch`` prints one JSON object per delta and ``segment export`` one user id
per line; ``model`` commands print a report and a precision/recall table (``--json``: JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from typing import Any

from engine.config import add_server_arguments

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _env_default(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "")
    return value if value != "" else default


def _client_parent(address_flags: tuple[str, ...] = ("--target", "--server"),
                   ) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    g.add_argument(*address_flags, dest="server_address", default=None, metavar="HOST:PORT",
                   help="server address [env RTSEG_TARGET; default 127.0.0.1:50051]")
    g.add_argument("--token", default=None,
                   help="bearer token of the server's --token [env RTSEG_TOKEN]")
    g.add_argument("--tls-ca", default=None, metavar="FILE",
                   help="PEM of the CA of the server certificate: connect with TLS "
                        "[env RTSEG_TLS_CA]")
    g.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="deadline of each call (default: none)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtseg", description="Real-time behavioural segmentation engine.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    client = _client_parent()

    serve = sub.add_parser("serve", help="start the engine and serve gRPC",
                           description="Start the engine (Ray shard actors) and serve gRPC. "
                           "Each flag can also be given as the RTSEG_* variable shown; "
                           "flags win over variables.")
    add_server_arguments(serve)

    seg = sub.add_parser("segment", help="create, inspect and delete segments")
    ssub = seg.add_subparsers(dest="segment_command", metavar="ACTION")
    ssub.required = True
    for action, text in (("create", "create a segment (backfills it)"),
                         ("replace", "give a segment a new expression")):
        a = ssub.add_parser(action, parents=[client], help=text)
        a.add_argument("name")
        a.add_argument("expression", help='the expression ("-" reads it from stdin)')
        a.add_argument("--description", default=None)
    for action, text in (("get", "a segment's definition and size"),
                         ("delete", "stop maintaining a segment (EXIT deltas)"),
                         ("export", "print every member, one per line")):
        a = ssub.add_parser(action, parents=[client], help=text)
        a.add_argument("name")
    ssub.choices["export"].add_argument("-o", "--output", default=None, metavar="FILE",
                                        help="write the ids to FILE instead of stdout")
    ssub.add_parser("list", parents=[client], help="every segment")
    a = ssub.add_parser("preview", parents=[client], help="size and sample of an expression")
    a.add_argument("expression", help='the expression ("-" reads it from stdin)')
    a.add_argument("--sample", type=int, default=10)

    user = sub.add_parser("user", parents=[client], help="a user's segments and traits")
    user.add_argument("user_id")
    user.add_argument("--delete", action="store_true",
                      help="forget the user's events and traits (EXIT deltas)")

    watch = sub.add_parser("watch", parents=[client], help="print live deltas (JSON lines)")
    watch.add_argument("segments", nargs="*", metavar="SEGMENT",
                       help="segments to watch (default: all)")
    watch.add_argument("--after", type=int, default=0, metavar="SEQ",
                       help="first replay the retained deltas after this sequence")
    watch.add_argument("--count", type=int, default=0, metavar="N",
                       help="stop after N deltas (default: never)")

    _add_model_parsers(sub)
    _add_file_parsers(sub, client)

    sub.add_parser("stats", parents=[client], help="engine statistics (JSON)")
    scale = sub.add_parser("scale", parents=[client], help="change the number of shards live")
    scale.add_argument("--shards", type=int, required=True, metavar="N")
    clock = sub.add_parser("clock", parents=[client], help="advance the event clock")
    clock.add_argument("now_ms", type=int)
    sub.add_parser("health", parents=[client], help="the server's health status")
    report = sub.add_parser("report", help="PNG charts of a segment or a goal")
    rsub = report.add_subparsers(dest="report_command", metavar="KIND")
    rsub.required = True
    for kind, text in (("segment", "a segment's size over time"), ("goal", "a goal's progress")):
        r = rsub.add_parser(kind, parents=[client], help=text)
        r.add_argument("name")
        r.add_argument("--out", default=None, metavar="FILE.png",
                       help=f"where to write the chart (default: {kind}-NAME.png)")
    goal = sub.add_parser("goal", help="create, inspect and delete goals (forecast, control group)")
    gsub = goal.add_subparsers(dest="goal_command", metavar="ACTION")
    gsub.required = True
    g = gsub.add_parser("create", parents=[client], help="a goal over a segment's members now")
    g.add_argument("name")
    g.add_argument("--segment", required=True)
    g.add_argument("--event", required=True, dest="goal_target", metavar="EVENT",
                   help='the target event (GoalSpec.target), e.g. "purchase" or "purchase where value > 50"')
    end = g.add_mutually_exclusive_group(required=True)
    end.add_argument("--end-ms", type=int, help="the end, in ms since the epoch")
    end.add_argument("--within", metavar="DURATION", help="the end as a duration from the engine's now, e.g. 30d")
    g.add_argument("--control-fraction", type=float, default=0.1)
    g.add_argument("--minimize", action="store_true", help="a churn-like goal: fewer conversions are better")
    for action, text in (("get", "a goal's forecast, outcome and uplift"), ("delete", "forget a goal")):
        gsub.add_parser(action, parents=[client], help=text).add_argument("name")
    gsub.add_parser("list", parents=[client], help="every goal")
    sub.add_parser("rfm", parents=[client],
                   help="recompute the rfm_* quintile boundaries now and print them")
    _add_mcp_parser(sub, client)
    _add_console_parser(sub, client)
    _add_destination_parser(sub, client)
    sub.add_parser("bench", add_help=False, help="benchmarks (the bench package)")
    return parser


def _add_model_parsers(sub) -> None:
    client = _client_parent(("--server",))
    model = sub.add_parser("model", help="train, deploy and inspect predictive models",
                           description="Predictive models: train on the engine's own history "
                           "(point in time), deploy your own ONNX, inspect, delete. Segments "
                           'use them with score("m"), bucket("m") and likely("m", P).')
    msub = model.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print JSON instead of tables")

    t = msub.add_parser("train", parents=[client, out],
                        help="train a model (a new version if the name exists) and deploy it")
    t.add_argument("name")
    t.add_argument("--target", default="", metavar="EVENTS",
                   help='what to predict, an event source as in count(): "purchase", '
                        '"purchase where value > 50"')
    t.add_argument("--target-segment", default="", metavar="SEGMENT",
                   help="lookalike: learn membership of this segment instead of a target")
    t.add_argument("--horizon", default=None, metavar="DURATION",
                   help="the target occurs within this long (e.g. 7d); needed with --target")
    t.add_argument("--lookback", default=None, metavar="DURATION",
                   help="history the features look at (default: min(retention - horizon, 90d))")
    t.add_argument("--churn", action="store_true",
                   help="predict that the target does NOT occur within the horizon")
    t.add_argument("--feature", dest="features", action="append", default=[], metavar="EXPR",
                   help="a numeric feature expression (repeat; default: a set chosen from "
                        "the target and the most frequent events)")
    t.add_argument("--algorithm", default="auto", choices=("auto", "logistic", "gbt"),
                   help="auto keeps the better validation AUC")
    t.add_argument("--bucket-high", type=float, default=None, metavar="P",
                   help='bucket("m") is "high" from this probability (default 0.75)')
    t.add_argument("--bucket-medium", type=float, default=None, metavar="P",
                   help='bucket("m") is "medium" from this probability (default 0.5)')
    t.add_argument("--seed", type=int, default=0, help="of the split and the learners")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    d = msub.add_parser("deploy", parents=[client, out],
                        help="deploy your own ONNX model with its feature expressions")
    d.add_argument("name")
    d.add_argument("file", metavar="FILE.onnx", help='the ONNX model ("-" reads stdin)')
    d.add_argument("--feature", dest="features", action="append", default=[], metavar="EXPR",
                   required=True, help="the expression of each model input column, in order "
                                       "(repeat)")
    g = msub.add_parser("get", parents=[client, out], help="a model's latest report")
    g.add_argument("name")
    msub.add_parser("list", parents=[client, out], help="every model (latest versions)")
    x = msub.add_parser("delete", parents=[client, out],
                        help="forget a model and its versions (refused while a segment uses it)")
    x.add_argument("name")


def _client(args):
    from engine.client import DEFAULT_TARGET, Client

    target = args.server_address or _env_default("RTSEG_TARGET", DEFAULT_TARGET)
    token = args.token or _env_default("RTSEG_TOKEN")
    tls_ca = args.tls_ca or _env_default("RTSEG_TLS_CA")
    return Client(target, token, tls_ca=tls_ca, timeout_s=args.timeout)


def _print_json(obj: Any) -> None:
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def _expression(text: str) -> str:
    return sys.stdin.read() if text == "-" else text


def _run_segment(args) -> int:
    with _client(args) as c:
        cmd = args.segment_command
        if cmd == "create":
            _print_json(c.create_segment(args.name, _expression(args.expression),
                                         args.description or ""))
        elif cmd == "replace":
            _print_json(c.replace_segment(args.name, _expression(args.expression),
                                          args.description))
        elif cmd == "get":
            _print_json(c.get_segment(args.name))
        elif cmd == "list":
            _print_json([dataclasses.asdict(s) for s in c.list_segments()])
        elif cmd == "delete":
            _print_json(c.delete_segment(args.name))
        elif cmd == "preview":
            size, sample = c.preview_segment(_expression(args.expression), args.sample)
            _print_json({"size": size, "sample_user_ids": sample})
        elif cmd == "export" and args.output not in (None, "-"):
            _print_json(_export_to_file(c, args.name, args.output))
        elif cmd == "export":
            out = sys.stdout
            for uid in c.export_segment(args.name):
                out.write(uid + "\n")
            out.flush()
    return EXIT_OK


def _run_watch(args) -> int:
    with _client(args) as c:
        sub = c.subscribe(args.segments, args.after)
        seen = 0
        try:
            for d in sub:
                print(json.dumps(dataclasses.asdict(d)), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            sub.close()
    return EXIT_OK


def _run_model(args) -> int:
    cmd = args.model_command
    with _client(args) as c:
        if cmd == "train":
            fields: dict[str, Any] = {
                "target": args.target, "target_segment": args.target_segment,
                "churn": args.churn, "features": tuple(args.features),
                "algorithm": args.algorithm, "seed": args.seed}
            for name in ("horizon", "lookback"):
                if getattr(args, name):
                    fields[name] = getattr(args, name)
            for name in ("bucket_high", "bucket_medium"):
                if getattr(args, name) is not None:
                    fields[name] = getattr(args, name)
            with _TrainProgressBar(disable=args.quiet) as bar:
                report = c.train_model(name=args.name, progress=bar.phase, **fields)
        elif cmd == "deploy":
            if args.file == "-":
                onnx = sys.stdin.buffer.read()
            else:
                with open(args.file, "rb") as f:
                    onnx = f.read()
            report = c.deploy_model(args.name, onnx, args.features)
        elif cmd == "get":
            report = c.get_model(args.name)
        elif cmd == "delete":
            report = c.delete_model(args.name)
        else:  # list
            reports = c.list_models()
            if args.json:
                _print_json([_report_dict(r) for r in reports])
            else:
                print(_models_table(reports))
            return EXIT_OK
    if args.json:
        _print_json(_report_dict(report))
    else:
        print(_report_text(report))
    return EXIT_OK


# ----------------------------------------------------------------------------- model views

CURVE_PRECISIONS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


class _TrainProgressBar:
    """A tqdm bar over the training phases (on stderr, so stdout stays the report)."""

    def __init__(self, disable: bool = False):
        from engine.server._models import PHASES

        self.phases = PHASES
        self._disable = disable
        self._bar = None

    def __enter__(self) -> "_TrainProgressBar":
        if not self._disable:
            from tqdm import tqdm

            self._bar = tqdm(total=len(self.phases), file=sys.stderr, unit="phase", mininterval=0,
                             bar_format="{desc:<20} {bar:30} {n_fmt}/{total_fmt} [{elapsed}]")
        return self

    def phase(self, name: str) -> None:
        if self._bar is None:
            return
        done = self.phases.index(name) if name in self.phases else self._bar.n
        self._bar.set_description_str(f"training: {name}", refresh=False)
        if done > self._bar.n:
            self._bar.update(done - self._bar.n)
        else:
            self._bar.refresh()

    def __exit__(self, exc_type, *exc) -> None:
        if self._bar is not None:
            if exc_type is None:
                self._bar.set_description_str("training: done", refresh=False)
                self._bar.update(len(self.phases) - self._bar.n)
            self._bar.close()


def _report_dict(report) -> dict:
    return report.to_dict()


def _duration(ms: int) -> str:
    """Milliseconds in the largest whole unit up to days, as people wrote them: 7d, 36h."""
    from engine._units import UNIT_MS

    ms = int(ms)
    for unit in ("d", "h", "m", "s"):
        if ms and ms % UNIT_MS[unit] == 0:
            return f"{ms // UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


def _utc(ms: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _curve_rows(report) -> list[tuple]:
    """(precision level, the curve point of its lowest threshold or None)."""
    from scoring.spec import threshold_for

    rows = []
    for level in CURVE_PRECISIONS:
        t = threshold_for(report.curve, level)
        point = None if t is None else next((p for p in report.curve if p.threshold == t), None)
        rows.append((level, point))
    return rows


def _report_text(report) -> str:
    """A model's report as people read it: what it predicts, how well, and the curve."""
    r = report
    if r.target_segment:
        what = f"lookalike of segment {r.target_segment!r}"
    elif r.target:
        what = (f"{'no ' if r.churn else ''}{r.target} within {_duration(r.horizon_ms)}"
                + (" (churn)" if r.churn else ""))
    else:
        what = "user-supplied ONNX model"
    lines = [f"model {r.name}  version {r.version}  ({r.algorithm}, {_utc(r.trained_ms)})",
             f"  predicts      {what}"]
    if r.algorithm != "onnx":
        lines += [
            f"  lookback      {_duration(r.lookback_ms)}, features as of {_utc(r.cutoff_ms)}",
            f"  population    {r.rows:,} users, {r.positives:,} positive "
            f"(base rate {r.base_rate:.1%})",
            f"  validation    {r.validation_rows:,} users, {r.validation_positives:,} positive: "
            f"AUC {r.auc:.4f}, calibration error {r.calibration_error:.4f}",
            f"  forecast      {r.predicted_positives:,.1f} expected positives on validation "
            f"(actual {r.validation_positives:,})"]
        if r.candidates:
            lines.append("  candidates    " + ", ".join(
                f"{k} AUC {v:.4f}" for k, v in sorted(r.candidates.items())))
    lines.append(f'  buckets       high >= {r.bucket_high:g}, medium >= {r.bucket_medium:g}')
    lines.append(f"  features      {len(r.features)}")
    lines += [f"    {i + 1:>3}. {f}" for i, f in enumerate(r.features)]
    if not r.curve:
        lines.append('\nno validation curve (a user-supplied model): use score() or bucket()')
        return "\n".join(lines)
    lines += ["", f"  {'precision':>10}  {'threshold':>9}  {'achieved':>8}  {'recall':>6}  "
              f"{'users':>8}"]
    for level, p in _curve_rows(r):
        if p is None:
            lines.append(f"  {'>= ' + format(level, 'g'):>10}  {'unreachable':>9}")
        else:
            lines.append(f"  {'>= ' + format(level, 'g'):>10}  {p.threshold:9.4f}  "
                         f"{p.precision:8.3f}  {p.recall:6.3f}  {p.size:8,}")
    return "\n".join(lines)


def _models_table(reports) -> str:
    if not reports:
        return "no models"
    head = f"{'name':<24} {'version':>7} {'algorithm':<9} {'auc':>6} {'rows':>10}  trained"
    rows = [f"{r.name:<24} {r.version:>7} {r.algorithm:<9} {r.auc:6.3f} {r.rows:>10,}  "
            f"{_utc(r.trained_ms)}" for r in reports]
    return "\n".join([head, *rows])


def _run_operator(args) -> int:
    if args.command == "segment":
        return _run_segment(args)
    if args.command == "model":
        return _run_model(args)
    if args.command == "watch":
        return _run_watch(args)
    if args.command == "report":
        return _run_report(args)
    if args.command == "destination":
        return _run_destination(args)
    if args.command == "goal":
        return _run_goal(args)
    if args.command in ("ingest", "traits"):
        return _run_load(args)
    with _client(args) as c:
        if args.command == "user":
            _print_json(c.delete_user(args.user_id) if args.delete else c.get_user(args.user_id))
        elif args.command == "stats":
            _print_json(c.stats())
        elif args.command == "scale":
            _print_json(c.scale(args.shards))
        elif args.command == "rfm":
            _print_json(c.recompute_rfm())
        elif args.command == "clock":
            _print_json({"now_ms": c.advance_clock(args.now_ms)})
        elif args.command == "health":
            status = c.health()
            print(status)
            return EXIT_OK if status == "SERVING" else EXIT_ERROR
    return EXIT_OK


# ----------------------------------------------------------------------------- file loading


def _add_file_parsers(sub, client) -> None:
    from engine._files import DEFAULT_BATCH_ROWS, FORMATS

    files = argparse.ArgumentParser(add_help=False)
    g = files.add_argument_group("file")
    g.add_argument("file", metavar="FILE",
                   help='JSON lines or CSV, gzip too (a ".gz" name or the gzip magic bytes); '
                        '"-" reads stdin')
    g.add_argument("--format", choices=FORMATS, default=None,
                   help="default: from the name (.jsonl .ndjson .json / .csv .tsv), else from "
                        'the first byte ("{": JSON lines)')
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_ROWS, metavar="ROWS",
                   help=f"rows per columnar batch (default {DEFAULT_BATCH_ROWS:,})")
    g.add_argument("--map", dest="mapping", action="append", default=[], metavar="COL=FIELD",
                   help="rename a CSV column or JSON key first, e.g. --map uid=user_id (repeat)")
    g.add_argument("--delimiter", default=None, metavar="CHAR",
                   help="CSV field separator (default: a comma; a tab for .tsv)")
    g.add_argument("--csv-strings", action="store_true",
                   help="keep every CSV property or trait a string (default: numbers and "
                        "true/false become numbers and booleans)")
    g.add_argument("--rejections", default=None, metavar="FILE",
                   help='write every rejection to FILE as JSON lines {"line": N, "reason": ...}')
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    epilog = ("Prints a JSON summary (accepted, rejected, batches, seconds and the first 20 "
              "rejections with their 1-based line numbers). Exit status: 0 if every row was "
              "accepted, 1 if some were rejected (the rest is loaded) or the load stopped, "
              "2 on a usage error. See docs/files.md.")
    sub.add_parser("ingest", parents=[client, files], help="load events from a file",
                   epilog=epilog, description="Load events (user_id, type, timestamp_ms, "
                   "value, properties) from JSON lines or CSV into a running server. In CSV "
                   "every other column is a property.")
    sub.add_parser("traits", parents=[client, files], help="load trait updates from a file",
                   epilog=epilog, description="Load trait updates from JSON lines "
                   '({"user_id", "traits": {...}, "timestamp_ms"}) or CSV (user_id, optionally '
                   "timestamp_ms, one column per trait; an empty cell leaves the trait as it "
                   "is) into a running server.")


def _run_load(args) -> int:
    import contextlib

    from engine import _files

    prog = f"rtseg {args.command}"
    try:
        if args.batch_size < 1:
            raise _files.FileError(f"--batch-size must be at least 1, got {args.batch_size}")
        if args.delimiter is not None and len(args.delimiter) != 1:
            raise _files.FileError(f"--delimiter must be one character, got {args.delimiter!r}")
        mapping = _files.parse_mapping(args.mapping)
        source = _files.open_source(args.file)
    except _files.FileError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return EXIT_USAGE
    tsv = args.file.removesuffix(".gz").lower().endswith(".tsv")
    delimiter = args.delimiter or ("\t" if tsv else ",")
    with contextlib.ExitStack() as stack:
        stack.enter_context(source)
        c = stack.enter_context(_client(args))
        try:
            fmt = args.format or _files.detect_format(args.file, source.stream)
        except (OSError, EOFError) as err:          # e.g. a ".gz" file that is not gzip
            print(f"{prog}: cannot read {args.file}: {err}", file=sys.stderr)
            return EXIT_USAGE
        read = _files.event_batches if args.command == "ingest" else _files.trait_batches
        batches = read(source.stream, fmt, batch_rows=args.batch_size, mapping=mapping,
                       delimiter=delimiter, infer_types=not args.csv_strings)
        if args.command == "ingest":
            def send(batch, batch_id):
                return c.ingest_columns(**batch.columns(), batch_id=batch_id)
        else:
            def send(batch, batch_id):
                return c.set_traits_many(batch.updates, batch_id=batch_id)
        on_rejection = None
        if args.rejections:
            out = stack.enter_context(open(args.rejections, "w"))

            def on_rejection(r):
                out.write(json.dumps(r.to_dict()) + "\n")
        bar = stack.enter_context(_LoadProgress(source, args.command, disable=args.quiet))
        try:
            summary = _files.load(batches, send, on_rejection=on_rejection, on_batch=bar.batch)
        except _files.FileError as err:
            bar.close()
            print(f"{prog}: {err}", file=sys.stderr)
            return EXIT_USAGE
    _print_json(summary.to_dict())
    return EXIT_OK if summary.rejected == 0 and summary.error is None else EXIT_ERROR


class _LoadProgress:
    """A tqdm bar on stderr: by stored bytes read when the file's size is known, else rows."""

    def __init__(self, source, command: str, disable: bool = False):
        from tqdm import tqdm

        self._source = source
        self._bytes = source.size_bytes is not None
        self._bar = tqdm(total=source.size_bytes, file=sys.stderr, disable=disable,
                         desc=command, unit="B" if self._bytes else " rows",
                         unit_scale=True, unit_divisor=1024 if self._bytes else 1000)

    def batch(self, batch) -> None:
        step = (self._source.position() - self._bar.n if self._bytes
                else len(batch) + len(batch.rejections))
        if step > 0:
            self._bar.update(step)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "_LoadProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _export_to_file(c, name: str, path: str) -> dict:
    """Every member into ``path`` (written whole or not at all) -> a JSON-able summary."""
    from engine._files import FileError

    tmp = f"{path}.part-{os.getpid()}"
    count = 0
    try:
        with open(tmp, "w") as f:
            for uid in c.export_segment(name):
                f.write(uid + "\n")
                count += 1
        os.replace(tmp, path)
    except OSError as err:
        raise FileError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"segment": name, "members": count, "output": path}


def _run_goal(args) -> int:
    cmd = args.goal_command
    with _client(args) as c:
        if cmd == "create":
            end = args.end_ms
            if end is None:
                from engine._units import parse_duration_ms

                end = int(c.stats()["now_ms"]) + parse_duration_ms(args.within, "--within")
            _print_json(c.create_goal(args.name, args.segment, args.goal_target, end,
                                      args.control_fraction, args.minimize))
        elif cmd == "get":
            _print_json(c.get_goal(args.name))
        elif cmd == "list":
            _print_json([dataclasses.asdict(g) for g in c.list_goals()])
        elif cmd == "delete":
            _print_json(c.delete_goal(args.name))
    return EXIT_OK


def _run_report(args) -> int:
    out = args.out or f"{args.report_command}-{args.name}.png"
    with _client(args) as c:
        if args.report_command == "segment":
            from engine._reports import write_segment_report

            result = write_segment_report(c, args.name, out)
        else:
            from engine._goal_report import write_goal_report

            result = write_goal_report(c, args.name, out)
    _print_json(result if isinstance(result, dict) else {"goal": args.name, "out": str(result or out)})
    return EXIT_OK


def _add_destination_parser(sub, client) -> None:
    d = sub.add_parser("destination", help="webhook destinations: deltas POSTed to a URL",
                       description="POST the deltas of chosen segments to a URL in signed JSON "
                       "batches, at least once, with retries; each destination resumes from its "
                       "last acknowledged sequence after a restart. See docs/webhooks.md.")
    dsub = d.add_subparsers(dest="destination_command", metavar="ACTION")
    dsub.required = True
    c = dsub.add_parser("create", parents=[client], help="start delivering (from now on)")
    c.add_argument("name")
    c.add_argument("url", help="http:// or https:// URL that receives the POSTs")
    c.add_argument("--segments", default="", metavar="A,B",
                   help="comma-separated segments whose deltas it gets (default: all)")
    c.add_argument("--secret", default="",
                   help="HMAC-SHA256 key of X-Rtseg-Signature (default: generated; printed once)")
    c.add_argument("--batch-size", type=int, default=0, metavar="N",
                   help="deltas per POST at most (default 500)")
    c.add_argument("--max-wait-ms", type=int, default=0, metavar="MS",
                   help="a partial batch goes after this long (default 200)")
    c.add_argument("--timeout-ms", type=int, default=0, metavar="MS",
                   help="of one POST (default 10000)")
    dsub.add_parser("list", parents=[client], help="every destination: cursor, state, errors")
    dsub.add_parser("delete", parents=[client], help="stop delivering and forget it").add_argument("name")


def _run_destination(args) -> int:
    cmd = args.destination_command
    with _client(args) as c:
        if cmd == "create":
            segments = [s.strip() for s in args.segments.split(",") if s.strip()]
            _print_json(c.create_destination(args.name, args.url, segments, args.secret,
                                             args.batch_size, args.max_wait_ms, args.timeout_ms))
        elif cmd == "list":
            _print_json([dataclasses.asdict(d) for d in c.list_destinations()])
        elif cmd == "delete":
            _print_json(c.delete_destination(args.name))
    return EXIT_OK


def _add_mcp_parser(sub, client) -> None:
    m = sub.add_parser("mcp", parents=[client], help="an MCP server for AI assistants",
                       description="Serve the Model Context Protocol over stdio (default) or "
                       "streamable HTTP in front of a running rtseg server: tools to inspect "
                       "segments, preview expressions, look up users, read size history, models "
                       "and goals; with --allow-write also to create, replace and delete "
                       "segments. Calls time out after 60 s unless --timeout. See docs/mcp.md.")
    m.add_argument("--allow-write", action="store_true",
                   help="also offer create_segment, replace_segment and delete_segment")
    m.add_argument("--http", action="store_true",
                   help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (with "
                        "--token, requests must carry it as a bearer token)")
    m.add_argument("--host", default="127.0.0.1", help="with --http: address (default 127.0.0.1)")
    m.add_argument("--port", type=int, default=8000,
                   help="with --http: port (default 8000; 0 picks a free one)")


def _run_mcp(args) -> int:
    from engine.mcp import DEFAULT_CALL_TIMEOUT_S, serve

    if args.timeout is None:
        args.timeout = DEFAULT_CALL_TIMEOUT_S
    token = args.token or _env_default("RTSEG_TOKEN")
    with _client(args) as c:
        try:
            serve(c, allow_write=args.allow_write, http=args.http, host=args.host,
                  port=args.port, token=token)
        except KeyboardInterrupt:
            pass
        except OSError as err:   # e.g. the --port is taken
            print(f"rtseg mcp: {err}", file=sys.stderr)
            return EXIT_ERROR
    return EXIT_OK


def _add_console_parser(sub, client) -> None:
    c = sub.add_parser("console", parents=[client], help="the web console and /metrics of a "
                       "running server", description="Serve the web console (live segment "
                       "sizes, editor, users, models, goals) and /metrics for a server "
                       "elsewhere; rtseg serve runs the same console by itself. See "
                       "docs/console.md.")
    c.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    c.add_argument("--port", type=int, default=8080,
                   help="port (default 8080; 0 picks a free one)")


def _run_console(args) -> int:
    from engine.client import DEFAULT_TARGET
    from engine.web import run_console

    try:
        return run_console(args.server_address or _env_default("RTSEG_TARGET", DEFAULT_TARGET),
                           args.token or _env_default("RTSEG_TOKEN"), host=args.host,
                           port=args.port, tls_ca=args.tls_ca or _env_default("RTSEG_TLS_CA"))
    except KeyboardInterrupt:
        return EXIT_OK


def _run_bench(argv: list[str]) -> int:
    try:
        bench_cli = importlib.import_module("bench.cli")
    except ModuleNotFoundError as err:
        if err.name not in ("bench", "bench.cli"):
            raise
        print("rtseg bench: the bench package is not installed here", file=sys.stderr)
        return EXIT_USAGE
    return int(bench_cli.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _run_bench(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from engine.config import ServerConfig
        from engine.errors import ConfigError

        try:
            config = ServerConfig.load(args)
        except ConfigError as err:
            print(f"rtseg serve: {err}", file=sys.stderr)
            return EXIT_USAGE
        from engine.server import serve

        return serve(config)
    if args.command == "mcp":
        return _run_mcp(args)
    if args.command == "console":
        return _run_console(args)
    import grpc

    from engine.errors import EngineError

    try:
        return _run_operator(args)
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except grpc.RpcError as err:
        code = err.code().name if hasattr(err, "code") else "ERROR"
        print(f"error: {code}: {err.details() if hasattr(err, 'details') else err}",
              file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # e.g. `rtseg segment export x | head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
