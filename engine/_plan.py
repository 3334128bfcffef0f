"""Compilation of segment ASTs into the flat arrays the evaluation kernels run
(their layout: engine/kernels/_layout.py, whose column names build every row here). The whole plan is rebuilt whenever the set of
segments changes: compiling is cheap, and one plan keeps one kernel call per operation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import _values as V
from .errors import ExpressionError
from .expr import ast as A
from .expr._shape import eval_cost, operand_order
from .kernels import _eval as K
from .kernels import _layout as LY

_AGG_KIND = {"count": K.L_COUNT, "sum": K.L_SUM, "avg": K.L_AVG, "min": K.L_MIN, "max": K.L_MAX,
             "distinct": K.L_DISTINCT, "top_count": K.L_TOP, "active_days": K.L_DAYS,
             "affinity": K.L_AFF, "affinity_score": K.L_AFF_SCORE, "affinity_rank": K.L_AFF_RANK}
_CMP = {"==": K.OP_EQ, "!=": K.OP_NE, "<": K.OP_LT, "<=": K.OP_LE, ">": K.OP_GT, ">=": K.OP_GE}
_ARITH = {"+": K.OP_ADD, "-": K.OP_SUB, "*": K.OP_MUL, "/": K.OP_DIV}


class ShardSchema:
    """What the compiler needs from a shard: ids for event types, arena columns for
    properties, trait columns and string codes (creating them when first named)."""

    def type_id(self, name: str) -> int: ...
    def column(self, type_id: int, prop: str) -> int: ...
    def trait_col(self, name: str) -> int: ...
    def string_code(self, s: str) -> int: ...
    def model(self, name: str) -> "ModelColumns": ...
    def rfm_bounds(self, key: str) -> list[float]: ...   # 12 numbers, or [] if not computed


class ModelColumns:
    """What a shard tells the compiler about a deployed model: the trait column that holds
    its scores, its bucket cut-offs and its precision thresholds."""

    score_trait: str
    bucket_high: float
    bucket_medium: float

    def threshold(self, precision: float) -> float: ...


@dataclass
class Plan:
    names: list[str]            # plan index -> segment name (dependencies first)
    seg_tab: np.ndarray         # int64[nseg, SEG_NCOLS]: one row per segment (kernels/_layout.py)
    dep_list: np.ndarray        # int64[]: plan indices of referenced segments (SEG_DOFF/SEG_DLEN)
    prog: np.ndarray            # int64[n, PROG_NCOLS]: the segments' postfix programs
    consts: np.ndarray          # float64[]: boxed constants
    leaves: np.ndarray          # int64[n, LEAF_NCOLS]: one row per aggregate call
    steps: np.ndarray           # int64[n, STEP_NCOLS]: the steps of sequence calls
    fprog: np.ndarray           # int64[n, PROG_NCOLS]: where-filter programs over one event

    @staticmethod
    def empty() -> "Plan":
        z4 = np.zeros((0, LY.PROG_NCOLS), np.int64)
        return Plan([], np.zeros((0, LY.SEG_NCOLS), np.int64), np.zeros(0, np.int64), z4, np.zeros(0),
                    np.zeros((0, LY.LEAF_NCOLS), np.int64), np.zeros((0, LY.STEP_NCOLS), np.int64), z4)

    def index(self, name: str) -> int:
        return self.names.index(name)


class _Compiler:
    def __init__(self, schema: ShardSchema):
        self.schema = schema
        self.prog: list[tuple[int, int, int, int]] = []
        self.fprog: list[tuple[int, int, int, int]] = []
        self.consts: list[float] = []
        self.leaves: list[tuple[int, ...]] = []
        self.steps: list[tuple[int, int, int]] = []
        self.const_index: dict[int, int] = {}
        self.cmp_hint = None
        self.zone_tables: dict[str, tuple[int, int]] = {}  # zone -> (first const, transitions)

    # -- constants ------------------------------------------------------------------------
    def box(self, value) -> float:
        if value is None:
            return V.NULL
        if isinstance(value, bool):
            return V.box_bool(value)
        if isinstance(value, str):
            return V.box_string_code(self.schema.string_code(value))
        return float(value) + 0.0

    def const(self, value) -> int:
        b = self.box(value)
        key = int(np.array([b]).view(np.int64)[0])
        if key not in self.const_index:
            self.const_index[key] = len(self.consts)
            self.consts.append(b)
        return self.const_index[key]

    def const_run(self, values) -> int:
        """Consecutive constants (for ``in`` lists and ``near``); returns the first index."""
        off = len(self.consts)
        self.consts.extend(self.box(v) for v in values)
        return off

    # -- one segment ----------------------------------------------------------------------
    def segment(self, tree, slot_of: Callable[[str], int]):
        self.slot_of = slot_of
        self.seg_leaves: list[int] = []
        self.evmask = 0
        self.trmask = 0
        self.timedep = False
        self.deps: set[str] = set()
        poff = len(self.prog)
        loff = len(self.leaves)
        self.depth = 0
        self.max_depth = 0
        self.expr(tree)
        if self.max_depth > K.MAX_STACK:
            line, col = getattr(tree, "line", 1), getattr(tree, "col", 1)
            raise ExpressionError(line, col, f"expression too deeply nested (needs a stack of "
                                  f"{self.max_depth}, at most {K.MAX_STACK})")
        return poff, len(self.prog) - poff, loff, len(self.leaves) - loff

    def emit(self, op, a1=0, a2=0, a3=0, push=0):
        self.prog.append(_prog_row(op, a1, a2, a3))
        self.depth += push
        self.max_depth = max(self.max_depth, self.depth)

    def expr(self, n):
        if isinstance(n, A.Literal):
            self.emit(K.OP_CONST, self.const(n.value), push=1)
        elif isinstance(n, A.Neg) and isinstance(n.operand, A.Literal) and n.operand.kind == "number":
            self.emit(K.OP_CONST, self.const(-n.operand.value), push=1)
        elif isinstance(n, A.TraitRef):
            self.emit(K.OP_TRAIT, self.trait(n.name), push=1)
        elif isinstance(n, A.Neg):
            self.expr(n.operand)
            self.emit(K.OP_NEG)
        elif isinstance(n, A.Not):
            self.expr(n.operand)
            self.emit(K.OP_NOT)
        elif isinstance(n, A.Arith):
            self.expr(n.left)
            self.expr(n.right)
            self.emit(_ARITH[n.op], push=-1)
        elif isinstance(n, A.Compare):
            self.cmp_hint = _threshold_hint(n)
            self.expr(n.left)
            self.expr(n.right)
            self.emit(_CMP[n.op], push=-1)
        elif isinstance(n, A.In):
            self.expr(n.operand)
            off = self.const_run([it.value for it in n.items])
            self.emit(K.OP_IN, off, len(n.items), int(n.negated))
        elif isinstance(n, A.Between):
            self.expr(n.operand)
            self.expr(n.low)
            self.expr(n.high)
            self.emit(K.OP_BETWEEN, push=-2)
        elif isinstance(n, A.BoolOp):
            self.bool_op(n)
        elif isinstance(n, A.Aggregate):
            t = self.event_type(n.source.event)
            col = self.schema.column(t, n.source.prop) if n.source.prop else 0
            foff, flen = self.filter(n.source, t)
            hint = self.cmp_hint if self.cmp_hint and self.cmp_hint[0] is n else None
            cop, cidx = (_CMP[hint[1]], self.const(hint[2])) if hint else (0, 0)
            soff, slen = self.aggregate_extra(n)
            self.leaf(_AGG_KIND[n.func], t, col, n.window_ms, foff, flen, soff, slen, cop=cop, cidx=cidx)
        elif isinstance(n, (A.Since, A.SinceFirst)):
            t = self.event_type(n.source.event)
            foff, flen = self.filter(n.source, t)
            self.leaf(K.L_SINCE if isinstance(n, A.Since) else K.L_SINCE_FIRST, t, 0, 0, foff, flen)
        elif isinstance(n, A.Sequence):
            soff = len(self.steps)
            for step in n.steps:
                t = self.event_type(step.event)
                foff, flen = self.filter(step, t)
                self.steps.append(_step_row(t, foff, flen))
            self.leaf(K.L_SEQ, 0, 0, n.window_ms, 0, 0, soff, len(n.steps))
        elif isinstance(n, A.TraitTime):
            self.timedep = True
            self.emit(K.OP_TRAIT_TIME, self.trait(n.name), 1 if n.func == "since" else -1, push=1)
        elif isinstance(n, A.ExistsTrait):
            self.emit(K.OP_EXISTS_TRAIT, self.trait(n.name), push=1)
        elif isinstance(n, A.Near):
            off = self.const_run([n.lat, n.lon, n.distance_m])
            self.emit(K.OP_NEAR, off, self.trait("lat"), self.trait("lon"), push=1)
        elif isinstance(n, A.SegmentRef):
            self.deps.add(n.name)
            self.emit(K.OP_SEG, self.slot_of(n.name), push=1)
        elif isinstance(n, A.ModelCall):
            self.model_call(n)
        elif isinstance(n, A.Rfm):
            self.rfm(n)
        else:
            line, col = getattr(n, "line", 1), getattr(n, "col", 1)
            raise ExpressionError(line, col, f"{type(n).__name__} cannot be evaluated by this engine version")

    def bool_op(self, n: A.BoolOp) -> None:
        """``and`` / ``or``: the operands cheapest first (``operand_order``), each but the last
        followed by an ``OP_SKIP`` when the operands read events at all (the last, dearest
        one costs something: ``eval_cost``). An and/or's value and next change do not depend
        on its operands' order (``_program``), and an operand that decides it and cannot
        change by time alone decides it exactly: the skipped operands' leaves are never
        evaluated, and the result is the same value with the same time."""
        ops = operand_order(n)
        is_and = n.op == "and"
        skip = eval_cost(ops[-1]) > 0
        skips = []                    # (pc of the OP_SKIP, operands on the stack there)
        for k, o in enumerate(ops):
            self.expr(o)
            if skip and k + 1 < len(ops):
                skips.append((len(self.prog), k + 1))
                self.emit(K.OP_SKIP)
        self.emit(K.OP_AND if is_and else K.OP_OR, len(ops), push=1 - len(ops))
        for pc, on_stack in skips:    # each jumps to just past the and/or
            self.prog[pc] = _prog_row(K.OP_SKIP, len(self.prog) - pc - 1, on_stack, int(is_and))

    def model_call(self, n: A.ModelCall) -> None:
        """A model's score is a hidden trait column that the shard writes after scoring, so a
        re-scored user is re-evaluated like a user whose trait changed."""
        m = self.schema.model(n.model)
        if m is None:
            raise ExpressionError(n.line, n.col, f'unknown model "{n.model}": train or deploy it first')
        self.emit(K.OP_TRAIT, self.trait(m.score_trait), push=1)
        if n.func == "bucket":
            self.emit(K.OP_BUCKET, self.const_run([m.bucket_high, m.bucket_medium, "high", "medium", "low"]))
        elif n.func == "likely":
            try:
                t = m.threshold(n.precision)
            except ValueError as err:
                raise ExpressionError(n.line, n.col, str(err)) from None
            self.emit(K.OP_CONST, self.const(t), push=1)
            self.emit(K.OP_GE, push=-1)

    def rfm(self, n: A.Rfm) -> None:
        """An rfm call: a count leaf (who is in the population), the metric's leaf, then
        OP_RFM against the source's boundaries, constants of the plan (engine/_rfm.py)."""
        from . import _rfm as R

        bounds = list(self.schema.rfm_bounds(R.key_of(n)) or [])
        if not R.finite(bounds):
            bounds = [None] * R.N_BOUNDS
        src = R.source_of(n)
        mode = R.MODES[n.func]
        self.expr(A.Aggregate("count", src, n.window_ms))
        if mode == R.RFM_F:
            self.emit(K.OP_RFM, self.const_run(bounds[4:8]), mode)
            return
        if mode == R.RFM_M:
            self.expr(A.Aggregate("sum", A.EventSource(src.event, "value", src.filter), n.window_ms))
            consts = bounds[8:12]
        elif mode == R.RFM_R:
            self.expr(A.Since(src))
            consts = bounds[0:4]
        else:
            self.expr(A.Since(src))
            consts = bounds[0:8] + list(R.TIERS)
        self.emit(K.OP_RFM, self.const_run(consts), mode, push=-1)

    def aggregate_extra(self, n: A.Aggregate) -> tuple[int, int]:
        """The leaf's ``LEAF_AUX, LEAF_AUX_LEN`` cells, unused by aggregates otherwise: for
        affinity_score/affinity_rank the constant index of VALUE (and 0); for active_days with
        a time zone the first constant of the zone's offset table and its number of
        transitions (``slen`` instants in ms, then ``slen`` UTC offsets in ms)."""
        if n.value is not None:
            return self.const(n.value.value), 0
        if n.zone is None:
            return 0, 0
        tables = self.zone_tables
        if n.zone not in tables:
            from .expr._zones import transitions

            try:
                starts, offs = transitions(n.zone)
            except KeyError:
                raise ExpressionError(n.zone_line or n.line, n.zone_col or n.col,
                                      f'unknown time zone "{n.zone}"') from None
            first = [float(x) for x in starts]
            first[0] = -math.inf
            tables[n.zone] = (self.const_run(first + [float(x) for x in offs]), len(starts))
        return tables[n.zone]

    def trait(self, name: str) -> int:
        c = self.schema.trait_col(name)
        self.trmask |= 1 << (c & 63)
        return c

    def event_type(self, name: str) -> int:
        t = self.schema.type_id(name)
        self.evmask |= 1 << (t & 63)
        self.timedep = True
        return t

    def leaf(self, kind, t, col, window, foff, flen, soff=0, slen=0, cop=0, cidx=0):
        q = len(self.leaves) - self._loff  # leaf index relative to the segment's first
        row = [0] * LY.LEAF_NCOLS
        row[LY.LEAF_KIND], row[LY.LEAF_TYPE], row[LY.LEAF_COL], row[LY.LEAF_WINDOW] = kind, t, col, window
        row[LY.LEAF_FOFF], row[LY.LEAF_FLEN], row[LY.LEAF_AUX], row[LY.LEAF_AUX_LEN] = foff, flen, soff, slen
        row[LY.LEAF_CMP_OP], row[LY.LEAF_CMP_CONST] = cop, cidx
        self.leaves.append(tuple(row))
        self.emit(K.OP_LEAF, q, push=1)

    # -- filters --------------------------------------------------------------------------
    def filter(self, source: A.EventSource, t: int) -> tuple[int, int]:
        if source.filter is None:
            return 0, 0
        off = len(self.fprog)
        self.fdepth = 0
        self.fexpr(source.filter, t)
        return off, len(self.fprog) - off

    def femit(self, op, a1=0, a2=0, a3=0):
        self.fprog.append(_prog_row(op, a1, a2, a3))

    def foperand(self, n, t):
        if isinstance(n, A.PropRef):
            self.femit(K.OP_PROP, self.schema.column(t, n.name))
        elif isinstance(n, A.Literal):
            self.femit(K.OP_CONST, self.const(n.value))
        elif isinstance(n, A.Neg) and isinstance(n.operand, A.Literal) and n.operand.kind == "number":
            self.femit(K.OP_CONST, self.const(-n.operand.value))
        else:
            self.fexpr(n, t)

    def fexpr(self, n, t):
        if isinstance(n, A.Compare):
            self.foperand(n.left, t)
            self.foperand(n.right, t)
            self.femit(_CMP[n.op])
        elif isinstance(n, A.In):
            self.foperand(n.operand, t)
            off = self.const_run([it.value for it in n.items])
            self.femit(K.OP_IN, off, len(n.items), int(n.negated))
        elif isinstance(n, A.Between):
            self.foperand(n.operand, t)
            self.foperand(n.low, t)
            self.foperand(n.high, t)
            self.femit(K.OP_BETWEEN)
        elif isinstance(n, A.BoolOp):
            for o in n.operands:
                self.fexpr(o, t)
            self.femit(K.OP_AND if n.op == "and" else K.OP_OR, len(n.operands))
        elif isinstance(n, A.Not):
            self.fexpr(n.operand, t)
            self.femit(K.OP_NOT)
        elif isinstance(n, A.ExistsProp):
            self.femit(K.OP_EXISTS_PROP, self.schema.column(t, n.name))
        elif isinstance(n, (A.PropRef, A.Literal, A.Neg)):
            # a bare property or literal used as a condition: true only if it is boolean true
            self.foperand(n, t) if not isinstance(n, A.Neg) else self.fexpr(n.operand, t)
            self.femit(K.OP_CONST, self.const(True))
            self.femit(K.OP_EQ)
        else:
            line, col = getattr(n, "line", 1), getattr(n, "col", 1)
            raise ExpressionError(line, col, f"{type(n).__name__} is not allowed in a where filter")


