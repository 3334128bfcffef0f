"""Tokenizer for segment expressions (lexical rules of spec/EXPRESSIONS.md)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from engine.errors import ExpressionError

KEYWORDS = frozenset({"and", "or", "not", "in", "between", "where", "true", "false", "null", "trait"})

DURATION_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
DISTANCE_UNITS_M = {"m": 1.0, "km": 1_000.0, "mi": 1_609.344}

# Durations become int64 milliseconds downstream; 2**53 keeps them exact as float64 too.
MAX_DURATION_MS = 2**53

IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_:\-]*")
_IDENT_FULL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_:\-]*\Z")
_NUMBER_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_EXPONENT_RE = re.compile(r"[eE][+-]?[0-9]+")
_UNIT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_OPERATORS = ("==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "(", ")", "[", "]", ",", ".")

# Token kinds
NUM = "number"        # value: float
QTY = "quantity"      # a number with a unit (duration or distance); value: (number text, unit)
STR = "string"        # value: the decoded string
IDENT = "identifier"  # value: the name
KW = "keyword"        # value: the keyword
OP = "operator"       # value: the operator text
EOF = "end"


@dataclass(frozen=True)
class Token:
    kind: str
    text: str  # the source text of the token
    value: object
    line: int
    col: int

    def describe(self) -> str:
        """How an error message names this token after "found"."""
        if self.kind == EOF:
            return "end of input"
        text = self.text if len(self.text) <= 60 else self.text[:60] + "..."
        if self.kind == STR:
            return f"the string {text}"
        return f'"{text}"'


def is_identifier(name: str) -> bool:
    """True if ``name`` can be written bare (an identifier that is not a keyword)."""
    return bool(_IDENT_FULL_RE.match(name)) and name not in KEYWORDS


def position(text: str, i: int) -> tuple[int, int]:
    """1-based (line, column) of index ``i`` of ``text``."""
    line = text.count("\n", 0, i) + 1
    return line, i - (text.rfind("\n", 0, i) + 1) + 1


def check_text(text: str, max_chars: int) -> None:
    """An expression must be at most ``max_chars`` long and valid Unicode (no lone surrogate:
    it could be neither stored nor sent over gRPC). Raises ExpressionError."""
    if len(text) > max_chars:
        raise ExpressionError(1, 1, f"the expression has {len(text)} characters; at most {max_chars} "
                                    "(max_expression_chars): split it into segments and combine "
                                    'them with segment("NAME")')
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        line, col = position(text, err.start)
        raise ExpressionError(line, col, f"character {char_text(text[err.start])} is not valid Unicode "
                                         "text (a lone surrogate)") from None


def char_text(c: str) -> str:
    """A character as an error message shows it: printable ones quoted, others by code point."""
    return f'"{c}"' if c.isprintable() else f"U+{ord(c):04X}"


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens, ending with one EOF token. Raises ExpressionError."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    line, line_start = 1, 0

    def err(at: int, message: str) -> ExpressionError:
        return ExpressionError(line, at - line_start + 1, message)

    while i < n:
        c = text[i]
        if c == "\n":
            i += 1
            line, line_start = line + 1, i
            continue
        if c in " \t\r\f\v":
            i += 1
            continue
        if c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        col = i - line_start + 1
        if c == '"':
            start = i
            i, value = _read_string(text, i, err)
            tokens.append(Token(STR, text[start:i], value, line, col))
            continue
        if "0" <= c <= "9":
            i, tok = _read_number(text, i, line, col, err)
            tokens.append(tok)
            continue
        if c == "_" or "a" <= c <= "z" or "A" <= c <= "Z":
            m = IDENT_RE.match(text, i)
            word = m.group()
            i = m.end()
            tokens.append(Token(KW if word in KEYWORDS else IDENT, word, word, line, col))
            continue
        for op in _OPERATORS:
            if text.startswith(op, i):
                tokens.append(Token(OP, op, op, line, col))
                i += len(op)
                break
        else:
            raise err(i, _bad_character_message(text, i))
    tokens.append(Token(EOF, "", None, line, i - line_start + 1))
    return tokens


def _bad_character_message(text: str, i: int) -> str:
    two = text[i:i + 2]
    if two == "&&":
        return 'unexpected "&&": write and'
    if two == "||":
        return 'unexpected "||": write or'
    c = text[i]
    if c == "=":
        return 'unexpected "=": write == to compare'
    if c == "!":
        return 'unexpected "!": write != to compare, or not to negate'
    if c == "'":
        return "unexpected \"'\": strings and quoted names use double quotes"
    if c.isalnum():
        return f'unexpected character "{c}": a name with characters other than A-Z, a-z, 0-9, _ : - ' \
               'is written in double quotes, as in "Café"'
    return f"unexpected character {char_text(c)}"


def _read_string(text: str, start: int, err) -> tuple[int, str]:
    out: list[str] = []
    i, n = start + 1, len(text)
    while True:
        if i >= n or text[i] == "\n":
            raise err(start, 'unterminated string: close it with " on the same line')
        c = text[i]
        if c == '"':
            return i + 1, "".join(out)
        if c == "\0":
            raise err(i, "a string cannot hold a NUL character (U+0000): no name or value can contain one")
        if c == "\\":
            nxt = text[i + 1] if i + 1 < n else ""
            if nxt == '"':
                out.append('"')
            elif nxt == "\\":
                out.append("\\")
            elif nxt == "n":
                out.append("\n")
            elif nxt in ("", "\n"):
                raise err(start, 'unterminated string: close it with " on the same line')
            else:
                raise err(i, f'unknown escape "\\{nxt}" in a string: only \\" \\\\ and \\n are allowed')
            i += 2
            continue
        out.append(c)
        i += 1


def _read_number(text: str, i: int, line: int, col: int, err) -> tuple[int, Token]:
    start = i
    m = _NUMBER_RE.match(text, i)
    i = m.end()
    e = _EXPONENT_RE.match(text, i)
    if e:
        i = e.end()
    u = _UNIT_RE.match(text, i)
    if u and not e:
        unit = u.group()
        i = u.end()
        return i, Token(QTY, text[start:i], (m.group(), unit), line, col)
    if u:  # 1e6d
        raise err(i, f'unexpected "{u.group()}" after the number {text[start:i]}: '
                     "a duration is a whole number with a unit, such as 90m")
    number_text = text[start:i]
    value = float(number_text)
    if math.isinf(value):
        raise err(start, f"the number {number_text[:24]}{'...' if len(number_text) > 24 else ''} is too large")
    return i, Token(NUM, number_text, value, line, col)
