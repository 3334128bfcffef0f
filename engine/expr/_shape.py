"""The shape of a syntax tree: how deep it nests, how long its names are, and how much of
the evaluation kernels' value stack its compiled program needs.

``check_shape`` bounds a parsed tree by ``engine.limits.Limits`` (depth, name and string
sizes), so that every later pass (checker, compiler, pickling across Ray) can recurse over it
safely. ``fit_plan`` makes the tree fit the kernels' fixed stack: and/or chains are flattened
into one n-ary node by the parser, and one node of n operands needs n stack slots, so a wide
chain is regrouped into nested chains of at most ``GROUP`` operands (the same truth value:
and/or are associative, and null counts as false in both); what still does not fit is an
ExpressionError at creation instead of a failure on the shards.
"""

from __future__ import annotations

import dataclasses

from engine.errors import ExpressionError
from engine.expr import ast as A

# The evaluation kernels' value stack (engine.kernels._eval.MAX_STACK, for the segment program
# and for ``where`` filters alike); a test keeps the two equal. Not imported from there: the
# expression package does not load Numba.
PLAN_STACK = 64
GROUP = 8

_SPLIT_HINT = 'split it into segments and combine them with segment("NAME")'


def _pos(node) -> tuple[int, int]:
    return (getattr(node, "line", 0) or 1), (getattr(node, "col", 0) or 1)


def _err(node, message: str) -> ExpressionError:
    return ExpressionError(*_pos(node), message)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _children(node) -> list:
    out = []
    for name in _field_names(type(node)):
        value = getattr(node, name)
        if isinstance(value, tuple):
            out.extend(v for v in value if dataclasses.is_dataclass(v))
        elif dataclasses.is_dataclass(value):
            out.append(value)
    return out


def _utf8_size(s: str, at_most: int) -> int:
    return len(s) if len(s) * 4 <= at_most else len(s.encode("utf-8"))


def _short(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[:n] + "..."


# node class -> (attribute, what it names) for every name an expression can hold
_NAMES = {
    A.EventSource: (("event", "event type"), ("prop", "property name")),
    A.TraitRef: (("name", "trait name"),),
    A.TraitTime: (("name", "trait name"),),
    A.ExistsTrait: (("name", "trait name"),),
    A.PropRef: (("name", "property name"),),
    A.ExistsProp: (("name", "property name"),),
    A.SegmentRef: (("name", "segment name"),),
    A.ModelCall: (("model", "model name"),),
}


def check_shape(tree, limits) -> None:
    """Depth, name sizes and string sizes of a parsed tree within ``limits``, or
    ExpressionError at the first offending node. Iterative: safe on any tree."""
    max_depth = limits.max_expression_depth
    max_name, max_str = limits.max_name_bytes, limits.max_string_bytes
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise _err(node, f"the expression is nested too deeply: more than {max_depth} levels "
                             "(max_expression_depth; operators, not, minus and calls each add one); "
                             f"{_SPLIT_HINT}")
        for attr, what in _NAMES.get(type(node), ()):
            name = getattr(node, attr)
            if isinstance(name, str):
                size = _utf8_size(name, max_name)
                if size > max_name:
                    raise _err(node, f'{what} "{_short(name)}" is {size} bytes long (UTF-8); '
                                     f"at most {max_name} (max_name_bytes)")
        if type(node) is A.Literal and isinstance(node.value, str):
            size = _utf8_size(node.value, max_str)
            if size > max_str:
                raise _err(node, f"the string is {size} bytes long (UTF-8); at most {max_str} "
                                 "(max_string_bytes)")
        stack.extend((c, depth + 1) for c in _children(node))


# ----------------------------------------------------------------------------- value stack
# These mirror the stack accounting of engine._plan._Compiler.expr / .fexpr exactly.


# what evaluating an aggregate costs for one user, roughly (a window's binary searches = 1, a
# scan of the window's events = 2, collecting and sorting its values = 4; a where filter +1)
_AGG_COST = {"count": 1, "sum": 2, "avg": 2, "min": 2, "max": 2, "active_days": 3, "distinct": 4,
             "top_count": 4, "affinity": 4, "affinity_score": 4, "affinity_rank": 4}


def eval_cost(node) -> int:
    """Rough cost of evaluating ``node`` for one user: 0 when it reads no events (traits,
    other segments' bits, constants), else the sum over its aggregates."""
    if isinstance(node, A.Aggregate):
        return _AGG_COST.get(node.func, 4) + (node.source.filter is not None)
    if isinstance(node, (A.Since, A.SinceFirst)):
        return 2
    if isinstance(node, (A.Sequence, A.Rfm)):
        return 4
    total = 0
    for f in dataclasses.fields(node):
        v = getattr(node, f.name)
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
            if dataclasses.is_dataclass(x):
                total += eval_cost(x)
    return total


def operand_order(node: A.BoolOp) -> list:
    """The order in which the compiler evaluates an ``and``/``or``'s operands: cheapest first
    (``eval_cost``; ties in the written order). Its value and next change do not depend on
    the order, and an operand that decides it early saves the evaluation of the rest."""
    return sorted(node.operands, key=eval_cost)


def stack_need(node) -> int:
    """Stack slots the segment program of ``node`` needs (``where`` filters have their own)."""
    if isinstance(node, A.Neg):
        if isinstance(node.operand, A.Literal) and node.operand.kind == "number":
            return 1
        return stack_need(node.operand)
    if isinstance(node, A.Not):
        return stack_need(node.operand)
    if isinstance(node, (A.Arith, A.Compare)):
        return max(stack_need(node.left), 1 + stack_need(node.right))
    if isinstance(node, A.In):
        return stack_need(node.operand)
    if isinstance(node, A.Between):
        return max(stack_need(node.operand), 1 + stack_need(node.low), 2 + stack_need(node.high))
    if isinstance(node, A.BoolOp):
        return max(i + stack_need(o) for i, o in enumerate(operand_order(node)))
    if isinstance(node, A.ModelCall) and node.func == "likely":
        return 2
    return 1  # a literal, a trait, a leaf (aggregate, since, sequence), near, segment(...)


def _operand_need(node) -> int:
    if isinstance(node, (A.PropRef, A.Literal)):
        return 1
    if isinstance(node, A.Neg) and isinstance(node.operand, A.Literal) and node.operand.kind == "number":
        return 1
    return filter_need(node)


def filter_need(node) -> int:
    """Stack slots the filter program of a ``where`` condition needs."""
    if isinstance(node, A.Compare):
        return max(_operand_need(node.left), 1 + _operand_need(node.right))
    if isinstance(node, A.In):
        return _operand_need(node.operand)
    if isinstance(node, A.Between):
        return max(_operand_need(node.operand), 1 + _operand_need(node.low), 2 + _operand_need(node.high))
    if isinstance(node, A.BoolOp):
        return max(i + filter_need(o) for i, o in enumerate(node.operands))
    if isinstance(node, A.Not):
        return filter_need(node.operand)
    if isinstance(node, (A.PropRef, A.Literal)):
        return 2  # the value, then true to compare it with
    if isinstance(node, A.Neg):
        return max(filter_need(node.operand), 2)
    return 1


def _filters(tree):
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, A.EventSource) and node.filter is not None:
            yield node.filter
        stack.extend(_children(node))


