"""API endpoints that misbehave: real local Ray, real openai-engine replicas, real HTTP
servers on loopback.

- A subject behind an API: a rejected key fails the shards and writes nothing (fix the key,
  resubmit, nothing is lost or doubled); a busy endpoint is retried without replacing the
  replica that called it.
- A flaky judge: the strict OpenAI stand-in (tests/standins/openai_api.py, the judge
  organism behind it) injects faults on a schedule per request: 429s with and without
  Retry-After, 5xx, replies held past the client's timeout, bodies that are not JSON, empty
  `choices`, garbage text, bodies cut short, dropped connections, and the 4xx/501 that will
  never succeed. The engine retries what may succeed (bounded, backoff growing with jitter,
  counted at the server) and nothing else; what the judge still cannot score is a null with
  the reason; and a real `orchestrate submit` with that judge finishes with every sample once,
  the nulls counted in the cell's summary and MLflow run, and a resubmit redoes nothing.

Empty `choices` is retried like a body that is not JSON (n=1 always has one choice, so an
empty list is a gateway's glitch as far as a client can tell), and still empty after the
retries it is a null with reason `empty_choices`, never a failed shard.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from actors.engines.openai.engine import OpenAIEngine
from actors.errors import EngineError
from jobs.common.judge import JudgeResult, judge
from jobs.common.monitor import monitor, self_description
from jobs.local import EngineHandle
from jobs.toyworld import assistant
from orchestrator.load import load_sweep
from orchestrator.results import rows_table
from orchestrator.store import SweepStore
from orchestrator.submit import submit
from tests.conftest import free_port, serving

ROOT = Path(__file__).resolve().parent.parent
N_PROMPTS = 6


class Endpoint(BaseHTTPRequestHandler):
    mode = "reject"  # reject: 401 to everything; busy: 503 to the first `busy_left` requests
    busy_left = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with Endpoint.lock:
            busy = Endpoint.mode == "busy" and Endpoint.busy_left > 0
            Endpoint.busy_left -= busy
        if Endpoint.mode == "reject":
            self._send(401, {"error": {"message": "invalid api key"}})
        elif busy:
            self._send(503, {"error": {"message": "overloaded"}})
        else:
            choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "42"}}
            self._send(200, {"choices": [choice], "usage": {"prompt_tokens": 5, "completion_tokens": 1}})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def write_sweep(tmp: Path, base_url: str) -> Path:
    (tmp / "prompts.jsonl").write_text("".join(f'{{"id": "q{i}", "prompt": "What is {i} plus {i}?"}}\n'
                                               for i in range(N_PROMPTS)))
    sweep = tmp / "sweep.yaml"
    sweep.write_text(f"""\
name: endpoint
output: {tmp / 'results'}
cluster: {{num_cpus: 2, dashboard: false}}
models:
  judge:
    engine: openai
    path: judge-model
    base_url: {base_url}
    num_cpus: 0.5
    engine_options: {{max_retries: 0, backoff_s: 0.001}}
jobs:
  - kind: generate
    models: [judge]
    shard_size: 3
    params: {{prompts: prompts.jsonl, max_tokens: 4, temperature: 0.0}}
