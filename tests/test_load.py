"""Model loading: bundled models, local directories, and the clear errors for everything else."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import tiny_model
from tokenforge.errors import ModelLoadError
from tokenforge.models.load import DEMO_MODELS, _hub_unreachable, load_model


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    loaded = tiny_model("qwen2")
    path = tmp_path_factory.mktemp("tiny")
    loaded.model.save_pretrained(path, safe_serialization=True)
    loaded.tokenizer.save_pretrained(path)
    return path


def test_local_directory_loads_with_safe_defaults(saved_tiny):
    loaded = load_model(str(saved_tiny), device="cpu", dtype="float32")
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert loaded.context_length == 512
    assert not loaded.model.training


def test_bundled_models_load():
    for name in DEMO_MODELS:
        loaded = load_model(name, device="cpu")
        assert loaded.name == name and loaded.dtype == torch.float32
        assert loaded.context_length >= 1024
        assert len(loaded.tokenizer) <= loaded.model.get_input_embeddings().num_embeddings


def test_missing_path():
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("./no/such/model")


def test_unknown_hub_id_names_the_cause():
    with pytest.raises(ModelLoadError, match="unknown model 'someone/not-a-model'.*hub"):
        load_model("someone/not-a-model")


def test_a_silent_hub_is_given_up_on_quickly(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    def silent(*args, **kwargs):
        time.sleep(1)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    start = time.monotonic()
    assert _hub_unreachable(timeout=0.2) == f"no connection to {constants.ENDPOINT} within 0.2s"
    assert time.monotonic() - start < 0.9
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert _hub_unreachable(timeout=0.2) is None  # behind a proxy the hub client decides


def test_truncated_weights_are_named(saved_tiny, tmp_path):
    model = shutil.copytree(saved_tiny, tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="weights file of .* is corrupt or truncated"):
        load_model(str(model))


def test_pickle_weights_are_refused(saved_tiny, tmp_path):
    (tmp_path / "config.json").write_text((saved_tiny / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="safetensors only"):
        load_model(str(tmp_path))


def test_not_a_causal_lm(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2,
                                     hidden_dim=32)).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_model(str(tmp_path))


def test_vocabulary_mismatch(saved_tiny, tmp_path):
    from tests.conftest import word_tokenizer

    small = tiny_model("llama", vocab_size=32)
    small.model.save_pretrained(tmp_path)
    word_tokenizer(96).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="vocabulary mismatch"):
        load_model(str(tmp_path))


def test_bad_device_and_dtype(saved_tiny):
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model(str(saved_tiny), dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            load_model(str(saved_tiny), device="cuda")


@pytest.mark.parametrize("args, words", [
    (["generate", "--model", "./missing", "x"], "does not exist"),
    (["generate", "--method", "nope", "w1"], "unknown method"),
    (["generate", "--max-new-tokens", "0", "x"], "max_new_tokens"),
])
def test_cli_prints_error_without_traceback(args, words):
    proc = subprocess.run([sys.executable, "-m", "tokenforge", *args], capture_output=True,
                          text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert proc.returncode != 0
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr
