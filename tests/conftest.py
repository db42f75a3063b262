"""Shared pytest fixtures: the two embedded models (loaded once per session) and tiny random models.

Tiny models use the real tokenizers' vocabularies so that tokenised text fits them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock

from idlora_core.cache import cache_dir
from idlora_core.models import LoadedModel, load_model

REPO = Path(__file__).resolve().parents[1]
# where the dequantised SmolLM2 lives: the cache chosen when the session starts (before the
# session fixture below points results and skeletons at a temporary folder)
REPO_MODELS = cache_dir() / "models"


@pytest.fixture
def one_blas_thread():
    """One BLAS thread for the test: many small LAPACK calls only contend on a 2-core machine
    (modules that sweep use it with `pytestmark = pytest.mark.usefixtures("one_blas_thread")`)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="session")
def minilm() -> LoadedModel:
    """The real all-MiniLM-L6-v2 encoder (AutoModel), float32, eval mode. Do not modify it."""
    return load_model("minilm")


@pytest.fixture(scope="session")
def minilm_weights():
    """The WeightReader of all-MiniLM-L6-v2 (no model loaded; one weight read per call)."""
    from idlora_core.weights import open_weights

    return open_weights("minilm")


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real SmolLM2-135M-Instruct (causal LM), float32, eval mode. Do not modify it."""
    return load_model("smollm2-135m", head="causal-lm")


def make_tiny_bert(num_labels: int | None = None, seed: int = 0) -> torch.nn.Module:
    """A 2-layer BERT (hidden 32, vocab of MiniLM's tokenizer), randomly initialised with `seed`."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128,
    )
    if num_labels is None:
        return BertModel(config).eval()
    config.num_labels = num_labels
    return BertForSequenceClassification(config).eval()


def make_tiny_llama(seed: int = 0) -> torch.nn.Module:
    """A 2-layer Llama causal LM (hidden 32, vocab of SmolLM2's tokenizer), randomly initialised."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def write_sharded_llama(folder, dtype: str = "bf16", seed: int = 0, blocks: int = 2):
    """Write a tiny Llama causal LM (hidden 32, untied head) as sharded safetensors in `dtype`
    ("bf16" | "fp16" | "fp32") with model.safetensors.index.json and NO tokenizer files;
    return the folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=blocks,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(TORCH_DTYPES[dtype]).eval()
    model.save_pretrained(folder, max_shard_size="16KB")
    return folder


@pytest.fixture(scope="session")
def sharded_llama():
    """The function write_sharded_llama(folder, dtype, seed, blocks)."""
    return write_sharded_llama


@pytest.fixture
def tiny_bert() -> torch.nn.Module:
    return make_tiny_bert()


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    return make_tiny_llama()