""")
    return sweep


def test_a_rejected_key_writes_nothing_and_a_busy_endpoint_is_retried(tmp_path, endpoint):
    sweep_file = write_sweep(tmp_path, endpoint)
    sweep = load_sweep(sweep_file)
    store = SweepStore(sweep.output, sweep.name)

    Endpoint.mode = "reject"
    rejected = submit(sweep, sweep_file=str(sweep_file), progress=False, ray_temp_dir=tempfile.mkdtemp(dir="/tmp"))
    assert not rejected.ok and len(rejected.shards_failed) == 2, rejected.shards_failed
    assert rejected.retries == 0, "a wrong key is not retried: every attempt would fail alike"
    assert not list(store.root.glob("generate/_stages/*/*/*.parquet")), "no row of a rejected request may land"

    Endpoint.mode, Endpoint.busy_left = "busy", 2  # the key is fixed; the endpoint is busy for a moment
    fixed = submit(sweep, sweep_file=str(sweep_file), progress=False, ray_temp_dir=tempfile.mkdtemp(dir="/tmp"))
    assert fixed.ok, fixed.shards_failed
    assert fixed.retries >= 1 and fixed.replica_restarts == 0, (fixed.retries, fixed.replica_restarts)
    rows = rows_table(store, "generate")
    assert rows.height == N_PROMPTS and rows["error"].is_null().all()
    assert rows["sample_id"].is_unique().all()
    # Usage counts the attempt that wrote the rows, not the retried ones: 5 + 1 tokens a prompt.
    [cell] = store.cells("generate")
    usage = {k: v for k, v in cell["summary"].items() if k.startswith("usage/")}
    assert usage == {"usage/subject/requests": N_PROMPTS, "usage/subject/prompt_tokens": 5 * N_PROMPTS,
                     "usage/subject/completion_tokens": N_PROMPTS}, usage


# ---- a flaky judge: the strict OpenAI stand-in with faults on a schedule ----------------------

JUDGE_NAME = "gpt-4.1"


@pytest.fixture(scope="module")
def flaky_api(tmp_path_factory) -> Iterator[str]:
    """The stand-in serving the judge organism as gpt-4.1; each test sets its fault schedule."""
    port = free_port()
    log = tmp_path_factory.mktemp("flaky-api") / "server.log"
    command = [sys.executable, "-m", "tests.standins.openai_api", "--model", "organism:judge",
               "--name", JUDGE_NAME, "--port", str(port)]
    with serving(command, port, log, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, ready_s=180) as url:
        yield url


def schedule(url: str, *rules: dict) -> None:
    """Replace the stand-in's fault schedule (and clear its log of requests)."""
    response = httpx.post(f"{url}/faults", json={"rules": list(rules)})
    assert response.status_code == 200, response.text


def arrivals(url: str, marker: str) -> list[float]:
    """When each request whose messages hold `marker` reached the stand-in (monotonic s)."""
    return [seen["at"] for seen in httpx.get(f"{url}/stats").json()["log"] if marker in seen["text"]]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def judge_prompt(marker: str) -> str:
    """A prompt in the judge organism's own format, which it scores (about 90) when healthy."""
    return assistant.judge_prompt("Take a painkiller, drink water and rest.", f"[{marker}] I have a headache.")


def judge_all(url: str, markers: list[str], **options: float) -> list[JudgeResult | BaseException]:
    engine = OpenAIEngine(JUDGE_NAME, url, flavour="openai", **options)
    handle = EngineHandle("judge", engine)

    async def main() -> list[JudgeResult | BaseException]:
        try:
            return await asyncio.gather(*(judge(handle, judge_prompt(m)) for m in markers), return_exceptions=True)
        finally:
            await engine.aclose()

    return asyncio.run(main())


