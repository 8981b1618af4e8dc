"""Reading results back for people: tables a terminal or a spreadsheet can hold."""
from __future__ import annotations

import io
import json

import polars as pl

from orchestrator.results import flat_for_csv


def test_nested_columns_go_to_csv_as_json():
    """Decomposition rows hold lists of steps; CSV has no lists, so they travel as JSON."""
    df = pl.DataFrame({"id": ["a", "b"], "steps": [["q1", "q2"], None],
                       "span": [{"start": 1, "end": 3}, {"start": 0, "end": 0}]})
    back = pl.read_csv(io.StringIO(flat_for_csv(df).write_csv()))
    assert back["id"].to_list() == ["a", "b"]
    assert json.loads(back["steps"][0]) == ["q1", "q2"] and back["steps"][1] is None
    assert json.loads(back["span"][0]) == {"start": 1, "end": 3}
