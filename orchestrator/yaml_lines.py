"""YAML for sweep files: safe, YAML 1.2 scalars, duplicate keys caught, a line per node.

Why not plain `yaml.safe_load`:
- YAML 1.1 reads `off`, `no`, `y` as booleans and `2026-01-01` as a date, so `cot: off`
  would fail a string field; and it reads `4e-5` as a string. Sweep files use the YAML 1.2
  core schema: only true/false are booleans, `4e-5` is a number, dates stay strings.
- A duplicated key silently keeps the last value; here it is an error.
- Validation errors must name a line, so every node's line is kept, by data path.
- Values no sweep needs are refused where they are written, before anything reads them: an
  integer beyond 64 bits (Parquet, Ray and the engines store int64 at most), a float literal
  that overflows to infinity, a string longer than MAX_STRING (long text belongs in a data
  file), and characters YAML does not allow (NUL, other control characters).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from orchestrator.errors import Loc, Problem, SpecError, dotted, show

_DROPPED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
            "tag:yaml.org,2002:timestamp"}
_MERGE = "tag:yaml.org,2002:merge"
# Nodes a sweep may expand to. Aliases of aliases grow exponentially (a few lines can stand
# for billions of nodes); a real sweep has hundreds.
MAX_NODES = 200_000
MAX_STRING = 64 * 1024  # characters in one value; a prompt or a judge template fits many times over
INT64_MAX = 2**63 - 1
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_STR = "tag:yaml.org,2002:str"


class SweepLoader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema's booleans and numbers."""

    yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, Any]]]] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in _DROPPED]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


SweepLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
SweepLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
SweepLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"))


def _construct_int(loader: SweepLoader, node: ScalarNode) -> int:
    # YAML 1.2: a leading zero is decimal (010 is ten, not eight) and there is no 1:30 form.
    text = loader.construct_scalar(node)
    if _beyond_int64(text):  # reported by the walk; Python refuses to parse over 4300 digits
        return INT64_MAX + 1
    return int(text, 16) if text.lower().startswith("0x") else int(text, 10)


def _beyond_int64(text: str) -> bool:
    hexadecimal = text.lower().startswith("0x")
    digits = (text[2:] if hexadecimal else text.lstrip("+-")).lstrip("0")
    if len(digits) > (16 if hexadecimal else 19):
        return True
    value = int(text, 16) if hexadecimal else int(text, 10)
    return not -INT64_MAX - 1 <= value <= INT64_MAX


SweepLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


@dataclass
class LoadedYaml:
    """The document, the 1-based line of every node by data path, and duplicate-key problems.

    A mapping entry's line is its key's line (where the user wrote the name); a sequence
    item's line is the item's own."""

    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    nodes: int = 0  # nodes walked, aliases expanded

    def line_of(self, loc: Loc) -> int | None:
        """The line of the deepest node that exists on `loc` (a missing key: its mapping)."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


def load_yaml(text: str, filename: str) -> LoadedYaml:
    """Parse one YAML document. Raises SpecError for a syntax error (at the parser's line)."""
    try:
        loader = SweepLoader(text)  # the reader checks every character here
    except yaml.reader.ReaderError as e:
        at_line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        code = e.character if isinstance(e.character, int) else ord(e.character)
        raise SpecError([Problem(filename, at_line, "", f"character U+{code:04X} at column {column} is not allowed "
                                 "in YAML (a NUL or control character; remove it)")]) from None
    try:
        node = loader.get_single_node()
        loaded = LoadedYaml(data=None)
        if node is not None:
            _walk(loader, node, (), loaded, filename, frozenset())
            loaded.lines[()] = node.start_mark.line + 1
            loaded.data = loader.construct_document(node)
        return loaded
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        tag = re.fullmatch(r"could not determine a constructor for the tag '(.*)'", e.problem or "")
        if tag is not None:  # !!python/object and friends: the safe loader knows no such thing
            name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            raise SpecError([Problem(filename, line, "", f"the YAML tag {name} is not allowed: a sweep file holds "
                                     "plain values (loaded safely: no tag constructs or runs anything)")]) from None
        what = e.problem or e.context or "unreadable YAML"
        if e.context and e.problem:
            where = f" that starts at line {e.context_mark.line + 1}" if e.context_mark is not None else ""
            what += f" ({e.context}{where})"
        raise SpecError([Problem(filename, line, "", f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as e:
        raise SpecError([Problem(filename, None, "", f"YAML error: {e}")]) from None
    finally:
        loader.dispose()


def _walk(loader: SweepLoader, node: Node, loc: Loc, out: LoadedYaml, filename: str,
          open_nodes: frozenset[int], merged: bool = False) -> None:
    """Record lines under `loc`. `merged`: the node arrives through `<<: *anchor`, so keys
    already written explicitly win and duplicates were reported where the anchor is."""
    if id(node) in open_nodes:  # an alias that contains itself; construction reports it
        return
    out.nodes += 1
    if out.nodes > MAX_NODES:
        top = loc[:1]  # the entry whose aliases blew up; deeper positions mean nothing to a reader
        raise SpecError([Problem(filename, out.lines.get(top, node.start_mark.line + 1), dotted(top),
                                 f"the file expands to over {MAX_NODES} values through its aliases")])
    open_nodes = open_nodes | {id(node)}
    if isinstance(node, ScalarNode):
        if (problem := _scalar_problem(node)) is not None:
            out.problems.append(Problem(filename, node.start_mark.line + 1, dotted(loc), problem))
        return
    if isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            out.lines.setdefault((*loc, i), item.start_mark.line + 1)
            _walk(loader, item, (*loc, i), out, filename, open_nodes, merged)
        return
    if not isinstance(node, MappingNode):
        return
    first_line: dict[Any, int] = {}
    merges: list[Node] = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE:
            merges.extend(value_node.value if isinstance(value_node, SequenceNode) else [value_node])
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue  # constructing the document reports the unhashable key
        line = key_node.start_mark.line + 1
        if key in first_line:
            if not merged:
                out.problems.append(Problem(filename, line, dotted((*loc, key)),
                                            f"duplicate key {show(key)} (first at line {first_line[key]})"))
            continue
        first_line[key] = line
        if merged and (*loc, key) in out.lines:
            continue
        out.lines[(*loc, key)] = line
        _walk(loader, value_node, (*loc, key), out, filename, open_nodes, merged)
    for m in merges:  # after the explicit keys, which override merged ones
        _walk(loader, m, loc, out, filename, open_nodes, merged=True)


def _scalar_problem(node: ScalarNode) -> str | None:
    """What is wrong with a value no sweep can mean, or None. The value itself is not echoed
    in full: it is huge."""
    text = node.value
    if node.tag == _INT:
        if _beyond_int64(text):
            return f"an integer of {len(text)} digits is beyond 64 bits; expected at most {INT64_MAX}"
    elif node.tag == _FLOAT and "inf" not in text.lower() and "nan" not in text.lower():
        if float(text) in (float("inf"), float("-inf")):
            return f"the number {text[:40]} is beyond the range of a float (about 1.8e308)"
    elif node.tag == _STR and len(text) > MAX_STRING:
        return (f"a string of {len(text)} characters ({show(text[:20])}...); at most {MAX_STRING}: "
                "put long text in a data file")
    return None