def _save_tiny(model: torch.nn.Module, tokenizer_source: str, folder) -> str:
    from transformers import AutoTokenizer

    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    """A local model directory: make_tiny_llama() with SmolLM2's tokenizer (and chat template)."""
    from idlora_core.models import resolve_source

    return _save_tiny(make_tiny_llama(), resolve_source("smollm2-135m")[1],
                      tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """A local model directory: make_tiny_bert(num_labels=2) with MiniLM's tokenizer."""
    from idlora_core.models import minilm_dir

    return _save_tiny(make_tiny_bert(num_labels=2), str(minilm_dir()), tmp_path_factory.mktemp("tiny-bert"))


@contextlib.contextmanager
def shared_weight_copy(model: torch.nn.Module):
    """Yield a copy of `model` whose modules are new but whose parameters and buffers are the
    original tensors (no memory copy), for adapting a session model cheaply. The requires_grad
    flags, which adapters change, are restored on exit; the tensors' values must not be modified."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    try:
        yield copy.deepcopy(model, memo)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def fresh_cache_dir(folder: Path) -> Path:
    """Make `folder` an empty cache whose `models/` links to the repository's model cache
    (the dequantised SmolLM2 is immutable: no test re-creates it). Returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    REPO_MODELS.mkdir(parents=True, exist_ok=True)
    (folder / "models").symlink_to(REPO_MODELS, target_is_directory=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _temporary_cache(tmp_path_factory):
    """The whole test session (and every subprocess it starts) caches results and skeletons in a
    temporary folder, never in the repository's `cached/`."""
    saved = os.environ.get("IDLORA_CACHE_DIR")
    os.environ["IDLORA_CACHE_DIR"] = str(fresh_cache_dir(tmp_path_factory.mktemp("cache")))
    yield Path(os.environ["IDLORA_CACHE_DIR"])
    if saved is None:
        os.environ.pop("IDLORA_CACHE_DIR", None)
    else:
        os.environ["IDLORA_CACHE_DIR"] = saved


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    """A cache folder of this test's own (no entry from any other test); returns it."""
    folder = fresh_cache_dir(tmp_path / "cache")
    monkeypatch.setenv("IDLORA_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def private_skeleton_cache(tmp_path_factory):
    """Point the library's cache at a fresh folder for one module (clustering runs for real)."""
    with pytest.MonkeyPatch.context() as patch:
        folder = fresh_cache_dir(tmp_path_factory.mktemp("cache"))
        patch.setenv("IDLORA_CACHE_DIR", str(folder))
        yield folder


@contextlib.contextmanager
def single_thread():
    """One torch / OpenMP / BLAS thread inside the block (the previous counts come back after).

    Small inputs are as fast on one thread, and far steadier when the CPU is shared: a parallel
    region waits until both threads are scheduled, so on a busy 2-core machine a tiny model's
    training test took 147 s with two threads and 28 s with one."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """Run one module with one torch / OpenMP / BLAS thread (`single_thread`)."""
    with single_thread():
        yield


def write_study_yaml(path: Path, model_dir: str, steps: int = 2, **grid) -> Path:
    """Write a study of `model_dir` (ID-LoRA r=2 k=2 on `query`, sentiment 16 / 16 examples,
    `steps` steps of 4) over methods idlora, lora, head-only and base, seed 0; `grid` adds or
    replaces grid keys. Returns `path`."""
    data = {
        "base": {"model": {"name": model_dir},
                 "adapter": {"method": "idlora", "targets": [{"pattern": "query", "r": 2, "k": 2}]},
                 "tasks": [{"name": "sentiment", "num_train": 16, "num_eval": 16}],
                 "train": {"steps": steps, "batch_size": 4, "seq_len": 24, "learning_rate": 0.01,
                           "eval_interval": 0, "save_interval": 0}},
        "grid": {"method": ["idlora", "lora", "head-only", "base"], "r": [2], "seed": [0], **grid},
        "metric": "eval_sentiment_accuracy",
    }
    path.write_text(yaml.safe_dump(data))
    return path


def study_cli(args: list[str], tmp_path: Path, **kw) -> subprocess.Popen:
    """Start `python -m idlora_core.study ARGS` (one thread a process, cache under `tmp_path`,
    2-s heartbeats); stdout and stderr together as text."""
    env = dict(os.environ, PYTHONPATH=str(REPO), IDLORA_CACHE_DIR=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1", IDLORA_STUDY_HEARTBEAT_S="2")
    return subprocess.Popen([sys.executable, "-m", "idlora_core.study", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@dataclasses.dataclass
class FinishedStudy:
    """A study folder `out` = `root`/studies/tiny (`root` serves as IDLORA_RUNS_DIR) and the
    output `log` of the command that ran it."""

    root: Path
    out: Path
    log: str


@pytest.fixture(scope="session")
def finished_tiny_study(tiny_bert_dir, tmp_path_factory, worker_id) -> FinishedStudy:
    """A study run once a test run by the real command with 2 workers on the tiny BERT: idlora,
    lora and head-only at learning rates 0.01 and 0.03, and base, each on seeds 0 and 1
    (14 trials). Read (never written) by tests/idlora_core/study/test_run.py and
    tests/app/test_studies_page.py. Under pytest-xdist the first worker that needs it builds it
    in the run's shared temporary folder, under a file lock, and the others read it."""
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent
    root = shared / "finished-tiny-study"
    out, done = root / "studies" / "tiny", shared / "finished-tiny-study.log"
    with FileLock(str(shared / "finished-tiny-study.lock")):
        if not done.is_file():
            shutil.rmtree(root, ignore_errors=True)  # a build that failed half-way
            root.mkdir(parents=True)
            spec = write_study_yaml(root / "tiny.yaml", tiny_bert_dir, learning_rate=[0.01, 0.03], seed=[0, 1])
            proc = study_cli([str(spec), "--out", str(out), "--workers", "2"], root)
            log, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, log
            done.write_text(log, encoding="utf-8")
    return FinishedStudy(root, out, done.read_text(encoding="utf-8"))
