"""The thin servicer of ``rtseg.v1.SegmentEngine``: messages in, gateway calls, messages out.

Errors from the engine are turned into status codes by ``_errors.abort_with`` (one place).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import time

import grpc

from engine._pb import pb, pb_grpc
from engine.server import _codec as codec
from engine.server._errors import abort_with
from engine._deltas import CAUSE_NUMBERS, KIND_NUMBERS
from engine._engine import IngestResult
from engine.server._gateway import Gateway

log = logging.getLogger("rtseg.servicer")

EXPORT_PAGE = 1000
STREAM_WINDOW = 8            # IngestStream: batches queued before the oldest is answered
START_SEQUENCE_KEY = "rtseg-start-sequence"
TRAIT_DECODE_PIECE = 1024    # SetTraits: updates decoded between two turns of the event loop


def _unary(fn):
    """Map engine errors of a unary handler to status codes."""

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            self.gw.check_ready()
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            if _is_internal(exc):
                log.exception("%s failed", fn.__name__)
            await abort_with(context, exc)

    return wrapper


def _is_internal(exc: BaseException) -> bool:
    from engine.errors import EngineError

    return not isinstance(exc, (EngineError, ValueError, TypeError))


async def decode_trait_updates(updates) -> list[tuple[str, dict, int | None]]:
    """``TraitUpdate`` messages -> (user id, traits, timestamp or None), ``TRAIT_DECODE_PIECE``
    at a time with the event loop free between pieces: decoding is ~1 us per trait in Python
    (a batch of 20,000 users with 4 traits each: 70-200 ms), and reads and rounds must not
    wait for all of it."""
    out: list[tuple[str, dict, int | None]] = []
    for a in range(0, len(updates), TRAIT_DECODE_PIECE):
        if a:
            await asyncio.sleep(0)
        out.extend((u.user_id, {k: codec.value_from_pb(v) for k, v in u.traits.items()},
                    u.timestamp_ms or None) for u in updates[a:a + TRAIT_DECODE_PIECE])
    return out


def _segment_pb(d: dict) -> "pb.Segment":
    return pb.Segment(name=d["name"], expression=d["expression"], description=d["description"],
                      size=d["size"], created_ms=d["created_ms"], version=d["version"])


def _reply(res: IngestResult, index_offset: int = 0) -> "pb.IngestReply":
    return pb.IngestReply(
        accepted=res.accepted, rejected=res.rejected, now_ms=res.now_ms,
        rejections=[pb.Rejection(index=r.index + index_offset, reason=r.reason)
                    for r in res.rejections])


def _user_view_pb(user_id: str, view: dict) -> "pb.UserView":
    out = pb.UserView(user_id=user_id, known=view["known"], segments=view["segments"])
    for name, score in view["scores"].items():
        if score is not None and not math.isnan(score):
            out.scores[name] = float(score)
    for name, value in view["traits"].items():
        if value is not None:
            codec.value_to_pb(value, out.traits[name])
    return out


def _encode_page(page) -> bytes:
    """A ``_subscriptions.Page`` -> an encoded DeltaPage, straight from the log's columns
    (kind and cause numbers are the proto's)."""
    msg = pb.DeltaPage()
    add = msg.deltas.add
    for first, batch, rows in page.parts:
        segs, users = batch.segments, batch.user_ids
        kind, at, cause = page.log.columns_of(batch)
        for j in rows:
            add(sequence=first + j, segment=segs[j], user_id=users[j], kind=kind[j], at_ms=at[j],
                cause=cause[j])
    return msg.SerializeToString()


def delta_pb(d) -> "pb.Delta":
    return pb.Delta(sequence=d.sequence, segment=d.segment, user_id=d.user_id,
                    kind=KIND_NUMBERS.get(d.kind, 0), at_ms=d.at_ms,
                    cause=CAUSE_NUMBERS.get(d.cause, 0))


class SegmentEngineServicer(pb_grpc.SegmentEngineServicer):
    def __init__(self, gateway: Gateway):
        self.gw = gateway

    # ------------------------------------------------------------------ ingestion

    @_unary
    async def Ingest(self, request, context):
        return _reply(await self.gw.ingest(codec.batch_to_columns(request, self.gw.limits),
                                           request.batch_id))

    @_unary
    async def IngestStream(self, request_iterator, context):
        """Batches are queued as they arrive (up to STREAM_WINDOW unanswered), so consecutive
        batches of one stream share micro-batch rounds; they are applied in stream order."""
        total = pb.IngestReply(now_ms=self.gw.now_ms)
        pending: collections.deque = collections.deque()

        async def settle_one():
            task, offset = pending.popleft()
            part = _reply(await task, offset)
            total.accepted += part.accepted
            total.rejected += part.rejected
            total.rejections.extend(part.rejections)
            total.now_ms = part.now_ms

        offset = 0
        index = 0
        try:
            async for batch in request_iterator:
                try:
                    cols = codec.batch_to_columns(batch, self.gw.limits)
                except Exception as exc:  # noqa: BLE001 - refused whole; say what came before
                    while pending:
                        await settle_one()
                    text = (f"message {index} of the stream was refused: {exc}; the {index} "
                            f"message(s) before it were applied ({total.accepted} events accepted, "
                            f"{total.rejected} rejected): resend from message {index}")
                    try:
                        refused = type(exc)(text)
                    except Exception:  # noqa: BLE001 - a class with another signature
                        refused = ValueError(text)
                    raise refused from None
                pending.append((asyncio.ensure_future(self.gw.ingest(cols, batch.batch_id)), offset))
                offset += len(cols["timestamp_ms"])
                index += 1
                while len(pending) >= STREAM_WINDOW:
                    await settle_one()
            while pending:
                await settle_one()
        finally:
            for task, _ in pending:     # the caller went away: queued batches still apply
                task.cancel()
        return total

    @_unary
    async def SetTraits(self, request, context):
        updates = await decode_trait_updates(request.updates)
        return _reply(await self.gw.set_traits(updates, request.batch_id))

    # ------------------------------------------------------------------ segments

    @_unary
    async def CreateSegment(self, request, context):
        return _segment_pb(await self.gw.create_segment(
            request.name, request.expression, request.description))

    @_unary
    async def ReplaceSegment(self, request, context):
        return _segment_pb(await self.gw.replace_segment(
            request.name, request.expression, request.description))

    @_unary
    async def GetSegment(self, request, context):
        return _segment_pb(await self.gw.get_segment(request.name))

    @_unary
    async def GetSegmentHistory(self, request, context):
        h = await self.gw.segment_history(request.name)
        return pb.SegmentHistory(name=h.name, interval_ms=h.interval_ms, retention_ms=h.retention_ms,
                                 samples=[pb.SizeSample(time_ms=t, size=s) for t, s in h.samples])

    @_unary
    async def ListSegments(self, request, context):
        return pb.SegmentList(segments=[_segment_pb(d) for d in await self.gw.list_segments()])

    @_unary
    async def DeleteSegment(self, request, context):
        return _segment_pb(await self.gw.delete_segment(request.name))

    @_unary
    async def PreviewSegment(self, request, context):
        size, sample = await self.gw.preview_segment(request.name, request.expression)
        return pb.Preview(size=size, sample_user_ids=sample)

    async def ExportSegment(self, request, context):
        try:
            self.gw.check_ready()
            parts = await self.gw.members(request.name)
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc)
            return
        for ids in parts:
            for k in range(0, len(ids), EXPORT_PAGE):
                yield pb.UserIdPage(user_ids=ids[k:k + EXPORT_PAGE])

    # ------------------------------------------------------------------ users

    @_unary
    async def GetUser(self, request, context):
        return _user_view_pb(request.user_id, await self.gw.user_view(request.user_id))

    @_unary
    async def DeleteUser(self, request, context):
        return _user_view_pb(request.user_id, await self.gw.delete_user(request.user_id))

    # ------------------------------------------------------------------ deltas, clock, stats

    async def _pages(self, request, context):
        self.gw.check_ready()
        start, stream = self.gw.open_subscription(
            list(request.segments), request.after_sequence, request.from_oldest,
            request.retained_only)
        await context.send_initial_metadata(((START_SEQUENCE_KEY, str(start)),))
        async for page in stream:
            yield page

    async def Subscribe(self, request, context):
        try:
            async for page in self._pages(request, context):
                for d in page:
                    yield delta_pb(d)
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc)

    async def SubscribePages(self, request, context):
        """Pages go out already encoded (``_app`` registers a serializer that passes bytes
        through): subscribers of the same segments share one encoding of each page."""
        encoded = self.gw.subscriptions.encoded
        try:
            async for page in self._pages(request, context):
                yield encoded(page, _encode_page)
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc)

    @_unary
    async def AdvanceClock(self, request, context):
        return pb.ClockReply(now_ms=await self.gw.advance_clock(request.now_ms,
                                                                request.allow_far_future))

    @_unary
    async def GetStats(self, request, context):
        st = await self.gw.stats(gateway_only=request.gateway_only)
        out = pb.Stats(
            events=st["events"], users=st["users"], segments=st["segments"],
            shards=st["shards"], now_ms=st["now_ms"], clock=st["clock"],
            events_accepted=st["events_accepted"], events_rejected=st["events_rejected"],
            ingest_events_per_s=st["ingest_events_per_s"],
            ingest_latency=pb.Latency(**st["ingest_latency"]),
            round_latency=pb.Latency(**st["round_latency"]),
            loop_lag=pb.Latency(**st["loop_lag"]),
            first_sequence=st["first_sequence"], last_sequence=st["last_sequence"],
            subscribers=st["subscribers"], uptime_ms=st["uptime_ms"],
            retention_ms=st["retention_ms"])
        if "log" in st:
            lg, rec = st["log"], st["recovery"]
            snap = rec.get("last_snapshot", {})
            out.durability.CopyFrom(pb.Durability(
                fsync=lg.get("fsync") or "", log_last_position=int(lg.get("last_lsn") or 0),
                log_bytes=int(lg.get("bytes_written") or 0),
                fsync_p99_ms=float(lg.get("fsync_p99_ms") or 0.0),
                snapshot_position=int(snap.get("lsn") or 0),
                snapshot_seconds=float(snap.get("seconds") or 0.0),
                recovery_seconds=float(rec.get("seconds") or 0.0),
                frames_replayed=int(rec.get("frames_replayed") or 0),
                restore_seconds=float(rec.get("restore_s") or 0.0),
                replay_seconds=float(rec.get("replay_s") or 0.0),
                snapshot_pause_seconds=float(rec.get("snapshot_pause_s") or 0.0),
                shard_restarts=int(rec.get("shard_restarts", 0))))
        for s in st["shard_stats"]:
            out.shard_stats.add(
                shard=s["shard"], slots=s["slots"], users=int(s.get("users", 0)),
                events=int(s.get("events", 0)), events_applied=int(s.get("events_applied", 0)),
                events_dropped=int(s.get("events_dropped", 0)),
                memory_bytes=int(s.get("memory_bytes", 0)), node=s.get("node", ""),
                apply_latency=pb.Latency(**s["apply_latency"]) if "apply_latency" in s else None)
        return out

    # ------------------------------------------------------------------ models

    @_unary
    async def TrainModel(self, request, context):
        return codec.report_to_pb(await self.gw.models.train(codec.spec_from_pb(request)))

    async def TrainModelStream(self, request, context):
        """TrainModel with a message as each phase starts; the last one has the report."""
        t0 = time.monotonic()
        phases: asyncio.Queue = asyncio.Queue()
        try:
            self.gw.check_ready()
            spec = codec.spec_from_pb(request)
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc)
            return
        task = asyncio.ensure_future(self.gw.models.train(spec, progress=phases.put_nowait))

        def progress(phase: str) -> "pb.TrainProgress":
            return pb.TrainProgress(phase=phase, elapsed_ms=int((time.monotonic() - t0) * 1000))

        while not task.done():
            getter = asyncio.ensure_future(phases.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield progress(getter.result())
            else:
                getter.cancel()
        while not phases.empty():
            yield progress(phases.get_nowait())
        try:
            report = task.result()
        except Exception as exc:  # noqa: BLE001
            if _is_internal(exc):
                log.exception("TrainModelStream failed")
            await abort_with(context, exc)
            return
        out = progress("done")
        codec.report_to_pb(report, out.report)
        yield out

    @_unary
    async def DeployModel(self, request, context):
        return codec.report_to_pb(await self.gw.models.deploy(
            request.name, request.onnx, tuple(request.features)))

    @_unary
    async def GetModel(self, request, context):
        return codec.report_to_pb(self.gw.models.get(request.name))

    @_unary
    async def ListModels(self, request, context):
        out = pb.ModelList()
        for report in self.gw.models.list():
            codec.report_to_pb(report, out.models.add())
        return out

    @_unary
    async def DeleteModel(self, request, context):
        return codec.report_to_pb(await self.gw.models.delete(request.name))

    @_unary
    async def Rescore(self, request, context):
        deltas, now = await self.gw.models.rescore()
        return pb.RescoreReply(deltas=deltas, now_ms=now)

    @_unary
    async def RecomputeRfm(self, request, context):
        res = await self.gw.rfm.recompute()
        return pb.RfmReply(boundaries=[pb.RfmBoundaries(**b) for b in res["boundaries"]],
                           deltas=res["deltas"], now_ms=res["now_ms"], seconds=res["seconds"])

    # ------------------------------------------------------------------ goals

    @_unary
    async def CreateGoal(self, request, context):
        from engine.server._goals import goal_to_pb

        return goal_to_pb(await self.gw.goals.create(
            request.name, request.segment, request.target, int(request.end_ms),
            float(request.control_fraction), bool(request.minimize)))

    @_unary
    async def GetGoal(self, request, context):
        from engine.server._goals import goal_to_pb

        return goal_to_pb(self.gw.goals.get(request.name))

    @_unary
    async def ListGoals(self, request, context):
        from engine.server._goals import goal_to_pb

        out = pb.GoalList()
        for info in self.gw.goals.list():
            goal_to_pb(info, out.goals.add())
        return out

    @_unary
    async def DeleteGoal(self, request, context):
        from engine.server._goals import goal_to_pb

        return goal_to_pb(await self.gw.goals.delete(request.name))

    # ------------------------------------------------------------------ webhook destinations

    @_unary
    async def CreateDestination(self, request, context):
        from engine.server._destinations import destination_to_pb

        return destination_to_pb(await self.gw.destinations.create(
            request.name, request.url, list(request.segments), request.secret,
            request.batch_size, request.max_wait_ms, request.timeout_ms))

    @_unary
    async def ListDestinations(self, request, context):
        from engine.server._destinations import destination_to_pb

        out = pb.DestinationList()
        for info in self.gw.destinations.list():
            destination_to_pb(info, out.destinations.add())
        return out

    @_unary
    async def DeleteDestination(self, request, context):
        from engine.server._destinations import destination_to_pb

        return destination_to_pb(await self.gw.destinations.delete(request.name))

    # ------------------------------------------------------------------ scaling, reset

    @_unary
    async def Scale(self, request, context):
        res = await self.gw.scale(int(request.shards))
        return pb.ScaleReply(**res)

    @_unary
    async def Reset(self, request, context):
        now = await self.gw.reset(request.clock or None, request.retention_ms or None,
                                  request.max_events_per_type or None)
        return pb.ResetReply(now_ms=now)


def add_to_server(servicer: SegmentEngineServicer, server) -> None:
    """Register the servicer as the generated stubs do, except that SubscribePages sends the
    bytes it yields as they are (its pages come encoded, shared by equal subscribers)."""
    class _Capture:
        def add_generic_rpc_handlers(self, handlers):
            pass

        def add_registered_method_handlers(self, service, handlers):
            self.service, self.handlers = service, handlers

    cap = _Capture()
    pb_grpc.add_SegmentEngineServicer_to_server(servicer, cap)
    handlers = dict(cap.handlers)
    old = handlers["SubscribePages"]
    handlers["SubscribePages"] = grpc.unary_stream_rpc_method_handler(
        servicer.SubscribePages, request_deserializer=old.request_deserializer,
        response_serializer=_bytes_or_message)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(cap.service, handlers),))
    server.add_registered_method_handlers(cap.service, handlers)


def _bytes_or_message(m) -> bytes:
    return m if isinstance(m, bytes) else m.SerializeToString()
