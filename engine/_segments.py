"""Segment definitions: validated once (by the embedded engine or the gateway), then compiled
by every shard. The registry owns names, versions, dependencies and their order.

Everything a shard would refuse is refused here first (an error raised on a shard comes back
through Ray, where an ExpressionError does not survive the trip): the expression is bounded
by ``engine.limits.Limits`` and regrouped to fit the kernels' stack by ``compile_expression``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .errors import (EngineError, ExpressionError, Overloaded, SegmentExists, SegmentInUse,
                     UnknownSegment)
from .expr import ast as A
from .limits import DEFAULT_LIMITS, Limits

MAX_NAME_LEN = 200


@dataclass(frozen=True)
class SegmentDef:
    """A validated segment: its text, its AST and the segments it references."""

    name: str
    expression: str
    ast: A.Expr
    deps: tuple[str, ...]
    description: str = ""
    created_ms: int = 0
    version: int = 1
    models: tuple[str, ...] = ()


def _check_name(name: str, max_bytes: int = DEFAULT_LIMITS.max_name_bytes) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ExpressionError(1, 1, "a segment needs a non-empty name")
    if len(name) > MAX_NAME_LEN or any(ord(c) < 32 for c in name):
        raise ExpressionError(1, 1, f"segment name {name[:40]!r} is too long or has control characters")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ExpressionError(1, 1, f"segment name {name[:40]!r} is not valid Unicode text") from None
    if size > max_bytes:
        raise ExpressionError(1, 1, f"segment name {name[:40]!r} is {size} bytes long (UTF-8); at most "
                                    f"{max_bytes} (max_name_bytes)")


def _check_description(description, max_bytes: int) -> None:
    if description is None or description == "":
        return
    if not isinstance(description, str):
        raise ExpressionError(1, 1, f"a segment description is text, not {type(description).__name__}")
    try:
        size = len(description.encode("utf-8"))
    except UnicodeEncodeError:
        raise ExpressionError(1, 1, "the segment description is not valid Unicode text") from None
    if size > max_bytes:
        raise ExpressionError(1, 1, f"the segment description is {size} bytes long (UTF-8); at most "
                                    f"{max_bytes} (max_string_bytes)")


@dataclass
class SegmentRegistry:
    """Names → definitions, with the dependency checks of EXPRESSIONS.md."""

    retention_ms: int
    models: object = None      # ModelCatalog (engine._models): deployment(name) -> Deployment | None
    _defs: dict[str, SegmentDef] = field(default_factory=dict)
    limits: Limits | None = None   # None: the defaults
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def _limits(self) -> Limits:
        return self.limits or DEFAULT_LIMITS

    def validate(self, name: str, expression: str, description: str = "", *,
                 replacing: bool = False, now_ms: int | None = None) -> SegmentDef:
        """Parse, type-check and dependency-check without registering anything.

        Raises ExpressionError, SegmentExists, UnknownSegment, or Overloaded when a new
        segment would be one more than ``limits.max_segments``."""
        from .expr import compile_expression, segment_refs

        _check_name(name, self._limits.max_name_bytes)
        if not replacing and name in self._defs:
            raise SegmentExists(f"segment {name!r} already exists; use replace to change its expression")
        if replacing and name not in self._defs:
            raise UnknownSegment(f"segment {name!r} does not exist")
        most = self._limits.max_segments
        if not replacing and len(self._defs) >= most:
            raise Overloaded(f"the engine has {len(self._defs)} segments; at most {most} (max_segments): "
                             "delete one first")
        if not isinstance(expression, str):
            raise ExpressionError(1, 1, "the expression must be text")
        _check_description(description, self._limits.max_string_bytes)
        tree = compile_expression(expression, retention_ms=self.retention_ms, limits=self._limits)
        deps = sorted(segment_refs(tree))
        for node in _segment_ref_nodes(tree):
            if node.name not in self._defs:
                raise ExpressionError(node.line, node.col, f'unknown segment "{node.name}" in segment(...)')
            if node.name == name or name in self._closure(node.name):
                raise ExpressionError(node.line, node.col,
                                      f'segment("{node.name}") would make a cycle through "{name}"')
        models = self._check_models(tree)
        old = self._defs.get(name)
        created = old.created_ms if old else (now_ms if now_ms is not None else int(time.time() * 1000))
        return SegmentDef(name, expression, tree, tuple(deps), description or "", created,
                          (old.version + 1) if old else 1, models)

    def validate_expression(self, expression: str, now_ms: int | None = None) -> SegmentDef:
        """Validate an expression that is not (yet) a segment, for previews."""
        from .expr import compile_expression, segment_refs

        if not isinstance(expression, str):
            raise ExpressionError(1, 1, "the expression must be text")
        tree = compile_expression(expression, retention_ms=self.retention_ms, limits=self._limits)
        for node in _segment_ref_nodes(tree):
            if node.name not in self._defs:
                raise ExpressionError(node.line, node.col, f'unknown segment "{node.name}" in segment(...)')
        models = self._check_models(tree)
        return SegmentDef("\x00preview", expression, tree, tuple(sorted(segment_refs(tree))),
                          created_ms=now_ms or 0, models=models)

    def _check_models(self, tree) -> tuple[str, ...]:
        """Every model the expression uses must be deployed, and each ``likely`` precision
        level reachable on the model's validation curve."""
        from .expr import walk

        used = []
        for node in walk(tree):
            if not isinstance(node, A.ModelCall):
                continue
            dep = self.models.deployment(node.model) if self.models is not None else None
            if dep is None:
                raise ExpressionError(node.line, node.col,
                                      f'unknown model "{node.model}": train or deploy it first')
            if node.func == "likely":
                try:
                    dep.threshold(node.precision)
                except ValueError as err:
                    raise ExpressionError(node.line, node.col, str(err)) from None
            used.append(node.model)
        return tuple(sorted(set(used)))

    def model_users(self, model: str) -> list[str]:
        """Segments whose expressions use the model."""
        return sorted(n for n, d in self._defs.items() if model in d.models)

    def _closure(self, name: str) -> set[str]:
        """Every segment that ``name`` depends on, transitively."""
        seen: set[str] = set()
        stack = [name]
        while stack:
            d = self._defs.get(stack.pop())
            if d is None:
                continue
            for dep in d.deps:
                if dep not in seen:
                    seen.add(dep)
                    stack.append(dep)
        return seen

    def put(self, defn: SegmentDef) -> None:
        self._defs[defn.name] = defn
        self._derived.clear()

    def derived(self, key: str, build):
        """``build(definitions)`` -> a value computed from the definitions, kept until they
        change (the segment order and the RFM sources in use are asked on every round)."""
        try:
            return self._derived[key]
        except KeyError:
            value = self._derived[key] = build(self.all())
            return value

    def check_delete(self, name: str) -> SegmentDef:
        if name not in self._defs:
            raise UnknownSegment(f"segment {name!r} does not exist")
        users = sorted(n for n, d in self._defs.items() if name in d.deps)
        if users:
            raise SegmentInUse(f"segment {name!r} is used by {', '.join(users)}; delete or replace those first")
        return self._defs[name]

    def remove(self, name: str) -> SegmentDef:
        d = self.check_delete(name)
        del self._defs[name]
        self._derived.clear()
        return d

    def get(self, name: str) -> SegmentDef:
        try:
            return self._defs[name]
        except KeyError:
            raise UnknownSegment(f"segment {name!r} does not exist") from None

    def __contains__(self, name: str) -> bool:
        return name in self._defs

    def names(self) -> list[str]:
        return sorted(self._defs)

    def all(self) -> list[SegmentDef]:
        return [self._defs[n] for n in self.names()]


def _segment_ref_nodes(tree):
    from .expr import walk

    return [n for n in walk(tree) if isinstance(n, A.SegmentRef)]


def topological_order(defs: list[SegmentDef]) -> list[SegmentDef]:
    """Dependencies first; ties by name so the order is deterministic."""
    by_name = {d.name: d for d in defs}
    done: set[str] = set()
    out: list[SegmentDef] = []

    def visit(d: SegmentDef, path: tuple[str, ...]) -> None:
        if d.name in done:
            return
        if d.name in path:
            raise EngineError(f"dependency cycle through {d.name!r}")
        for dep in sorted(d.deps):
            if dep in by_name:
                visit(by_name[dep], path + (d.name,))
        done.add(d.name)
        out.append(d)

    for d in sorted(defs, key=lambda d: d.name):
        visit(d, ())
    return out
