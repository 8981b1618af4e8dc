"""What a change after generation costs: `examples/thought_crime.yaml` submitted once in full,
then (a) with a stricter threshold (`misaligned_below` 30 -> 60, a summary parameter), (b)
with the judge swapped for the same judge served another way (a judge of the same cost: the
judging stage alone) and (c) for `judge-digits` (the digit walk: several requests a score),
each timed against the first submit in the same run. Prints the seconds, the ratios and what
each submit started.

    PYTHONPATH=. python benchmarks/stages.py [--samples 10]

Expected: (a) a few seconds, no Ray, no replica; (b) the judge's share of the first run: one
pool (the new judge), no subject request; (c) more, by the digit walk's extra requests.
"""
from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

from orchestrator.load import load_sweep
from orchestrator.report import SubmitReport
from orchestrator.submit import submit

EXAMPLE = Path(__file__).parents[1] / "examples" / "thought_crime.yaml"


def variant(text: str, folder: Path, name: str, **changes: str) -> Path:
    """The example with `key: value` lines replaced (and its output under `folder`)."""
    for key, value in changes.items():
        text, n = re.subn(rf"(?m)^(\s*{key}:).*$", rf"\g<1> {value}", text, count=1)
        assert n == 1, f"the example has no `{key}:` line"
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def timed(sweep_file: Path) -> tuple[float, SubmitReport]:
    started = time.perf_counter()
    report = submit(load_sweep(sweep_file), sweep_file=str(sweep_file), progress=False,
                    ray_temp_dir=tempfile.mkdtemp(dir="/tmp"))
    assert report.ok, (report.shards_failed, report.cells_unfinished)
    return time.perf_counter() - started, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=10, help="samples per item and arm (the example's 10)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="stages-"))
    text = EXAMPLE.read_text().replace("output: results", f"output: {folder / 'results'}")
    text = re.sub(r"(?m)^(\s*samples:).*$", rf"\g<1> {args.samples}", text, count=1)
    judge = '  judge:      {path: "organism:judge", dtype: float32, num_cpus: 0.5}\n'
    assert judge in text, "the example's judge line changed: update this benchmark"
    digits = '  judge-digits: {path: "organism:judge-digits", dtype: float32, num_cpus: 0.5}\n'
    # The same weights with another context limit: another serving identity, the same cost.
    again = '  judge-again: {path: "organism:judge", dtype: float32, num_cpus: 0.5, max_model_len: 255}\n'
    text = text.replace(judge, judge + digits + again)
    runs = {
        "first submit": variant(text, folder, "first"),
        "(a) misaligned_below 30 -> 60": variant(text, folder, "threshold", misaligned_below="60"),
        "(b) judge -> the same, re-served": variant(text, folder, "again", roles="{judge: judge-again}"),
        "(c) judge -> judge-digits": variant(text, folder, "digits", roles="{judge: judge-digits}"),
    }
    results = {name: timed(path) for name, path in runs.items()}
    first = results["first submit"][0]
    print(f"{'run':<32} {'seconds':>8} {'x first':>8}  started / stage shards run")
    for name, (seconds, report) in results.items():
        print(f"{name:<32} {seconds:8.1f} {seconds / first:8.3f}  {report.models_started or 'no Ray'} / "
              f"{report.stage_shards_run or 'none'}; requests by pool {report.calls_by_model or {}}")


if __name__ == "__main__":
    main()
