"""Semi-structured tables for the synthetic decompositions (jobs.decompose.synthetic): read
from CSV or JSONL, checked, and written out as a passage.

A table is one entity a row: the first column names the row (a player, a team, a city) and
the others are its attributes. CSV: a header line, then one row a line. JSONL: one object a
line, every object with the same keys, the first key of the first object naming the rows.
A column whose every cell holds a number (`number_in`: "28-yard" reads as 28) is numeric;
the others are text. Every mistake is a DataFileError naming the file and line.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from jobs.decompose.symbolic import number_in
from jobs.errors import DataFileError
from jobs.inputs import jsonl_objects, read_text

# A row name is written into symbolic steps (`if_then(#1 > #2; A; B)`, `count(A ||| B)`):
# their separators inside a name would split it, and `#<digit>` would read as a reference.
_UNSAFE_NAME = re.compile(r";|\|\|\||#\d|[()]")
MIN_ROWS = 2


class TableError(DataFileError):
    pass


@dataclass(frozen=True)
class Table:
    """A checked table: `rows` as (name, {column: cell text}), in file order."""

    title: str  # the file's stem, for ids
    entity: str  # the name column's header: "team", "player"
    columns: tuple[str, ...]  # the attribute columns, in order
    rows: tuple[tuple[str, dict[str, str]], ...]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.rows]

    def cell(self, name: str, column: str) -> str:
        return dict(self.rows)[name][column]

    def value(self, name: str, column: str) -> Decimal:
        value = number_in(self.cell(name, column))
        assert value is not None, f"{column} is not numeric"
        return value

    @property
    def numeric_columns(self) -> list[str]:
        return [c for c in self.columns if all(number_in(cells[c]) is not None for _, cells in self.rows)]

    @property
    def text_columns(self) -> list[str]:
        numeric = set(self.numeric_columns)
        return [c for c in self.columns if c not in numeric]

    def passage(self) -> str:
        """The table as sentences, one a cell, row by row: the passage the questions read."""
        return " ".join(f"The {column} of {name} is {cells[column]}." for name, cells in self.rows
                        for column in self.columns)


def _check_header(header: list[str], where: str) -> list[str]:
    names = [h.strip() for h in header]
    if len(names) < 2:
        raise TableError(f"{where}: a table needs a name column and at least one attribute column, got {names}")
    if any(not h for h in names):
        raise TableError(f"{where}: column {names.index('') + 1} has no name")
    repeated = sorted({h for h in names if names.count(h) > 1})
    if repeated:
        raise TableError(f"{where}: column name(s) {repeated} appear twice")
    return names


def _checked(path: Path, header: list[str], rows: list[tuple[str, list[str]]]) -> Table:
    """The table from its header and (where, cells) rows, with names and size checked."""
    seen: dict[str, str] = {}
    out: list[tuple[str, dict[str, str]]] = []
    for where, cells in rows:
        name = cells[0].strip()
        if not name:
            raise TableError(f"{where}: field {header[0]!r}: the row has no name (the first column names it)")
        if _UNSAFE_NAME.search(name):
            raise TableError(f"{where}: field {header[0]!r}: {name!r} holds ';', '|||', '(', ')' or '#<digit>', "
                             "which the symbolic steps read as separators or references; rename the row")
        if name in seen:
            raise TableError(f"{where}: field {header[0]!r}: {name!r} names two rows (first at {seen[name]})")
        seen[name] = where
        values = [c.strip() for c in cells[1:]]
        for column, value in zip(header[1:], values):
            if not value:
                raise TableError(f"{where}: field {column!r} is empty")
        out.append((name, dict(zip(header[1:], values))))
    if len(out) < MIN_ROWS:
        raise TableError(f"{path}: a table needs at least {MIN_ROWS} rows to compare, got {len(out)}")
    return Table(title=path.stem, entity=header[0], columns=tuple(header[1:]), rows=tuple(out))


def _read_csv(path: Path) -> Table:
    reader = csv.reader(io.StringIO(read_text(path, TableError), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise TableError(f"{path}: empty file (expected a header line)")
        columns = _check_header(header, f"{path}:1")
        rows: list[tuple[str, list[str]]] = []
        start = reader.line_num + 1
        for cells in reader:
            where = f"{path}:{start}"  # the record's first line (a quoted cell may span lines)
            start = reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(columns):
                raise TableError(f"{where}: expected {len(columns)} fields ({', '.join(columns)}), got {len(cells)}")
            rows.append((where, cells))
    except csv.Error as e:
        raise TableError(f"{path}:{reader.line_num}: not CSV ({e})") from None
    return _checked(path, columns, rows)


def _read_jsonl(path: Path) -> Table:
    header: list[str] | None = None
    rows: list[tuple[str, list[str]]] = []
    for where, _, obj in jsonl_objects(path, TableError):
        if not isinstance(obj, dict):
            raise TableError(f"{where}: expected an object (one table row), got {type(obj).__name__}")
        if header is None:
            header = _check_header(list(obj), where)
        if list(obj) != header and set(obj) != set(header):
            missing, extra = sorted(set(header) - set(obj)), sorted(set(obj) - set(header))
            raise TableError(f"{where}: the row's keys differ from the first row's: missing {missing}, extra {extra}")
        cells = []
        for key in header:
            value = obj[key]
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise TableError(f"{where}: field {key!r}: expected text or a number, got {type(value).__name__}")
            cells.append(str(value))
        rows.append((where, cells))
    if header is None:
        raise TableError(f"{path}: empty file (expected one JSON object a line)")
    return _checked(path, header, rows)


def read_table(path: str | Path) -> Table:
    """A table from a .csv or .jsonl file, checked (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path)
    raise TableError(f"{path}: expected a .csv or .jsonl table")
