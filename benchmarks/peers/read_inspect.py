"""Write the completions of an Inspect AI log folder's one eval log as `{"id", "completion"}`
lines, with `--scores` also `"score"` (the sample's one score as a number, null when unscored).
Run in the peers' venv: `python benchmarks/peers/read_inspect.py LOG_DIR OUT.jsonl [--scores]`.
Reads the log through Inspect's own API (`inspect_ai.log`), whatever its format (.eval or .json)."""
import json
import sys
from datetime import datetime

from inspect_ai.log import list_eval_logs, read_eval_log


def number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def main() -> None:
    log_dir, out = sys.argv[1], sys.argv[2]
    with_scores = "--scores" in sys.argv[3:]
    logs = list_eval_logs(log_dir)
    if len(logs) != 1:
        sys.exit(f"{log_dir}: expected one eval log, found {len(logs)}")
    log = read_eval_log(logs[0])
    if log.status != "success":
        sys.exit(f"{logs[0].name}: status {log.status}: {log.error}")
    started, completed = (datetime.fromisoformat(t) for t in (log.stats.started_at, log.stats.completed_at))
    print(f"eval {(completed - started).total_seconds():.2f} s from start to end of the run (Inspect's stats)")
    with open(out, "w") as f:
        for sample in log.samples or []:
            row: dict = {"id": str(sample.id), "completion": sample.output.completion}
            if with_scores:
                (score,) = (sample.scores or {None: None}).values()
                row["score"] = None if score is None else number(score.value)
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