_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_THRESHOLD_FUNCS = ("count", "sum", "avg", "distinct", "top_count", "active_days")


def _number(n) -> float | None:
    if isinstance(n, A.Literal) and n.kind == "number":
        return float(n.value)
    if isinstance(n, A.Neg) and isinstance(n.operand, A.Literal) and n.operand.kind == "number":
        return -float(n.operand.value)
    return None


def _threshold_hint(n: A.Compare):
    """``(aggregate node, op, constant)`` when a comparison is ``aggregate op number`` (either
    way round), or ``affinity(...) == "string"``: its leaf can then schedule its timer at the
    first window departure that may flip the comparison, instead of at every departure (or
    every change of the top value). (Not ``!=``: a top that changes between a string and a
    number flips ``!=``, since values of different kinds compare false.)"""
    for agg, other, op in ((n.left, n.right, n.op), (n.right, n.left, _FLIP[n.op])):
        if isinstance(agg, A.Aggregate) and agg.func in _THRESHOLD_FUNCS:
            c = _number(other)
            if c is not None:
                return agg, op, c
        if (isinstance(agg, A.Aggregate) and agg.func == "affinity" and op == "=="
                and isinstance(other, A.Literal) and other.kind == "string"):
            return agg, op, other.value
    return None


def build_plan(defs, schema: ShardSchema, slot_of: Callable[[str], int]) -> Plan:
    """Compile segment definitions (dependencies first) into one plan."""
    c = _Compiler(schema)
    rows = []
    names = [d.name for d in defs]
    pos = {n: i for i, n in enumerate(names)}
    dep_list: list[int] = []
    timedep: dict[str, bool] = {}
    for d in defs:
        c._loff = len(c.leaves)
        poff, plen, loff, llen = c.segment(d.ast, slot_of)
        td = c.timedep or any(timedep.get(x, False) for x in c.deps)
        timedep[d.name] = td
        doff = len(dep_list)
        dep_list.extend(pos[x] for x in sorted(c.deps) if x in pos)
        row = [0] * LY.SEG_NCOLS
        row[LY.SEG_POFF], row[LY.SEG_PLEN], row[LY.SEG_LOFF], row[LY.SEG_LLEN] = poff, plen, loff, llen
        row[LY.SEG_SLOT], row[LY.SEG_TIMEDEP] = slot_of(d.name), int(td)
        row[LY.SEG_EVMASK], row[LY.SEG_TRMASK] = _u64(c.evmask), _u64(c.trmask)
        row[LY.SEG_DOFF], row[LY.SEG_DLEN] = doff, len(dep_list) - doff
        rows.append(tuple(row))
    return Plan(
        names=names,
        seg_tab=np.array(rows, dtype=np.int64).reshape(-1, LY.SEG_NCOLS),
        dep_list=np.array(dep_list, dtype=np.int64),
        prog=np.array(c.prog, dtype=np.int64).reshape(-1, LY.PROG_NCOLS),
        consts=np.array(c.consts, dtype=np.float64),
        leaves=np.array(c.leaves, dtype=np.int64).reshape(-1, LY.LEAF_NCOLS),
        steps=np.array(c.steps, dtype=np.int64).reshape(-1, LY.STEP_NCOLS),
        fprog=np.array(c.fprog, dtype=np.int64).reshape(-1, LY.PROG_NCOLS),
    )


