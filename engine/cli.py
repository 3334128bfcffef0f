"""``rtseg``: serve the engine, and operate a running server.

    rtseg serve [--shards N --clock wall|event ...]       start a server (flags or RTSEG_*)
    rtseg segment create|replace|get|list|delete|preview|export ...
    rtseg user ID [--delete]
    rtseg watch [SEGMENT ...] [--after SEQ]
    rtseg stats
    rtseg scale --shards N
    rtseg clock NOW_MS                                     (event clock only)
    rtseg health
    rtseg bench ...                                        (the bench/ package, when present)

Every operator command takes ``--target`` (``RTSEG_TARGET``), ``--token`` (``RTSEG_TOKEN``)
and ``--tls-ca`` (``RTSEG_TLS_CA``). Results are printed as JSON; ``watch`` prints one JSON
object per delta and ``segment export`` one user id per line.
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


def _client_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    g.add_argument("--target", default=None, metavar="HOST:PORT",
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

    sub.add_parser("stats", parents=[client], help="engine statistics (JSON)")
    scale = sub.add_parser("scale", parents=[client], help="change the number of shards live")
    scale.add_argument("--shards", type=int, required=True, metavar="N")
    clock = sub.add_parser("clock", parents=[client], help="advance the event clock")
    clock.add_argument("now_ms", type=int)
    sub.add_parser("health", parents=[client], help="the server's health status")
    sub.add_parser("bench", add_help=False, help="benchmarks (the bench package)")
    return parser


def _client(args):
    from engine.client import DEFAULT_TARGET, Client

    target = args.target or _env_default("RTSEG_TARGET", DEFAULT_TARGET)
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


def _run_operator(args) -> int:
    if args.command == "segment":
        return _run_segment(args)
    if args.command == "watch":
        return _run_watch(args)
    with _client(args) as c:
        if args.command == "user":
            _print_json(c.delete_user(args.user_id) if args.delete else c.get_user(args.user_id))
        elif args.command == "stats":
            _print_json(c.stats())
        elif args.command == "scale":
            _print_json(c.scale(args.shards))
        elif args.command == "clock":
            _print_json({"now_ms": c.advance_clock(args.now_ms)})
        elif args.command == "health":
            status = c.health()
            print(status)
            return EXIT_OK if status == "SERVING" else EXIT_ERROR
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
