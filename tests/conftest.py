"""Shared fixtures: tiny random models of several families (float64, so that a tree forward and a
plain forward agree to the last bit and greedy ties cannot flip) and the bundled demo model."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub at test time: fail fast instead of retrying
# calibrations (Token Recycling's tree size) go to a fresh folder per test process, not ~/.cache
os.environ["TOKENFORGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="tokenforge-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from tokenforge.models.load import DEMO_DIR, LoadedModel, load_model  # noqa: E402

TINY_VOCAB = 96
# One thread per test process: the models here are small, `make test` runs two processes
# (pytest -n 2) on two cores, and two torch threads per process on a shared machine stall.
torch.set_num_threads(1)


def word_tokenizer(vocab_size: int = TINY_VOCAB) -> PreTrainedTokenizerFast:
    """One token per space-separated word w0..w{n-1}; w0 doubles as EOS."""
    vocab = {f"w{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="w0", unk_token="w1",
                                   pad_token="w0")


def tiny_model(family: str, vocab_size: int = TINY_VOCAB, seed: int = 0, eos: int | None = None,
               layers: int = 2, hidden: int = 32) -> LoadedModel:
    """A random model with peaked logits (large init) so that decoding is not uniform noise."""
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                  initializer_range=0.3)
    llama_like = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=2 * hidden,
                      max_position_embeddings=512, **common)
    if family == "gpt2":
        config = transformers.GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=512,
                                         **common)
    elif family == "gemma":
        config = transformers.GemmaConfig(head_dim=hidden // 4, **llama_like)
    elif family in FAMILY_CLASSES:
        config = getattr(transformers, FAMILY_CLASSES[family][0])(**llama_like)
    else:
        raise ValueError(family)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model = model.double().eval()
    return LoadedModel(model=model, tokenizer=word_tokenizer(vocab_size), name=f"tiny-{family}-{seed}")


FAMILY_CLASSES = {"llama": ("LlamaConfig",), "qwen2": ("Qwen2Config",),
                  "mistral": ("MistralConfig",), "phi3": ("Phi3Config",)}
FAMILIES = ("llama", "qwen2", "gpt2")  # the families most suites run on
ALL_FAMILIES = ("llama", "qwen2", "gpt2", "mistral", "phi3", "gemma")


@pytest.fixture(scope="session", params=FAMILIES)
def tiny(request) -> LoadedModel:
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def demo() -> LoadedModel:
    if not (DEMO_DIR / "demo" / "model.safetensors").exists():
        pytest.fail("the bundled demo model is missing: run `tokenforge train-demo`")
    return load_model("demo", device="cpu")


@pytest.fixture(scope="session")
def demo_draft() -> LoadedModel:
    return load_model("demo-draft", device="cpu")


def prompts(n: int, vocab_size: int = TINY_VOCAB, seed: int = 0) -> list[list[int]]:
    """n token-id prompts of 4-24 tokens; half repeat a phrase, so lookup drafters find matches."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(4, 25, (1,), generator=gen))
        ids = torch.randint(1, vocab_size, (length,), generator=gen).tolist()
        out.append(ids * 2 if i % 2 else ids)
    return out