def build_value_plan(trees, schema: ShardSchema) -> Plan:
    """Compile numeric expressions (model features) into a plan whose programs the
    ``_values`` kernel evaluates; they may not reference segments."""
    class _Named:
        def __init__(self, i, tree):
            self.name, self.ast = f"\x00value{i}", tree

    named = [_Named(i, t) for i, t in enumerate(trees)]
    own = {d.name: i for i, d in enumerate(named)}

    def slot_of(name):
        if name in own:
            return own[name]
        raise ExpressionError(1, 1, f'segment("{name}") cannot be used in a model feature')

    return build_plan(named, schema, slot_of)


def _prog_row(op, a1, a2, a3) -> tuple:
    """One instruction of ``prog`` / ``fprog`` (columns PROG_*)."""
    row = [0] * LY.PROG_NCOLS
    row[LY.PROG_OP], row[LY.PROG_A1], row[LY.PROG_A2], row[LY.PROG_A3] = op, a1, a2, a3
    return tuple(row)


def _step_row(t, foff, flen) -> tuple:
    """One step of a ``sequence`` (columns STEP_*)."""
    row = [0] * LY.STEP_NCOLS
    row[LY.STEP_TYPE], row[LY.STEP_FOFF], row[LY.STEP_FLEN] = t, foff, flen
    return tuple(row)


def _u64(mask: int) -> int:
    """A 64-bit mask stored in an int64 cell (the kernel reinterprets it as uint64)."""
    mask &= (1 << 64) - 1
    return mask - (1 << 64) if mask >= (1 << 63) else mask
