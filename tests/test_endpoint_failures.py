"""A sweep against an API endpoint that misbehaves: real local Ray, a real openai-engine
replica, a real HTTP server on loopback. A rejected key fails the shards and writes nothing
(fix the key, resubmit, nothing is lost or doubled); a busy endpoint is retried without
replacing the replica that called it."""
from __future__ import annotations

import json
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestrator.load import load_sweep
from orchestrator.store import SweepStore
from orchestrator.submit import submit

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
    from orchestrator.results import rows_table

    rows = rows_table(store, "generate")
    assert rows.height == N_PROMPTS and rows["error"].is_null().all()
    assert rows["sample_id"].is_unique().all()
    # Usage counts the attempt that wrote the rows, not the retried ones: 5 + 1 tokens a prompt.
    [cell] = store.cells("generate")
    usage = {k: v for k, v in cell["summary"].items() if k.startswith("usage/")}
    assert usage == {"usage/subject/requests": N_PROMPTS, "usage/subject/prompt_tokens": 5 * N_PROMPTS,
                     "usage/subject/completion_tokens": N_PROMPTS}, usage
