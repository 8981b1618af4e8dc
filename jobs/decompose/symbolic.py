"""Symbolic simple steps, executed by code instead of a model.

The decomposer writes them as calls, in the annotated decompositions' notation:

    count(46; 25)                        -> 2
    sum(3; 4.5)                          -> 7.5
    diff(5; 3)                           -> 2      (absolute difference)
    diff(February 1995; January 2005; years) -> 10 (dates: years, months or days)
    not(14.10)                           -> 85.9   (the complement of a percentage)
    top(1, 28-yard; 4-yard; 10-yard)     -> 28     (bottom(k, ...) for the smallest)
    max(3; 7), min(3; 7)                 -> 7, 3
    if_then(3.9 > 1; transit; cycling)   -> transit (comparisons: < > <= >= == !=)

Items are separated by `;` (or `|||`, the list separator of answers); an item's value is the
first number in it, so "28-yard" reads as 28. Arithmetic is decimal, so 0.1 + 0.2 is 0.3.
An item may also be a reference `#k` to the answer of the k-th simple question, as in QDMR
decompositions (`diff(#1; #2)`): the decomposer then need not copy the values it was given.
`execute` returns None for anything it cannot evaluate (an unknown reference included); the
job then asks the model.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date
from decimal import Decimal, InvalidOperation

LIST_SEPARATOR = "|||"
OPERATIONS = ("count", "sum", "diff", "not", "top", "bottom", "max", "min", "if_then")

_CALL = re.compile(r"^\s*(" + "|".join(OPERATIONS) + r")\s*\((.*)\)\s*\.?\s*$", re.IGNORECASE | re.DOTALL)
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")
_REFERENCE = re.compile(r"#(\d+)")
_COMPARISON = re.compile(r"^(.*?)\s*(<=|>=|==|!=|<|>)\s*(.*)$")
_MONTHS = {m: i for i, m in enumerate(
    ["january", "february", "march", "april", "may", "june", "july", "august", "september",
     "october", "november", "december"], 1)}


def is_symbolic(question: str) -> bool:
    return _CALL.match(question) is not None


def split_items(text: str) -> list[str]:
    return [s.strip() for s in re.split(r";|\|\|\|", text) if s.strip()]


def number_in(text: str) -> Decimal | None:
    """The first number written in the text ("28-yard" -> 28, ".1%" -> 0.1), else None."""
    for m in _NUMBER.finditer(text):
        token = m.group(0)
        if any(ch.isdigit() for ch in token):
            try:
                return Decimal(token.replace(",", ""))
            except InvalidOperation:
                return None
    return None


def format_number(value: Decimal) -> str:
    """Plain decimal notation without trailing zeros: 10, 85.9, -2.5."""
    text = format(value.normalize(), "f")
    return "0" if text in {"-0", "0"} else text


def _date_in(text: str) -> tuple[int | None, int | None, int | None]:
    """(year, month, day) read from "4 October 2001", "October 4, 2001", "February 1995",
    "1995"; a missing part is None."""
    words = re.findall(r"[A-Za-z]+|\d+", text)
    month = next((_MONTHS[w.lower()] for w in words if w.lower() in _MONTHS), None)
    numbers = [int(w) for w in words if w.isdigit()]
    year = next((n for n in numbers if n > 31), None)
    day = next((n for n in numbers if 1 <= n <= 31), None) if month else None
    return year, month, day


def _date_diff(a: str, b: str, unit: str) -> Decimal | None:
    (ya, ma, da), (yb, mb, db) = _date_in(a), _date_in(b)
    unit = unit.lower().rstrip("s")
    if ya is None or yb is None:
        return None
    if unit == "year":
        return Decimal(abs(yb - ya))
    if unit == "month" and ma and mb:
        return Decimal(abs((yb - ya) * 12 + (mb - ma)))
    if unit == "day" and ma and mb and da and db:
        try:
            return Decimal(abs((date(yb, mb, db) - date(ya, ma, da)).days))
        except ValueError:  # 30 February: a step that cannot be evaluated, not a failed question
            return None
    return None


def _numbers(items: list[str]) -> list[Decimal] | None:
    values = [number_in(i) for i in items]
    return None if not values or any(v is None for v in values) else values  # type: ignore[return-value]


def _compare(condition: str) -> bool | None:
    m = _COMPARISON.match(condition.strip())
    if not m:
        return None
    left, op, right = m.groups()
    a, b = number_in(left), number_in(right)
    if a is None or b is None:
        return None
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b, "==": a == b, "!=": a != b}[op]


def _top(args: str, largest: bool) -> str | None:
    k_text, _, rest = args.partition(",")
    if not k_text.strip().isdigit():
        return None
    values = _numbers(split_items(rest))
    if values is None:
        return None
    chosen = sorted(values, reverse=largest)[: int(k_text)]
    return f" {LIST_SEPARATOR} ".join(format_number(v) for v in chosen)


def resolve_references(question: str, answers: Sequence[str]) -> str | None:
    """`question` with each `#k` replaced by the k-th answer (1-based); None when a reference
    has no answer (read as a number, "#3" would silently be 3)."""
    if any(not 1 <= int(k) <= len(answers) for k in _REFERENCE.findall(question)):
        return None
    return _REFERENCE.sub(lambda m: answers[int(m.group(1)) - 1], question)


def execute(question: str, answers: Sequence[str] = ()) -> str | None:
    """The answer to a symbolic step, or None when it is not one or cannot be evaluated.
    `answers`: the answers to the simple questions so far, which `#k` refers to."""
    resolved = resolve_references(question, answers)
    m = _CALL.match(resolved) if resolved is not None else None
    if not m:
        return None
    op, args = m.group(1).lower(), m.group(2)
    if op in ("top", "bottom"):
        return _top(args, largest=op == "top")
    if op == "if_then":
        parts = [p.strip() for p in args.split(";")]
        if len(parts) != 3:
            return None
        verdict = _compare(parts[0])
        return None if verdict is None else (parts[1] if verdict else parts[2])
    items = split_items(args)
    if op == "count":
        return str(len(items))
    if op == "diff" and len(items) == 3:
        value = _date_diff(items[0], items[1], items[2])
        return None if value is None else format_number(value)
    values = _numbers(items)
    if values is None:
        return None
    if op == "sum":
        return format_number(sum(values, Decimal(0)))
    if op == "diff" and len(values) == 2:
        return format_number(abs(values[0] - values[1]))
    if op == "not" and len(values) == 1:
        return format_number(Decimal(100) - values[0])
    if op == "max":
        return format_number(max(values))
    if op == "min":
        return format_number(min(values))
    return None
