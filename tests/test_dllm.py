"""The diffusion family: the bidirectional forward and its caches, the one loop, every registered
decoder, the reference decoder against a straightforward implementation, routing and the bench."""

from __future__ import annotations

import json

import pytest
import torch

from tokenforge.decoding.api import generate
from tokenforge.dllm.api import diffuse, make_decoder
from tokenforge.dllm.model import DLLM_KEY, MASK_TOKEN, DiffusionLM, is_dllm_checkpoint
from tokenforge.dllm.registry import all_decoders
from tokenforge.errors import InvalidOptionError, PromptError
from tokenforge.models.load import DEMO_DIR, LoadedModel, load_model

PROMPT = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n"


def tiny_dllm(seed: int = 0, peak: float = 8.0) -> LoadedModel:
    """A random 2-layer diffusion Llama on demo's tokenizer; `peak` scales the output layer so
    that predictions are confident enough for the threshold rules to commit several at once."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR / "demo")
    tokenizer.add_special_tokens({"additional_special_tokens": [MASK_TOKEN]})
    mask = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    setattr(config, DLLM_KEY, {"mask_token_id": mask, "shift": True, "train_len": 128})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(peak)
    return LoadedModel(model, tokenizer, "tiny-dllm")


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return tiny_dllm()


@pytest.fixture(scope="module")
def dlm(tiny) -> DiffusionLM:
    return DiffusionLM(tiny)


def canvas(dlm: DiffusionLM, masks: int = 24) -> torch.Tensor:
    ids = dlm.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids + [dlm.mask_id] * masks)


def test_forward_is_the_transformers_model_with_full_attention(dlm):
    ids = canvas(dlm)[None]
    n = ids.shape[1]
    mine = dlm.logits(dlm.forward(ids, torch.arange(n)).hidden)
    full = dlm.model(input_ids=ids, attention_mask=torch.ones(1, 1, n, n, dtype=torch.bool)).logits
    causal = dlm.model(input_ids=ids).logits
    torch.testing.assert_close(mine, full.float(), rtol=1e-4, atol=1e-4)
    assert (mine - causal).abs().max() > 1e-2  # really bidirectional


@pytest.mark.parametrize("keep", ["prefix", "dual"])
def test_a_cache_from_the_same_canvas_gives_the_full_forward(dlm, keep):
    ids = canvas(dlm)
    start, stop = len(ids) - 24, len(ids) - 16
    full, out = dlm.predict(ids, start, stop, collect=True)
    pos = out.cache.positions
    first = start - 1  # shifted: position p is predicted from p - 1
    cached = out.cache.select(pos < first) if keep == "prefix" else \
        out.cache.select((pos < first) | (pos >= stop))
    until = len(ids) if keep == "prefix" else None
    logits, _ = dlm.predict(ids, start, stop, cached, until)
    torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-4)


def test_the_dual_cache_drifts_once_the_block_changes(dlm):
    """Fast-dLLM's caches are approximate: after the block's first commits, the cached suffix was
    computed against the old block. The drift is real and measurable."""
    ids = canvas(dlm)
    start, stop = len(ids) - 24, len(ids) - 16
    _, out = dlm.predict(ids, start, stop, collect=True)
    pos = out.cache.positions
    cached = out.cache.select((pos < start - 1) | (pos >= stop))
    ids[start:start + 4] = torch.tensor([11, 12, 13, 14])
    exact, _ = dlm.predict(ids, start, stop)
    approx, _ = dlm.predict(ids, start, stop, cached)
    assert (exact - approx).abs().max() > 1e-4


@pytest.mark.parametrize("method", [m.name for m in all_decoders()])
def test_every_decoder_fills_every_mask_and_terminates(tiny, method):
    result = diffuse(tiny, PROMPT, method, gen_length=20, block_length=8)
    assert len(result.canvas) == 20 and MASK_TOKEN not in result.text
    assert tiny.tokenizer.convert_tokens_to_ids(MASK_TOKEN) not in result.canvas
    s = result.stats
    assert 1 <= s.target_forwards and s.tokens_forwarded >= s.target_forwards
    assert s.new_tokens == len(result.token_ids) <= 20
    assert s.finish_reason in ("length", "eos")


def reference_llada(model, tokenizer, prompt_ids: list[int], gen_length: int, block: int,
                    mask_id: int) -> list[int]:
    """LLaDA at one token per step, written out plainly on transformers' forward with a full
    attention mask: each step, the most confident masked position of the block is filled."""
    x = torch.tensor(prompt_ids + [mask_id] * gen_length)
    for start in range(len(prompt_ids), len(x), block):
        stop = min(start + block, len(x))
        while (x[start:stop] == mask_id).any():
            n = len(x)
            logits = model(input_ids=x[None], attention_mask=torch.ones(1, 1, n, n,
                                                                        dtype=torch.bool)).logits[0]
            logits = torch.cat([logits[:1], logits[:-1]])  # position p from output p - 1
            probs = torch.softmax(logits.float(), -1)
            conf, tok = probs.max(-1)
            conf[:start] = -1
            conf[stop:] = -1
            conf[x != mask_id] = -1
            best = int(conf.argmax())
            x[best] = tok[best]
    return x[len(prompt_ids):].tolist()


def test_llada_at_one_token_per_step_is_the_straightforward_algorithm(tiny, dlm):
    ids = tiny.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = reference_llada(tiny.model, tiny.tokenizer, ids, 12, 4, dlm.mask_id)
    result = diffuse(tiny, ids, "llada", gen_length=12, block_length=4)
    assert result.canvas == expected
    assert result.stats.target_forwards == 12 and result.stats.forwards_per_token == 1.0


def test_fast_dllm_threshold_decides_how_many_per_step(tiny):
    every = diffuse(tiny, PROMPT, "fast-dllm", gen_length=16, block_length=8, threshold=1e-9,
                    cache="none")
    assert every.stats.target_forwards == 2  # each block in one step
    one = diffuse(tiny, PROMPT, "fast-dllm", gen_length=16, block_length=8, threshold=1.0,
                  cache="none")
    assert one.stats.target_forwards == 16  # nothing reaches 1.0: the best one per step
    llada = diffuse(tiny, PROMPT, "llada", gen_length=16, block_length=8)
    assert one.canvas == llada.canvas


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_fast_dllm_caches_spend_fewer_query_tokens(tiny, cache):
    none = diffuse(tiny, PROMPT, "fast-dllm", gen_length=24, block_length=8, cache="none")
    cached = diffuse(tiny, PROMPT, "fast-dllm", gen_length=24, block_length=8, cache=cache)
    assert cached.stats.full_forwards == 3  # one per block
    per_forward = cached.stats.tokens_forwarded / cached.stats.target_forwards
    assert per_forward < none.stats.tokens_forwarded / none.stats.target_forwards


def test_options_and_inputs_are_checked(tiny):
    with pytest.raises(InvalidOptionError, match="threshold"):
        make_decoder("fast-dllm", threshold=0)
    with pytest.raises(InvalidOptionError, match="unknown option"):
        make_decoder("llada", depth=2)
    with pytest.raises(InvalidOptionError, match="cache must be one of"):
        make_decoder("fast-dllm", cache="half")
    with pytest.raises(PromptError, match="exceed"):
        diffuse(tiny, PROMPT, "llada", gen_length=400)
    with pytest.raises(InvalidOptionError, match="gen_length"):
        diffuse(tiny, PROMPT, "llada", gen_length=0)


def test_generate_routes_diffusion_models_and_refuses_mismatches(tiny):
    result = generate(tiny, PROMPT, method="fast-dllm", max_new_tokens=8, block_length=8)
    assert len(result.canvas) == 8 and result.method == "fast-dllm"
    with pytest.raises(InvalidOptionError, match="autoregressive method"):
        generate(tiny, PROMPT, method="pld", max_new_tokens=8)
    with pytest.raises(InvalidOptionError, match="do not take stop"):
        generate(tiny, PROMPT, method="llada", max_new_tokens=8, stop="\n")
    demo = load_model("demo")
    with pytest.raises(InvalidOptionError, match="masked-diffusion models"):
        generate(demo, PROMPT, method="llada", max_new_tokens=8)


def test_bench_compares_settings_to_the_reference(tmp_path, tiny):
    from tokenforge.dllm.bench import DiffusionBenchConfig, run_diffusion_bench, write_outputs

    tiny.model.save_pretrained(tmp_path / "tiny")
    tiny.tokenizer.save_pretrained(tmp_path / "tiny")
    assert is_dllm_checkpoint(str(tmp_path / "tiny")) and not is_dllm_checkpoint("demo")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": PROMPT + "    x" * i}) for i in range(2)))
    config = DiffusionBenchConfig(str(tmp_path / "tiny"), ["fast-dllm", "fast-dllm:cache=none",
                                                           "vanilla"], str(prompts),
                                  gen_length=16, device="cpu", warmup=0)
    data = run_diffusion_bench(config, progress=False)
    rows = {r["label"]: r for r in data["settings"]}
    assert list(rows) == ["llada:tokens_per_step=1", "fast-dllm", "fast-dllm:cache=none",
                          "vanilla"]
    ref = rows["llada:tokens_per_step=1"]
    assert ref["agreement"] == 1.0 and ref["forwards_per_token"] == 1.0
    assert rows["fast-dllm"]["forwards_per_token"] <= 1.0
    assert 0.0 <= rows["fast-dllm"]["cache_agreement"] <= 1.0
    assert "cache_agreement" not in rows["fast-dllm:cache=none"]
    assert rows["vanilla"]["family"] == "ar" and rows["vanilla"]["tokens_forwarded_per_token"] > 0
    write_outputs(data, tmp_path / "out", "tokenforge bench ...")
    assert (tmp_path / "out" / "speed_quality.png").stat().st_size > 0
    assert "| fast-dllm |" in (tmp_path / "out" / "report.md").read_text()


def test_elastic_cache_refreshing_every_layer_every_step_is_the_uncached_forward(tiny):
    exact = diffuse(tiny, PROMPT, "fast-dllm", gen_length=24, block_length=8, threshold=0.5,
                    cache="none")
    always = diffuse(tiny, PROMPT, "elastic-cache", gen_length=24, block_length=8,
                     threshold=0.5, gamma=1.0)
    assert always.canvas == exact.canvas
    assert always.stats.extra["refreshes"] > 0


def test_elastic_cache_refreshes_only_on_drift():
    """On the trained demo-dllm the probe's attention moves as the block fills (a random model's
    hardly does): a strict gamma refreshes, a loose one never does and is then the dual cache."""
    model = load_model("demo-dllm")
    loose = diffuse(model, PROMPT, "elastic-cache", gen_length=16, block_length=16, gamma=0.01)
    dual = diffuse(model, PROMPT, "fast-dllm", gen_length=16, block_length=16)
    assert loose.stats.extra.get("refreshes", 0) == 0
    assert loose.canvas == dual.canvas
    tight = diffuse(model, PROMPT, "elastic-cache", gen_length=16, block_length=16, gamma=0.999)
    refreshes = tight.stats.extra["refreshes"]
    assert 0 < refreshes < tight.stats.target_forwards
    assert 0 < tight.stats.extra["refreshed_layers"] < 6 * refreshes  # some kept shallow layers


def constant_filter(path, logit: float) -> str:
    from safetensors.torch import save_file

    from tokenforge.dllm.decoders.learn2pd import Filter

    net = Filter()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.net[-1].bias.fill_(logit)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return str(path)


def test_learn2pd_commits_what_its_filter_accepts(tiny, tmp_path):
    accept = constant_filter(tmp_path / "yes.safetensors", 10.0)
    refuse = constant_filter(tmp_path / "no.safetensors", -10.0)
    greedy = diffuse(tiny, PROMPT, "learn2pd", gen_length=16, block_length=8, filter=accept,
                     end_of_text=False, cache="none")
    assert greedy.stats.target_forwards == 2  # every position of a block at once
    careful = diffuse(tiny, PROMPT, "learn2pd", gen_length=16, block_length=8, filter=refuse,
                      end_of_text=False, cache="none")
    assert careful.canvas == diffuse(tiny, PROMPT, "llada", gen_length=16, block_length=8).canvas
    with pytest.raises(InvalidOptionError, match="no filter"):
        make_decoder("learn2pd", filter=str(tmp_path / "missing.safetensors"))


def test_learn2pd_stops_at_the_end_of_text(tmp_path):
    class EndsAtOnce(DiffusionLM):  # a model that always predicts EOS
        def logits(self, hidden):
            out = super().logits(hidden)
            out[..., self.eos_id] += 100.0
            return out

    loaded = EndsAtOnce(tiny_dllm(seed=1))
    eos = loaded.eos_id
    accept = constant_filter(tmp_path / "yes.safetensors", 10.0)
    stop = diffuse(loaded, PROMPT, "learn2pd", gen_length=32, block_length=8, filter=accept)
    assert stop.stats.finish_reason == "eos" and stop.canvas == [eos] * 32
    assert stop.stats.target_forwards == 1 and stop.token_ids == [] and stop.text == ""
    on = diffuse(loaded, PROMPT, "learn2pd", gen_length=32, block_length=8, filter=accept,
                 end_of_text=False)
    assert on.stats.target_forwards == 4 and on.canvas == stop.canvas


def test_learn2pd_oracle_trace_labels_predictions_against_the_reference(tiny):
    from tokenforge.dllm.decoders.learn2pd import FEATURES, features, oracle_trace

    ids = tiny.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    x, y = oracle_trace(DiffusionLM(tiny), ids, 8, 4)
    assert x.shape[1] == len(FEATURES) and len(x) == len(y) >= 8
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    f = features(torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), torch.tensor([True, True]))
    assert f[0, 0] > f[1, 0] and f[1, 1] == 0  # confidence, and a flat row has no margin


def view_of(probabilities: list[float], start: int = 0, step: int = 0):
    """A BlockView over a two-token vocabulary whose first token has these probabilities."""
    from tokenforge.dllm.loop import BlockView, Canvas, Sampler

    p = torch.tensor(probabilities)
    logits = torch.stack([p.log(), (1 - p).log()], dim=1)
    masked = torch.ones(len(p), dtype=torch.bool)
    return BlockView(logits, masked, start, step, Canvas(torch.zeros(4), 0, 1), Sampler())


def test_credit_lifts_a_prediction_that_stays_until_it_passes_the_threshold():
    from tokenforge.dllm.decoders.credit import CreditOptions, CreditRule
    from tokenforge.dllm.decoders.fast_dllm import ThresholdRule

    rule, plain = CreditRule(CreditOptions()), ThresholdRule(0.9)
    steps = [bool(rule.select(view_of([0.8], step=i))[1][0]) for i in range(4)]
    # alpha 0.7, beta 0.8, gamma 0.2: fused confidence 0.865, 0.890, 0.903, ...
    assert steps == [False, False, True, True]
    assert not plain.select(view_of([0.8]))[1][0]
    rule.select(view_of([0.8], start=40))  # a new block starts with no credit
    assert not rule.select(view_of([0.8], start=80))[1][0]


def test_a_reused_decoder_starts_each_generation_afresh(tiny):
    """Rules keep state (a random generator, credits): reusing a decoder, as the bench does,
    must give what a fresh one gives."""
    from tokenforge.dllm.decoders.credit import CreditOptions, CreditRule

    decoder = make_decoder("llada", block_length=16, remasking="random")
    first = diffuse(tiny, PROMPT, "llada", gen_length=16, decoder=decoder)
    again = diffuse(tiny, PROMPT, "llada", gen_length=16, decoder=decoder)
    fresh = diffuse(tiny, PROMPT, "llada", gen_length=16, block_length=16, remasking="random")
    assert first.canvas == again.canvas == fresh.canvas
    rule = CreditRule(CreditOptions())
    for step in range(3):  # the third step commits on credit
        rule.select(view_of([0.8], step=step))
    rule.begin(None, None, 32)  # a new generation whose first block starts where this one did
    assert not rule.select(view_of([0.8]))[1][0]


def test_localleap_relaxes_the_threshold_near_anchors_only():
    from tokenforge.dllm.decoders.localleap import LocalLeapOptions, LocalLeapRule

    rule = LocalLeapRule(LocalLeapOptions(radius=2))
    _, commit = rule.select(view_of([0.95, 0.8, 0.5, 0.8, 0.8, 0.8, 0.97, 0.6]))
    assert commit.tolist() == [True, True, False, False, True, True, True, False]
    _, none = rule.select(view_of([0.8, 0.8, 0.8]))  # no anchor: nothing relaxed
    assert not none.any()
    with pytest.raises(InvalidOptionError, match="must not exceed"):
        LocalLeapOptions(anchor=0.7, relaxed=0.8)


def test_the_cli_runs_diffusion_decoders_and_lists_them():
    import subprocess
    import sys

    env = {"HF_HUB_OFFLINE": "1", "PATH": "", "OMP_NUM_THREADS": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "tokenforge", *args], capture_output=True,
                              text=True, timeout=120, env=env)

    ok = cli("generate", "def area(r):\n", "--model", "demo-dllm", "--method", "fast-dllm",
             "--max-new-tokens", "16", "-o", "block_length=16")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("def area(r):\n") and "[fast-dllm] " in ok.stderr
    wrong = cli("generate", "x = 1", "--model", "demo-dllm", "--method", "pld")
    assert wrong.returncode == 2 and "autoregressive method" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    listing = cli("methods")
    assert "Masked-diffusion models" in listing.stdout
    assert all(m.name in listing.stdout for m in all_decoders())


def test_mdlm_loss_is_the_masked_cross_entropy_weighted_by_one_over_t(dlm):
    from tokenforge.dllm.train import mdlm_loss, training_masks

    x = canvas(dlm, masks=0)[None].repeat(2, 1)
    maskable = torch.ones_like(x, dtype=torch.bool)
    maskable[:, 0] = False
    with torch.no_grad():
        full = mdlm_loss(dlm, x, torch.ones(2), maskable)  # t = 1: every token masked
        logits = dlm.full_logits(torch.where(maskable, dlm.mask_id, x))
        expected = torch.nn.functional.cross_entropy(logits[maskable], x[maskable])
        torch.testing.assert_close(full, expected)
        gen = torch.Generator().manual_seed(3)
        half = mdlm_loss(dlm, x, torch.full((2,), 0.5), maskable, gen)
        draw = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
        masked = maskable & (draw < 0.5)
        logits = dlm.full_logits(torch.where(masked, dlm.mask_id, x))
        ce = torch.nn.functional.cross_entropy(logits[masked], x[masked], reduction="sum")
        torch.testing.assert_close(half, ce / 0.5 / maskable.sum())
    import numpy as np

    t, maskable = training_masks(64, 40, 1.0, np.random.default_rng(0))
    assert (t > 0).all() and (t <= 1).all() and not maskable[:, :5].any()  # prefixes >= L/8
    assert maskable[:, -1].all()


def test_the_shipped_demo_dllm_is_marked_documented_and_small():
    from tokenforge.dllm.train import DLLM_DIR, model_card

    record = json.loads((DLLM_DIR / "training.json").read_text())
    card = (DLLM_DIR / "MODEL_CARD.md").read_text()
    assert card == model_card(record)  # the card is what the builder writes
    assert record["file_bytes"] <= 20e6 and record["wall_time_s"] <= 3600
    assert record["heldout_elbo_bits_per_byte"] > record["demo_bits_per_byte"] > 0
    dlm = DiffusionLM(load_model("demo-dllm"))
    assert dlm.tokenizer.convert_ids_to_tokens(dlm.mask_id) == MASK_TOKEN and dlm.shift
    assert dlm.train_len == 512


def test_the_server_refuses_a_diffusion_model_in_one_line(tiny):
    from tokenforge.serve.app import create_app

    with pytest.raises(InvalidOptionError, match="masked-diffusion model; the server runs"):
        create_app(tiny)