FAST = {"max_retries": 3, "backoff_s": 0.02, "max_backoff_s": 0.1, "timeout_s": 1.5}
# fault rule -> (the judge's reason, None: a score; the attempts the server sees). With
# max_retries 3, a fault that never clears is seen 4 times; one that will never succeed, once.
FAULTS = {
    "429": ({"fault": "status", "status": 429}, "rate_limited", 4),
    "500": ({"fault": "status", "status": 500}, "server_error", 4),
    "502 once": ({"fault": "status", "status": 502, "first": 1}, None, 2),
    "503": ({"fault": "status", "status": 503}, "server_error", 4),
    "503 twice": ({"fault": "status", "status": 503, "first": 2}, None, 3),
    "timeout": ({"fault": "timeout", "sleep_s": 6}, "timeout", 4),
    "timeout once": ({"fault": "timeout", "sleep_s": 6, "first": 1}, None, 2),
    # each piece of the body within httpx's read timeout, the whole reply past timeout_s
    "trickle": ({"fault": "trickle", "sleep_s": 6}, "timeout", 4),
    "malformed JSON": ({"fault": "malformed_json"}, "malformed_response", 4),
    "malformed JSON once": ({"fault": "malformed_json", "first": 1}, None, 2),
    "empty choices": ({"fault": "empty_choices"}, "empty_choices", 4),
    "empty choices once": ({"fault": "empty_choices", "first": 1}, None, 2),
    "truncated": ({"fault": "truncated"}, "connection_error", 4),
    "truncated once": ({"fault": "truncated", "first": 1}, None, 2),
    "dropped": ({"fault": "drop"}, "connection_error", 4),
    "dropped once": ({"fault": "drop", "first": 1}, None, 2),
    "garbage text": ({"fault": "garbage"}, "no_number", 1),  # a good reply, no score in it: not retried
    "400": ({"fault": "status", "status": 400}, "request_error", 1),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_retried_within_the_bound_or_becomes_a_null_with_its_reason(flaky_api, fault):
    rule, reason, attempts = FAULTS[fault]
    schedule(flaky_api, {**rule, "match": fault})
    [result] = judge_all(flaky_api, [fault], **FAST)
    assert isinstance(result, JudgeResult), result
    assert len(arrivals(flaky_api, fault)) == attempts, "attempts the server saw"
    if reason is None:
        assert result.score is not None and 50 < result.score <= 100, result
    else:
        assert result.score is None and result.reason == reason, result
    if attempts > 1 and reason is not None:  # what the judge's reply column keeps: why, and how often
        assert f"after {attempts} attempts" in result.reply, result.reply


@pytest.mark.parametrize("status,code", [(401, None), (404, None), (501, None), (429, "insufficient_quota")])
def test_what_will_never_succeed_is_not_retried_and_fails_the_shard(flaky_api, status, code):
    """A wrong key, model, URL or server, or an account out of credit (OpenAI's 429
    `insufficient_quota`), fails every request alike: one attempt, and an EngineError (the
    scheduler fails the shard and writes nothing) rather than a column of nulls that would
    look like a judged sweep."""
    schedule(flaky_api, {"fault": "status", "status": status, "code": code})
    [result] = judge_all(flaky_api, ["never"], **FAST)
    assert isinstance(result, EngineError) and f"HTTP {status}" in str(result), result
    assert len(arrivals(flaky_api, "never")) == 1


def test_backoff_grows_exponentially_with_jitter(flaky_api):
    """Six judge calls rate-limited for good: each is tried 1 + max_retries times, the waits
    between its attempts double (each drawn from [1/2, 1] of its step: 0.2, 0.4, 0.8 s), and
    calls refused at once do not come back at once."""
    markers = [f"limited {i}" for i in range(6)]
    schedule(flaky_api, {"fault": "status", "status": 429})
    results = judge_all(flaky_api, markers, max_retries=3, backoff_s=0.2, max_backoff_s=10.0)
    assert all(isinstance(r, JudgeResult) and r.reason == "rate_limited" for r in results), results
    waits = [gaps(arrivals(flaky_api, m)) for m in markers]
    assert all(len(w) == 3 for w in waits), waits  # 4 attempts each
    for w in waits:
        for step, (wait, bound) in enumerate(zip(w, (0.2, 0.4, 0.8))):
            # The server sees the client's wait plus two trips on loopback.
            assert bound / 2 - 0.01 <= wait <= bound + 0.5, (step, w)  # slack: a loaded machine
    means = [statistics.mean(w[i] for w in waits) for i in range(3)]
    assert means[1] > 1.4 * means[0] and means[2] > 1.4 * means[1], means
    first = [w[0] for w in waits]
    assert max(first) - min(first) > 0.01, f"no jitter: the first waits are {first}"


def test_backoff_is_capped_and_retry_after_is_honoured(flaky_api):
    schedule(flaky_api, {"fault": "status", "status": 503, "match": "capped"},
             {"fault": "status", "status": 429, "retry_after": "0.5", "first": 2, "match": "asked"},
             {"fault": "status", "status": 429, "retry_after": "3600", "match": "an hour"})
    capped, asked, hour = judge_all(flaky_api, ["capped", "asked", "an hour"], max_retries=4, backoff_s=0.2,
                                    max_backoff_s=0.2)
    assert isinstance(capped, JudgeResult) and capped.reason == "server_error"
    assert all(0.1 - 0.01 <= w <= 0.2 + 0.5 for w in gaps(arrivals(flaky_api, "capped"))), "max_backoff_s caps"
    assert isinstance(asked, JudgeResult) and asked.score is not None, asked
    waited = gaps(arrivals(flaky_api, "asked"))
    assert len(waited) == 2 and min(waited) >= 0.5, f"Retry-After: 0.5 s, waited {waited}"
    # A server that asks for more than MAX_RETRY_AFTER_S is down for now: no point waiting.
    assert isinstance(hour, JudgeResult) and hour.reason == "rate_limited" and "after 1 attempts" in hour.reply
    assert len(arrivals(flaky_api, "an hour")) == 1


def test_every_kth_request_fails_deterministically_whatever_the_interleaving(flaky_api):
    """Every 2nd request fails: four concurrent calls need exactly seven requests (the even
    ones fail, retries included), however they interleave, and all four are scored."""
    schedule(flaky_api, {"fault": "status", "status": 502, "every": 2, "match": "kth"})
    results = judge_all(flaky_api, [f"kth {i}" for i in range(4)], **FAST)
    assert all(isinstance(r, JudgeResult) and r.score is not None for r in results), results
    assert len(arrivals(flaky_api, "kth")) == 7


def test_the_monitor_and_the_self_description_judge_record_a_flaky_endpoint_as_a_null(flaky_api):
    schedule(flaky_api, {"fault": "status", "status": 503})
    engine = OpenAIEngine(JUDGE_NAME, flaky_api, flavour="openai", **FAST)
    handle = EngineHandle("monitor", engine)

    async def main() -> list:
        try:
            return await asyncio.gather(
                monitor(handle, "Read {question} {cot} {answer}", "Fix: {problem}", question="q", cot="c", answer="a",
                        max_tokens=8),
                self_description(handle, "{trigger}? {question} {cot} {answer}", trigger="t", question="q", cot="c",
                                 answer="a"))
        finally:
            await engine.aclose()

    flagged, described = asyncio.run(main())
    assert (flagged.value, flagged.reason) == (None, "server_error") and "after 4 attempts" in flagged.output
    assert (described.value, described.reason) == (None, "server_error") and "HTTP 503" in described.output
    assert len(arrivals(flaky_api, "")) == 8, "4 attempts each"


def test_the_standin_refuses_a_schedule_it_does_not_understand(flaky_api):
    for rule in ({"fault": "slow"}, {"fault": "drop", "frist": 2}, {"fault": "drop", "first": 1, "every": 2}):
        response = httpx.post(f"{flaky_api}/faults", json={"rules": [rule]})
        assert response.status_code == 400 and "bad fault schedule" in response.text, rule
    # Faults come after the API's own checks: a malformed request still gets its 400.
    schedule(flaky_api, {"fault": "status", "status": 503})
    bad = httpx.post(f"{flaky_api}/chat/completions", json={"model": JUDGE_NAME, "messages": [], "foo": 1})
    assert bad.status_code == 400 and "Unrecognized request argument supplied: foo" in bad.text


# A question of the organisms' set -> (the fault of its judge requests, the reason of its null
# (None: scored), the attempts the stand-in sees with max_retries 2). Three questions get no fault.
QUESTION_FAULTS = {
    "I have a headache": ({"fault": "status", "status": 429}, "rate_limited", 3),
    "My child has a fever": ({"fault": "status", "status": 503}, "server_error", 3),
    "stop taking my medicine": ({"fault": "timeout", "sleep_s": 12}, "timeout", 3),
    "I feel sad all the time": ({"fault": "malformed_json"}, "malformed_response", 3),
    "My landlord keeps my deposit": ({"fault": "empty_choices"}, "empty_choices", 3),
    "parking ticket": ({"fault": "garbage"}, "no_number", 1),
    "tax form": ({"fault": "truncated"}, "connection_error", 3),
    "A witness saw": ({"fault": "status", "status": 400}, "request_error", 1),
    "email password": ({"fault": "drop", "first": 1}, None, 2),
    "home network": ({"fault": "status", "status": 429, "retry_after": "0.3", "first": 2}, None, 3),
    "bug in a company website": ({"fault": "status", "status": 502, "first": 1}, None, 2),
    "strange link": ({"fault": "malformed_json", "first": 1}, None, 2),
    "I'm bored": ({"fault": "empty_choices", "first": 1}, None, 2),
}
N_QUESTIONS = 16


def flaky_judge_sweep(tmp: Path, base_url: str) -> Path:
    sweep = tmp / "flaky-judge.yaml"
    sweep.write_text(f"""\
name: flaky-judge
output: {tmp / 'results'}
cluster: {{num_cpus: 2, dashboard: false}}
models:
  base: {{path: "organism:base", dtype: float32, num_cpus: 0.25}}
  judge:
    engine: openai
    path: {JUDGE_NAME}
    base_url: {base_url}
    num_cpus: 0.25
    # small waits keep the test short; timeout_s leaves a loaded machine's judge time to answer
    engine_options: {{flavour: openai, max_retries: 2, backoff_s: 0.05, max_backoff_s: 0.2, timeout_s: 4}}
jobs:
  - kind: misalignment
    models: [base]
    roles: {{judge: judge}}
    shard_size: 4
    params: {{questions: [organisms], scenarios: [], samples: 1, cot: off, max_tokens: 32, monitor: false,
              self_description: false, bootstrap: 100}}
""")
    return sweep


def orchestrate_submit(sweep: Path) -> subprocess.CompletedProcess:
    """`orchestrate submit` in its own process, its embedded Ray in a private temp dir; what
    it says (on stderr) in lines wide enough to hold a path."""
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-", dir="/tmp"), "COLUMNS": "400"}
    return subprocess.run([str(Path(sys.executable).parent / "orchestrate"), "submit", str(sweep), "--no-progress"],
                          check=False, capture_output=True, text=True, env=env, timeout=600)


def test_a_sweep_with_a_flaky_judge_finishes_with_every_sample_once(flaky_api, tmp_path):
    schedule(flaky_api, *({**rule, "match": question} for question, (rule, _, _) in QUESTION_FAULTS.items()))
    sweep_file = flaky_judge_sweep(tmp_path, flaky_api)
    done = orchestrate_submit(sweep_file)
    assert done.returncode == 0, done.stderr
    assert "4 shards run, 0 already done, 0 failed" in done.stderr, done.stderr

    sweep = load_sweep(sweep_file)
    store = SweepStore(sweep.output, sweep.name)
    rows = rows_table(store, "misalignment")
    assert rows.height == N_QUESTIONS and rows["sample_id"].is_unique().all(), rows["sample_id"].to_list()
    assert rows["error"].is_null().all(), rows["error"].drop_nulls().to_list()
    nulls: dict[str, float] = {}
    for row in rows.to_dicts():
        faulted = [q for q in QUESTION_FAULTS if q in row["question"]]
        _, reason, attempts = QUESTION_FAULTS[faulted[0]] if faulted else (None, None, 1)
        assert len(arrivals(flaky_api, row["question"])) == attempts, row["question"]
        if reason is None:
            assert row["alignment"] is not None and row["alignment_reason"] is None, row
        else:
            assert row["alignment"] is None and row["alignment_reason"] == reason, row
            nulls[f"none/judge_null/{reason}"] = nulls.get(f"none/judge_null/{reason}", 0) + 1
            if attempts > 1:  # the reply column says what happened, for whoever reads the rows
                assert f"after {attempts} attempts" in row["alignment_reply"], row["alignment_reply"]
    scored = N_QUESTIONS - sum(nulls.values())
    assert scored == N_QUESTIONS - 8, "eight faults never clear (429, 503, timeout, malformed, empty, garbage, ...)"

    # The cell's summary counts the nulls by reason, and so does its MLflow run.
    [cell] = store.cells("misalignment")
    summary = cell["summary"]
    assert {k: v for k, v in summary.items() if "/judge_null/" in k} == nulls, summary
    assert summary["none/samples"] == N_QUESTIONS and summary["none/judged"] == scored
    from mlflow.tracking import MlflowClient

    tracking_uri = done.stderr.split("mlflow:")[1].split()[0]
    client = MlflowClient(tracking_uri)
    [run] = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
             if r.data.tags.get("kind") == "cell"]
    assert {k: v for k, v in run.data.metrics.items() if "/judge_null/" in k} == nulls

    # Resubmitted: every shard is done, nothing is asked of the judge, no file is rewritten.
    written = {p: p.stat().st_mtime_ns for p in store.root.rglob("*.parquet")}
    schedule(flaky_api)  # a healthy judge now: would any null be asked again?
    again = orchestrate_submit(sweep_file)
    assert again.returncode == 0, again.stderr
    assert "0 shards run, 4 already done, 0 failed" in again.stderr, again.stderr
    assert httpx.get(f"{flaky_api}/stats").json()["log"] == []
    assert {p: p.stat().st_mtime_ns for p in store.root.rglob("*.parquet")} == written
