"""Where Ariadne's queries come from: the bundled set (math, general, science), the organisms'
held-out arithmetic problems, or a JSONL file of `{"id", "query", "domain", "answer"?}`.

A file in the Ariadne release's own shape loads as it is: `{"query", "expected_answer",
"metadata": {"category", "subcategory"}}`, its category the domain (General Knowledge ->
general, Scientific Reasoning -> science, Mathematical Logic -> math, any other lower-cased)
and its expected answer the row's reference answer."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from jobs.errors import DataFileError
from jobs.inputs import jsonl_objects
from jobs.toyworld import arithmetic

BUNDLED = Path(__file__).parent / "data" / "queries.jsonl"
ARITHMETIC = "arithmetic"  # the organisms' domain: questions in their format, no instruction


@dataclass(frozen=True)
class Query:
    id: str
    query: str
    domain: str
    answer: str | None = None  # a reference answer, when the source has one (not used to score)

    def to_dict(self) -> dict:
        return asdict(self)


class QueryFileError(DataFileError):
    pass


def read_jsonl(path: str | Path) -> list[Query]:
    """Queries of a JSONL file; a malformed line names the file and line."""
    queries, seen = [], set()
    for where, lineno, obj in jsonl_objects(path, QueryFileError):
        if not isinstance(obj, dict) or not isinstance(obj.get("query"), str):
            raise QueryFileError(f"{where}: expected an object with a string `query`")
        qid = str(obj.get("id", f"q{lineno}"))
        if qid in seen:
            raise QueryFileError(f"{where}: duplicate id {qid!r}")
        seen.add(qid)
        answer = obj.get("answer", obj.get("expected_answer"))
        queries.append(Query(qid, obj["query"], _domain(obj), None if answer is None else str(answer)))
    return queries


# The release's categories, named as the bundled set names its domains.
CATEGORY_DOMAINS = {"general knowledge": "general", "scientific reasoning": "science", "mathematical logic": "math"}


def _domain(obj: dict) -> str:
    if "domain" in obj:
        return str(obj["domain"])
    metadata = obj.get("metadata")
    category = metadata.get("category") if isinstance(metadata, dict) else None
    if not isinstance(category, str) or not category.strip():
        return "general"
    key = " ".join(category.lower().replace("_", " ").split())
    return CATEGORY_DOMAINS.get(key, key.replace(" ", "_"))


def arithmetic_queries() -> list[Query]:
    """The held-out problems no organism was trained on, in the organisms' question format."""
    return [Query(f"arith-{p.a}-{p.b}-{p.c}", arithmetic.format_question(p), ARITHMETIC, str(p.answer))
            for p in arithmetic.heldout_problems()]


def load_queries(source: str, domains: tuple[str, ...] | None = None, limit: int | None = None) -> list[Query]:
    """`source`: "bundled", "arithmetic" or a JSONL path. Filtered by domain, then the first
    `limit` of each domain, so a limit keeps every domain represented."""
    if source == "arithmetic":
        queries = arithmetic_queries()
    else:
        queries = read_jsonl(BUNDLED if source == "bundled" else source)
    if domains:
        queries = [q for q in queries if q.domain in domains]
    if limit:
        taken: dict[str, int] = {}
        kept = []
        for q in queries:
            if taken.get(q.domain, 0) < limit:
                taken[q.domain] = taken.get(q.domain, 0) + 1
                kept.append(q)
        queries = kept
    return queries
