"""Secrets and trust: a sweep's API key is read from the environment variable the sweep names
and lands nowhere else; YAML is loaded safely; a model's own code runs only when the sweep
says so; the embedded Ray's dashboard listens on loopback and Ray token authentication is
never switched off.

The key test runs a real sweep (`orchestrate submit` in its own process, a private Ray temp
dir) with two `openai` engine models against the strict stand-in of OpenAI's API: one it
answers, one whose requests it rejects (vLLM fields sent to OpenAI's API, 400). A sentinel key
is then searched for in every file under the results folder (Parquet read as tables, the
MLflow sqlite db and artifacts, submission.json, cell manifests), the submit's stdout and
stderr, every file of the Ray session, and the traceback and pickled form of a rejected
request's error. A canary in the prompts must be found in the rows: the search can find.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import traceback
import uuid
from pathlib import Path

import cloudpickle
import pyarrow.parquet as pq
import pytest

from actors.engines.openai.engine import OpenAIEngine
from actors.engines.protocol import Request, Sampling
from actors.errors import RequestError
from orchestrator.errors import SpecError
from orchestrator.load import load_sweep, parse_sweep
from orchestrator.plan import make_plan
from tests.conftest import free_port, serving

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "ORCHESTRATE_TEST_API_KEY"


def occurrences(root: Path, needle: str) -> list[str]:
    """Files under `root` holding `needle`: Parquet by its values (its pages are compressed),
    everything else by its bytes."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.suffix == ".parquet":
            if needle in json.dumps(pq.read_table(path).to_pylist(), default=str):
                found.append(str(path))
        elif needle.encode() in path.read_bytes():
            found.append(str(path))
    return found


@pytest.fixture(scope="module")
def openai_api(tmp_path_factory: pytest.TempPathFactory) -> str:
    port = free_port()
    log = tmp_path_factory.mktemp("openai-standin") / "server.log"
    command = [sys.executable, "-m", "tests.standins.openai_api", "--model", "organism:judge",
               "--name", "gpt-4.1", "--port", str(port)]
    with serving(command, port, log, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, ready_s=300) as url:
        yield url


