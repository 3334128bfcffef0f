"""The segment expression language: parse, type-check and print expressions.

``compile_expression(text)`` is what the engine calls when a segment is created; ``parse``,
``check`` and ``unparse`` are its parts. The syntax tree is in ``engine.expr.ast``; the
language is described in docs/expressions.md.
"""

from __future__ import annotations

from engine.expr import ast
from engine.expr._check import check
from engine.expr._parser import parse
from engine.expr._shape import fit_plan
from engine.expr._unparse import event_types, segment_refs, strip_positions, trait_names, unparse, walk

__all__ = [
    "ast",
    "check",
    "compile_expression",
    "event_types",
    "parse",
    "segment_refs",
    "strip_positions",
    "trait_names",
    "unparse",
    "walk",
]


def compile_expression(text: str, *, retention_ms: int | None = None, allow_predictive: bool = False,
                       limits=None) -> ast.Expr:
    """Parse and type-check a segment expression; the result is a condition.

    Raises ExpressionError ("line:col: message") on the first problem, for any text.
    ``limits`` (``engine.limits.Limits``, default: the defaults) bounds its length, depth and
    names. The tree is the parsed one, except that and/or chains too wide for the evaluation
    kernels' stack are regrouped into nested chains (``_shape.fit_plan``).
    """
    expr = parse(text, limits=limits)
    check(expr, retention_ms=retention_ms, allow_predictive=allow_predictive)
    return fit_plan(expr)