def _fits(tree) -> bool:
    return stack_need(tree) <= PLAN_STACK and all(filter_need(f) <= PLAN_STACK for f in _filters(tree))


def _rebuild(node, fn):
    """``fn`` applied bottom-up; unchanged subtrees are kept (not copied)."""
    changes = {}
    for name in _field_names(type(node)):
        value = getattr(node, name)
        if isinstance(value, tuple):
            new = tuple(_rebuild(v, fn) if dataclasses.is_dataclass(v) else v for v in value)
            if any(a is not b for a, b in zip(new, value)):
                changes[name] = new
        elif dataclasses.is_dataclass(value):
            new = _rebuild(value, fn)
            if new is not value:
                changes[name] = new
    if changes:
        node = dataclasses.replace(node, **changes)
    return fn(node)


def _regroup(node):
    if not isinstance(node, A.BoolOp) or len(node.operands) <= GROUP:
        return node
    ops = list(node.operands)
    while len(ops) > GROUP:
        chunks = [ops[k:k + GROUP] for k in range(0, len(ops), GROUP)]
        ops = [c[0] if len(c) == 1 else A.BoolOp(node.op, tuple(c), c[0].line, c[0].col) for c in chunks]
    return A.BoolOp(node.op, tuple(ops), node.line, node.col)


def fit_plan(tree):
    """``tree``, or an equivalent one with wide and/or chains regrouped, whose programs fit
    the kernels' stack; ExpressionError when no regrouping makes it fit (deep right-nested
    arithmetic, say). A tree that fits is returned as it is."""
    if _fits(tree):
        return tree
    tree = _rebuild(tree, _regroup)
    need = stack_need(tree)
    if need > PLAN_STACK:
        raise _err(tree, f"the expression needs {need} values on the evaluation stack at once; the "
                         f"engine has {PLAN_STACK}: use fewer nested parentheses, or {_SPLIT_HINT}")
    for f in _filters(tree):
        need = filter_need(f)
        if need > PLAN_STACK:
            raise _err(f, f"the where filter needs {need} values on the evaluation stack at once; the "
                          f"engine has {PLAN_STACK}: use fewer nested parentheses in it")
    return tree