def test_an_api_key_lands_nowhere(tmp_path: Path, openai_api: str) -> None:
    key = f"sk-sentinel-{uuid.uuid4().hex}"
    canary = f"canary-{uuid.uuid4().hex[:12]}"
    (tmp_path / "prompts.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "prompt": f"What is {i} plus {i}? ({canary})"}) + "\n" for i in range(3)))
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(textwrap.dedent(f"""\
        name: secrets
        output: {tmp_path / 'results'}
        cluster: {{num_cpus: 2, dashboard: true}}
        models:
          answered: {{engine: openai, path: gpt-4.1, base_url: "{openai_api}", api_key_env: {KEY_ENV},
                     num_cpus: 0.5, engine_options: {{flavour: openai, max_retries: 0}}}}
          rejected: {{engine: openai, path: gpt-4.1, base_url: "{openai_api}", api_key_env: {KEY_ENV},
                     num_cpus: 0.5, engine_options: {{flavour: vllm, max_retries: 0}}}}
        jobs:
          - kind: generate
            models: [answered, rejected]
            params: {{prompts: prompts.jsonl, max_tokens: 8, temperature: 0, thinking: false}}
        """))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rays-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, KEY_ENV: key, "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(Path(sys.executable).parent / "orchestrate"), "submit", str(sweep_file)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    output = done.stdout + done.stderr
    results = tmp_path / "results" / "secrets"
    assert (results / "submission.json").exists(), output[-4000:]

    # The run did what the test needs: rows that answered, rows the stand-in refused, MLflow, a Ray session.
    rows = [r for f in results.rglob("_stages/*/*/*.parquet") for r in pq.read_table(f).to_pylist()]
    answered = [r for r in rows if r["model"] == "answered"]
    refused = [r for r in rows if r["model"] == "rejected"]
    assert len(answered) == 3 and all(r["error"] is None for r in answered), output[-4000:]
    assert len(refused) == 3 and all("400" in (r["error"] or "") or "Unrecognized" in (r["error"] or "")
                                     for r in refused), [r["error"] for r in refused]
    assert (results / "mlflow.db").exists()
    sessions = list(ray_tmp.rglob("session_*/logs"))
    assert sessions and any(p.is_file() for p in sessions[0].iterdir()), "the Ray session left no logs to search"
    assert occurrences(results, canary), "the search cannot find what is there"

    # The dashboard of the embedded Ray listens on loopback only.
    dashboard = [line for line in output.splitlines() if line.startswith("Ray dashboard:")]
    assert dashboard and dashboard[0].split()[-1].startswith("http://127.0.0.1:"), dashboard or output[-2000:]

    assert key not in output
    assert occurrences(results, key) == []
    assert occurrences(ray_tmp, key) == []
    shutil.rmtree(ray_tmp, ignore_errors=True)
    sweep = load_sweep(sweep_file)
    manifests = json.dumps([c.manifest() for c in make_plan(sweep).cells])
    assert key not in repr(sweep) and key not in str(sweep) and key not in manifests

    # A request the stand-in rejects, made in this process with the key in the environment:
    # neither its traceback nor the error as it crosses to the driver (pickled) holds the key.
    os.environ[KEY_ENV] = key
    try:
        engine = OpenAIEngine("gpt-4.1", openai_api, KEY_ENV, flavour="vllm")
        request = Request.chat("hi", thinking=False, sampling=Sampling(max_tokens=4))  # vLLM's switch: a 400
        with pytest.raises(RequestError) as caught:
            asyncio.run(engine.generate(request))
    finally:
        del os.environ[KEY_ENV]
    text = "".join(traceback.format_exception(caught.value))
    assert "chat_template_kwargs" in text, text
    assert key not in text and key.encode() not in cloudpickle.dumps(caught.value)
    assert key not in repr(engine)


def test_yaml_tags_are_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"name: !!python/object/apply:os.system ['touch {marker}']\nmodels: {{}}\njobs: []\n"
    with pytest.raises(SpecError, match=r"sweep.yaml:1: the YAML tag !!python/object/apply:os.system is not allowed"):
        parse_sweep(text, "sweep.yaml", tmp_path)
    assert not marker.exists()


def custom_code_model(folder: Path, tiny_model: Path, marker: Path) -> Path:
    """A model folder whose config names its own code (auto_map), which leaves `marker` when run."""
    folder.mkdir()
    for f in tiny_model.iterdir():
        if f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="orchestrate-custom", auto_map={"AutoConfig": "custom.CustomConfig",
                                                             "AutoModelForCausalLM": "custom.CustomModel"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(textwrap.dedent(f"""\
        import pathlib
        from transformers import LlamaConfig, LlamaForCausalLM
        pathlib.Path({str(marker)!r}).write_text("the model's own code ran")
        class CustomConfig(LlamaConfig):
            model_type = "orchestrate-custom"
        class CustomModel(LlamaForCausalLM):
            config_class = CustomConfig
        """))
    return folder


@pytest.mark.parametrize("trust", [None, False, True])
def test_a_models_own_code_runs_only_when_the_sweep_says_so(tmp_path: Path, tiny_model: Path,
                                                            trust: bool | None) -> None:
    """The path a replica takes: the sweep's entry -> serving_spec -> build_engine."""
    from actors.engines.factory import build_engine
    from orchestrator.serving import serving_spec

    marker = tmp_path / "ran"
    folder = custom_code_model(tmp_path / "model", tiny_model, marker)
    setting = "" if trust is None else f", trust_remote_code: {str(trust).lower()}"
    sweep = parse_sweep(f"name: t\nmodels:\n  m: {{path: {folder}, dtype: float32{setting}}}\n"
                        "jobs:\n  - kind: generate\n    models: [m]\n    params: {prompts: [hi]}\n",
                        "sweep.yaml", tmp_path)
    spec = serving_spec(sweep.models["m"])
    assert spec["trust_remote_code"] is bool(trust)
    if trust:
        build_engine(spec)
        assert marker.exists(), "trust_remote_code: true did not reach the loader"
    else:
        with pytest.raises(ValueError, match="trust_remote_code"):
            build_engine(spec)
        assert not marker.exists(), "the model's own code ran without the sweep asking"


def test_ray_token_authentication_is_never_switched_off(tmp_path: Path) -> None:
    """With a token at hand and nothing said, joining a cluster turns token auth on; a user's
    RAY_AUTH_MODE=token stays. Each in a fresh process: Ray caches its config per process."""
    token = tmp_path / "auth_token"
    token.write_text(uuid.uuid4().hex)
    probe = ("import os; from cluster.connect import enable_token_auth_for; "
             "print(enable_token_auth_for('10.0.0.1:6379'), os.environ.get('RAY_AUTH_MODE'))")
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    for extra, expected in (({"RAY_AUTH_TOKEN_PATH": str(token)}, "True token"),
                            ({"RAY_AUTH_MODE": "token"}, "True token")):
        done = subprocess.run([sys.executable, "-c", probe], env={**base, **extra, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.stdout.strip() == expected, done.stderr[-2000:]
    source = (ROOT / "cluster" / "connect.py").read_text()
    assert '"disabled"' not in source and "'disabled'" not in source, "connect.py switches token auth off"
