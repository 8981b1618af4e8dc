"""Write the completions of an Inspect AI log folder's one eval log as `{"id", "completion"}`
lines (run in the peers' venv: `python benchmarks/peers/read_inspect.py LOG_DIR OUT.jsonl`).
Reads the log through Inspect's own API (`inspect_ai.log`), whatever its format (.eval or .json)."""
import json
import sys

from inspect_ai.log import list_eval_logs, read_eval_log


def main() -> None:
    log_dir, out = sys.argv[1], sys.argv[2]
    logs = list_eval_logs(log_dir)
    if len(logs) != 1:
        sys.exit(f"{log_dir}: expected one eval log, found {len(logs)}")
    log = read_eval_log(logs[0])
    if log.status != "success":
        sys.exit(f"{logs[0].name}: status {log.status}: {log.error}")
    with open(out, "w") as f:
        for sample in log.samples or []:
            f.write(json.dumps({"id": str(sample.id), "completion": sample.output.completion}) + "\n")


if __name__ == "__main__":
    main()
