"""Shared pytest fixtures: the two embedded models (loaded once per session) and tiny random models.

Tiny models use the real tokenizers' vocabularies so that tokenised text fits them.
"""

from __future__ import annotations

import contextlib
import copy
import itertools

import pytest
import torch

from idlora_core.models import LoadedModel, load_model


@pytest.fixture(scope="session")
def minilm() -> LoadedModel:
    """The real all-MiniLM-L6-v2 encoder (AutoModel), float32, eval mode. Do not modify it."""
    return load_model("minilm")


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


@pytest.fixture(scope="module")
def private_skeleton_cache(tmp_path_factory):
    """Point the library's cache at a fresh folder for one module (clustering runs for real)."""
    from idlora_core import models as catalog

    saved = catalog.CACHE_DIR
    catalog.CACHE_DIR = tmp_path_factory.mktemp("cache")
    yield catalog.CACHE_DIR
    catalog.CACHE_DIR = saved


@pytest.fixture(scope="module")
def one_thread():
    """Run one module with one torch / OpenMP / BLAS thread: small inputs are as fast, and far
    steadier when the CPU is shared."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)
