"""The benchmark harness: token counting shared by methods and transformers baselines, the
length-aware lossless check, results.json's schema, both dataset formats and clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_model
from tokenforge.bench import datasets, runner, system
from tokenforge.bench.cli import parse_method_options
from tokenforge.bench.datasets import Prompt, encode, load_dataset
from tokenforge.bench.modelled import modelled_speedup
from tokenforge.bench.replay import load_replay
from tokenforge.bench.report import (
    SCHEMA_VERSION,
    markdown_report,
    markdown_table,
    results_json,
    write_outputs,
)
from tokenforge.bench.runner import (
    BenchConfig,
    Decoded,
    MethodPlan,
    MethodResult,
    PromptResult,
    Selected,
    count_tokens,
    first_divergence,
    interleave,
    lossless_rate,
    plan_methods,
    run_bench,
    same_tokens,
    score,
)
from tokenforge.bench.stats import Bootstrap
from tokenforge.bench.system import MachineLoad
from tokenforge.decoding.costs import CalibrationStore, CostCurve
from tokenforge.decoding.registry import get_method
from tokenforge.errors import DatasetError, InvalidOptionError, TokenforgeError

SPEC_BENCH = Path(__file__).resolve().parents[2] / "shared/data/spec_bench/question.jsonl"
PHRASES = ["w73 w84 w25", "w77 w50 w75", "w22 w23 w22 w23 w30", "w70 w3 w88 w29 w64 w21"]
METHOD_KEYS = {"kind", "paper", "options", "bench_options", "n_prompts", "new_tokens", "seconds",
               "tokens_per_s", "speedup", "speedup_ci95", "speedup_vs_hf_greedy",
               "speedup_vs_hf_greedy_ci95", "modelled_speedup", "mean_accepted_tokens",
               "target_forwards", "forward_sizes", "draft_forward_sizes", "lossless_rate",
               "median_first_divergence", "peak_memory_mb", "backend", "sampler", "dtype",
               "draft_dtype", "calibration", "time_split", "prompts"}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def word_prompts(tmp_path_factory) -> Path:
    """Plain prompts of repeated phrases (so that lookup drafters find matches); on every tiny
    model one of the first two stops at EOS (w0) within 16 tokens. No word starts with w0 or w1,
    which the word tokenizer would split at its special tokens."""
    path = tmp_path_factory.mktemp("bench") / "prompts.jsonl"
    return write_jsonl(path, [{"prompt": f"{p} {p}", "category": "words"} for p in PHRASES])


def bench(target, dataset, methods, draft=None, **settings):
    config = BenchConfig(model=target.name, methods=methods, dataset=str(dataset),
                         **{"max_new_tokens": 16, "limit": 2, **settings})
    return run_bench(config, progress=False, target=target, draft=draft)


# --- counting and the lossless check ------------------------------------------------------

def test_lossless_comparison_is_length_aware():
    assert same_tokens([1, 2, 3], [1, 2, 3])
    assert not same_tokens([1, 2, 3], [1, 2])  # stopped early: a prefix is not lossless
    assert not same_tokens([1, 2], [1, 2, 3])  # ran on
    assert not same_tokens([1, 2, 3], [1, 3, 2])
    assert lossless_rate([[1, 2, 3], [4, 5]], [[1, 2], [4, 5]]) == 0.5
    with pytest.raises(ValueError):
        lossless_rate([[1]], [])


def test_count_tokens_cuts_at_and_includes_the_first_eos():
    assert count_tokens([4, 5, 0, 6, 0], {0}) == [4, 5, 0]
    assert count_tokens([4, 5, 6], {0}) == [4, 5, 6]
    assert count_tokens([4, 5, 6], set()) == [4, 5, 6]


def test_a_method_that_stops_early_scores_not_lossless():
    def result(name: str, outputs: list[list[int]], seconds: float) -> MethodResult:
        plan = MethodPlan(get_method(name), "tokenforge", {})
        return MethodResult(plan, [PromptResult(str(i), 3, ids, len(ids), seconds)
                                   for i, ids in enumerate(outputs)], peak_memory_mb=1.0)

    vanilla = result("vanilla", [[7, 8, 9, 10], [3, 4]], seconds=1.0)
    early = result("pld", [[7, 8, 9], [3, 4]], seconds=0.5)  # prompt 0 cut one token short
    score([vanilla, early])
    assert vanilla.lossless_rate == 1.0 and early.lossless_rate == 0.5
    assert [p.lossless for p in early.prompts] == [False, True]
    assert [p.first_divergence for p in early.prompts] == [3, None]
    assert early.median_first_divergence == 3 and vanilla.median_first_divergence is None
    assert early.speedup == pytest.approx((5 / 1.0) / (6 / 2.0))


def test_first_divergence_is_the_first_differing_index_or_the_shorter_length():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([4, 2], [5, 2]) == 0
    assert first_divergence([1, 2, 3], [1, 2]) == 2  # stopped early
    assert first_divergence([1], [1, 2, 3]) == 1  # ran on
    assert first_divergence([], [7]) == 0


def test_methods_and_hf_baselines_count_the_same_tokens(tiny, word_prompts):
    """vanilla and hf-greedy produce the same ids and forwards (EOS stops included); the
    speculative methods and hf-pld are lossless against them."""
    result = bench(tiny, word_prompts, ["pld", "token-recycling", "hf-greedy", "hf-pld"])
    methods = {m.name: m for m in result.methods}
    assert list(methods)[0] == "vanilla"
    vanilla, hf = methods["vanilla"], methods["hf-greedy"]
    assert any(p.token_ids[-1] == 0 and p.new_tokens < 16 for p in vanilla.prompts)  # EOS stop
    for ours, theirs in zip(vanilla.prompts, hf.prompts, strict=True):
        assert ours.token_ids == theirs.token_ids
        assert ours.target_forwards == theirs.target_forwards == ours.new_tokens
    for m in result.methods:
        assert m.lossless_rate == 1.0, m.name
        assert m.new_tokens == vanilla.new_tokens
        assert m.mean_accepted_tokens >= 1.0
    assert vanilla.mean_accepted_tokens == hf.mean_accepted_tokens == 1.0


def test_hf_assisted_uses_the_draft_and_stays_quiet(word_prompts, capfd):
    target, draft = tiny_model("llama"), tiny_model("llama", seed=1)
    result = bench(target, word_prompts, ["hf-assisted"], draft=draft, limit=1)
    assert result.methods[1].lossless_rate == 1.0
    assert capfd.readouterr().err == ""  # no transformers warnings, no progress bar
    data = results_json(result)
    assert data["methods"]["hf-assisted"]["speedup_ci95"] is None  # one prompt: no interval
    assert "[n/a]" in markdown_table(data) and "nothing to resample" in markdown_report(data)
    assert data["methods"]["hf-assisted"]["draft_dtype"] == "float64"
    assert data["cost_curves"]["draft"] is None  # no tokenforge method used the draft


def test_time_split_reports_draft_share_and_pearl_overlap(word_prompts):
    """tokenforge methods report where their time went; pearl adds its overlap; the
    transformers baselines have no timers and say so (null), rather than zeros."""
    target, draft = tiny_model("llama"), tiny_model("llama", seed=1)
    data = results_json(bench(target, word_prompts, ["sps", "pearl", "hf-assisted"], draft=draft))
    methods = data["methods"]
    assert methods["hf-assisted"]["time_split"] is None
    assert methods["vanilla"]["time_split"]["draft_s"] == 0.0
    for name in ("sps", "pearl"):
        split = methods[name]["time_split"]
        assert split["draft_s"] > 0 and 0 < split["draft_share"] < 1
        assert split["total_s"] <= methods[name]["seconds"] * 1.05 + 0.01  # inside the timing
    assert "overlap" not in methods["sps"]["time_split"]
    # gamma 3: catch-ups of at most 4 tokens; the draft's prefill (7+ tokens) is left out
    assert 0 < max(map(int, methods["sps"]["draft_forward_sizes"])) <= 4
    assert data["cost_curves"]["draft"]["source"] == "measured"
    assert data["methods"]["sps"]["modelled_speedup"] > 0
    assert 0.0 <= methods["pearl"]["time_split"]["overlap"] <= 1.0
    table = markdown_report(data)
    assert "| pearl |" in table and "draft overlap" in table


def test_each_drafter_is_built_once_and_reused(monkeypatch, word_prompts):
    built = []

    def counting(*args, **kwargs):
        built.append(args[1])
        return make_drafter(*args, **kwargs)

    make_drafter = runner.make_drafter
    monkeypatch.setattr(runner, "make_drafter", counting)
    bench(tiny_model("llama"), word_prompts, ["token-recycling"], limit=3, warmup=2)
    assert built == ["vanilla", "token-recycling"]


def test_sampling_marks_lossless_informational_and_repeats_take_the_median(word_prompts):
    result = bench(tiny_model("qwen2"), word_prompts, ["hf-greedy"], temperature=0.8, repeats=2)
    data = results_json(result)
    assert data["lossless_informational"] and not data["settings"]["greedy"]
    assert "(informational)" in markdown_table(data)
    assert data["methods"]["vanilla"]["lossless_rate"] == 1.0
    assert all(p["seconds"] > 0 for m in data["methods"].values() for p in m["prompts"])


def test_prompts_that_do_not_fit_are_skipped_and_warmup_is_held_out(tmp_path):
    long = " ".join(["w9"] * 600)  # the tiny models' context is 512
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "w3 w4", "id": "a"}, {"prompt": long,
                        "id": "too-long"}, {"prompt": "w5 w6", "id": "b"},
                       {"prompt": "w7 w8", "id": "c"}])
    result = bench(tiny_model("gpt2"), path, [], limit=2)
    assert [p.prompt_id for p in result.methods[0].prompts] == ["a", "b"]
    assert result.dataset["skipped_prompts"] == ["too-long"]
    assert result.dataset["warmup_prompt"] == "c" and not result.dataset["warmup_in_measured_set"]


def test_demo_model_on_the_bundled_sets(demo):
    """The `make run` path on a small scale: real model, real held-out prompts, lossless pld."""
    for name in ("stdlib-heldout", "humaneval"):
        result = bench(demo, name, ["pld", "hf-pld"], max_new_tokens=24)
        assert result.dataset["n_prompts"] == 2
        for m in result.methods:
            assert m.lossless_rate == 1.0 and m.new_tokens > 0, (name, m.name)


# --- interleaving, intervals, machine load, modelled speedup, calibration -------------------

def test_methods_run_interleaved_in_rotating_order_and_keep_the_median(monkeypatch):
    """Prompt i starts at method i mod M; each repeat is a full rotation; the median of the
    repeats is kept per (method, prompt), the ids from the first."""
    calls: list[tuple[str, int]] = []
    clocks = {name: iter([5.0, 1.0, 2.0] * 3) for name in "abc"}

    def decoder(name: str):
        def decode(ids: list[int], seed: int | None) -> Decoded:
            calls.append((name, ids[0]))
            return Decoded([ids[0], 0, 9], target_forwards=3)
        return decode

    def fake_timed(device, fn, *args):
        value = fn(*args)
        return value, next(clocks[calls[-1][0]])

    monkeypatch.setattr(runner, "timed", fake_timed)
    prompts = [Selected(Prompt(str(i), "text"), [10 + i]) for i in range(3)]
    config = BenchConfig(model="m", methods=[], dataset="d", repeats=3)
    results = interleave([decoder(n) for n in "abc"], prompts, config, {0}, torch.device("cpu"),
                         progress=False)
    assert calls == ([("a", 10), ("b", 10), ("c", 10)] * 3 + [("b", 11), ("c", 11), ("a", 11)] * 3
                     + [("c", 12), ("a", 12), ("b", 12)] * 3)
    for method in results:
        assert [p.prompt_id for p in method] == ["0", "1", "2"]
        assert all(p.seconds == 2.0 for p in method)  # the median of 5, 1, 2 (the mean is 2.67)
        assert [p.token_ids for p in method] == [[10, 0], [11, 0], [12, 0]]  # cut at EOS


def test_bootstrap_interval_on_constructed_data():
    boot = Bootstrap()
    # identical prompts: every resample gives the same ratio
    assert boot.speedup_interval([10] * 4, [1.0] * 4, [10] * 4, [2.0] * 4) == (2.0, 2.0)
    # paired: a method exactly twice as fast on every prompt stays 2x however hard the prompts
    assert boot.speedup_interval([10, 50, 20], [0.5, 4.5, 1.5], [10, 50, 20],
                                 [1.0, 9.0, 3.0]) == (2.0, 2.0)
    # two prompts: resamples {0,0}, {0,1}, {1,1} (probability 1/4, 1/2, 1/4) give 1, 4/3, 2;
    # each end holds a quarter of the draws, more than the 2.5% tails
    interval = boot.speedup_interval([10, 10], [1.0, 0.5], [10, 10], [1.0, 1.0])
    assert interval == (1.0, 2.0)
    assert Bootstrap().speedup_interval([10, 10], [1.0, 0.5], [10, 10], [1.0, 1.0]) == interval
    assert boot.speedup_interval([10], [1.0], [10], [2.0]) is None  # one prompt: undefined
    with pytest.raises(ValueError):
        boot.speedup_interval([10, 10], [1.0], [10, 10], [1.0, 1.0])


def test_busy_machine_rule():
    def load(**changes) -> MachineLoad:
        idle = dict(device="cpu", cores=2, threads=1, load_before=0.2, load_after=1.1,
                    cpu_s=9.8, wall_s=10.0)
        return MachineLoad(**{**idle, **changes})

    assert load().other_load == pytest.approx(0.12) and load().warnings() == []
    assert load(load_after=2.4).warnings() == []  # 1.42 others: within 1 free core + 0.5
    assert "other processes" in load(load_before=3.0).warnings()[0]  # 2.02 others > 1.5
    assert "waited for a core" in load(cpu_s=5.0).warnings()[0]  # CPU ÷ wall 0.5
    assert load(device="cuda", cpu_s=5.0).warnings() == []  # a GPU run's host may wait
    assert load(cores=8, threads=8, load_after=2.0).warnings()  # no free core: 1.02 > 0.5
    assert load(cores=8, threads=8, load_after=1.4).warnings() == []
    blind = load(load_before=None, load_after=None)
    assert blind.other_load is None and blind.warnings() == []
    assert load(load_after=4.0).as_dict()["busy"] and not load().as_dict()["busy"]


def test_modelled_speedup_on_constructed_curves():
    flat = CostCurve({1: 1e-3, 96: 1e-3})
    vanilla = {1: 100}
    assert modelled_speedup(vanilla, vanilla, {}, flat, None) == 1.0
    assert modelled_speedup(vanilla, {4: 50}, {}, flat, None) == pytest.approx(2.0)
    rising = CostCurve({1: 1e-3, 9: 5e-3})  # q = 5 interpolates to 3 ms
    assert modelled_speedup(vanilla, {5: 20}, {}, rising, None) == pytest.approx(100 / 60)
    draft = CostCurve({1: 0.25e-3, 8: 0.25e-3})  # catch-up forwards count at their own size
    assert modelled_speedup(vanilla, {4: 25}, {1: 75, 3: 25}, flat, draft) == pytest.approx(2.0)
    assert modelled_speedup({}, {}, {}, flat, None) is None
    with pytest.raises(ValueError):
        modelled_speedup(vanilla, {2: 50}, {1: 50}, flat, None)


def test_calibration_is_recorded_and_replayed(tmp_path, word_prompts, monkeypatch):
    """A fresh run measures token-recycling's tree size itself (never the user cache's) and
    records it with the cost curves; a replay takes both back, unless the user set the size."""
    stale = {"tree_size": 3, "forward_costs": {"0": 9.0}}
    monkeypatch.setattr(CalibrationStore, "get", lambda self, name: stale)
    target = tiny_model("llama")
    options = {"token-recycling": {"explore_steps": "2"}}
    first = write_outputs(bench(target, word_prompts, ["token-recycling"], method_options=options),
                          tmp_path / "first")
    tr = first["methods"]["token-recycling"]
    assert tr["options"]["calibrate"] is True and tr["bench_options"] == {"calibrate": True}
    assert tr["calibration"]["tree_size"] not in (None, 3)  # 3 is not even a size it tries
    assert tr["calibration"]["forward_costs"] != stale["forward_costs"]
    assert first["cost_curves"]["target"]["source"] == "measured"
    assert first["methods"]["vanilla"]["modelled_speedup"] == 1.0

    recorded = 16 if tr["calibration"]["tree_size"] != 16 else 24  # unlike any fresh choice
    tr["calibration"]["tree_size"] = recorded
    first["cost_curves"]["target"]["seconds"] = {"1": 0.001, "96": 0.004}
    path = tmp_path / "recorded.json"
    path.write_text(json.dumps(first))
    again = results_json(bench(target, word_prompts, ["token-recycling"], method_options=options,
                               calibration_from=path))
    tr = again["methods"]["token-recycling"]
    assert tr["options"]["tree_size"] == str(recorded) and tr["calibration"]["tree_size"] == recorded
    assert tr["bench_options"] == {"tree_size": str(recorded)}
    assert again["cost_curves"]["target"] == {**first["cost_curves"]["target"],
                                              "source": "replayed"}
    sizes = {int(q): n for q, n in tr["forward_sizes"].items()}
    vanilla = {int(q): n for q, n in again["methods"]["vanilla"]["forward_sizes"].items()}
    assert tr["modelled_speedup"] == pytest.approx(modelled_speedup(
        vanilla, sizes, {}, CostCurve({1: 0.001, 96: 0.004}), None))
    assert again["calibration_replayed_from"]["path"] == str(path)
    report = markdown_report(again)
    assert f"tree size {recorded} (replayed)" in report and "replayed from" in report

    mine = plan_methods(["token-recycling"], {"token-recycling": {"tree_size": "4"}}, False,
                        load_replay(path))[1]
    assert mine.options["tree_size"] == "4" and mine.bench_options == {"calibrate": True}
    old = tmp_path / "v1.json"
    old.write_text(json.dumps({**first, "schema_version": 1}))
    with pytest.raises(InvalidOptionError, match="records no calibration"):
        load_replay(old)


def test_results_round_trip_from_the_saved_dict_and_warn_when_busy(tmp_path, word_prompts,
                                                                   monkeypatch, caplog):
    monkeypatch.setattr(system, "load_average", lambda: 64.0)  # 64 other threads runnable
    with caplog.at_level(logging.WARNING, logger="tokenforge.bench"):
        result = bench(tiny_model("qwen2"), word_prompts, ["pld", "hf-greedy"], limit=3)
    assert "machine was busy" in caplog.text
    data = write_outputs(result, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == data and saved["schema_version"] == SCHEMA_VERSION == 2
    assert (tmp_path / "report.md").read_text() == markdown_report(saved)
    load = saved["machine_load"]
    assert load["busy"] and load["load_before"] == load["load_after"] == 64.0
    report = markdown_report(saved)
    assert "Warning: the machine was busy" in report and load["rule"] in report
    methods = saved["methods"]
    for m in methods.values():
        low, high = m["speedup_ci95"]
        assert low <= high and m["speedup_vs_hf_greedy"] is not None
    assert methods["vanilla"]["speedup_ci95"] == [1.0, 1.0]
    assert methods["hf-greedy"]["speedup_vs_hf_greedy_ci95"] == [1.0, 1.0]
    assert methods["vanilla"]["modelled_speedup"] == 1.0
    assert methods["hf-greedy"]["modelled_speedup"] is None
    assert methods["vanilla"]["forward_sizes"] == {"1": methods["vanilla"]["target_forwards"] - 3}
    assert "| method |" in report and "identical to vanilla" not in report  # all identical

    pld = methods["pld"]  # as a bfloat16 run might be: one prompt parts from vanilla at 5
    pld["prompts"][0].update(lossless=False, first_divergence=5)
    pld.update(lossless_rate=2 / 3, median_first_divergence=5)
    assert "| pld | 2/3 (67%) | 5 |" in markdown_report(saved)


# --- outputs and the command --------------------------------------------------------------

def test_cli_writes_results_report_and_plot(tmp_path, word_prompts, capsys, monkeypatch):
    from tokenforge.cli import main

    for name, seed in (("target", 0), ("draft", 1)):
        loaded = tiny_model("llama", seed=seed)
        loaded.model.save_pretrained(tmp_path / name)
        loaded.tokenizer.save_pretrained(tmp_path / name)
    out = tmp_path / "out"
    monkeypatch.setattr("sys.argv", [
        "tokenforge", "bench", "--model", str(tmp_path / "target"), "--draft-model",
        str(tmp_path / "draft"), "--methods", "pld,hf-greedy,hf-assisted", "--dataset",
        str(word_prompts), "--limit", "2", "--max-new-tokens", "8", "--device", "cpu",
        "--dtype", "float64", "--method-option", "pld.num_draft=4", "--no-progress",
        "--out", str(out)])
    main()
    data = json.loads((out / "results.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    for key in ("model", "draft_model", "device", "device_name", "dtype", "versions", "dataset",
                "settings", "methods", "memory_kind", "created", "command"):
        assert key in data
    assert set(data["versions"]) == {"tokenforge", "torch", "transformers", "python"}
    assert data["dtype"] == "float64" and data["device"] == "cpu"
    assert list(data["methods"]) == ["vanilla", "pld", "hf-greedy", "hf-assisted"]
    for m in data["methods"].values():
        assert set(m) == METHOD_KEYS
        assert m["n_prompts"] == len(m["prompts"]) == 2
        assert m["new_tokens"] == sum(p["new_tokens"] for p in m["prompts"])
        assert m["peak_memory_mb"] > 0 and m["tokens_per_s"] > 0
    assert data["methods"]["pld"]["options"]["num_draft"] == 4
    assert data["methods"]["vanilla"]["speedup"] == 1.0
    for name, m in data["methods"].items():
        assert m["sampler"] == "greedy" and m["dtype"] == "float64"
        assert m["backend"] == ("transformers generate()" if name.startswith("hf-")
                                else "static, activations float64")
    assert data["methods"]["hf-assisted"]["draft_dtype"] == "float64"
    assert data["methods"]["pld"]["draft_dtype"] is None
    table = capsys.readouterr().out
    assert "| method | tokens/s | speedup [95% CI] | modelled speedup |" in table
    speedups = [float(line.split("|")[3].split("x")[0]) for line in table.splitlines()
                if line.startswith("| ") and "x [" in line]
    assert speedups == sorted(speedups, reverse=True) and len(speedups) == 4
    assert "| method |" in (out / "report.md").read_text()
    assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_prints_errors_without_traceback(monkeypatch, capsys, tmp_path):
    from tokenforge.cli import main

    monkeypatch.setattr("sys.argv", ["tokenforge", "bench", "--model", "demo", "--methods",
                                     "no-such-method", "--dataset", "humaneval",
                                     "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown method 'no-such-method'" in err and "Traceback" not in err


# --- datasets -----------------------------------------------------------------------------

def test_both_formats_in_one_file_with_ids_and_categories(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter."]},
        {"prompt": "def add(a, b):", "task_id": "t/1"},
        {"prompt": "x = 1", "category": "code"},
    ])
    prompts = load_dataset(str(path)).prompts
    assert prompts[0] == Prompt("81", "Write a poem.", "writing", chat=True)
    assert prompts[1] == Prompt("t/1", "def add(a, b):", None, chat=False)
    assert prompts[2].id == "3" and prompts[2].category == "code"
    assert [p.id for p in load_dataset(str(path), category="code").prompts] == ["3"]


@pytest.mark.skipif(not SPEC_BENCH.exists(), reason="Spec-Bench's question.jsonl is not here")
def test_spec_bench_question_file():
    data = load_dataset(str(SPEC_BENCH))
    assert len(data.prompts) == 480 and all(p.chat for p in data.prompts)
    first = json.loads(SPEC_BENCH.read_text().splitlines()[0])
    assert data.prompts[0].text == first["turns"][0]
    assert len(load_dataset(str(SPEC_BENCH), category="coding").prompts) == 10


def test_chat_turns_use_the_chat_template_and_plain_prompts_do_not():
    loaded = tiny_model("llama")
    plain = Prompt("1", "w9 w20")
    assert encode(loaded, plain) == encode(loaded, Prompt("1", "w9 w20", chat=True))
    loaded.tokenizer.chat_template = ("{% for m in messages %}w5 {{ m['content'] }} w6"
                                      "{% endfor %}{% if add_generation_prompt %} w7{% endif %}")
    assert encode(loaded, Prompt("1", "w9 w20", chat=True)) == [5, 9, 20, 6, 7]
    assert encode(loaded, plain) == [9, 20]


def test_bundled_humaneval():
    data = load_dataset("humaneval")
    assert len(data.prompts) == 164 and data.prompts[0].id == "HumanEval/0"
    assert data.prompts[0].text.startswith("from typing import List")
    from tokenforge.tasks.taskset import DATA_DIR

    assert (DATA_DIR / "humaneval.LICENSE").exists()


def test_stdlib_heldout_reads_prefixes_of_the_listed_files(tmp_path, monkeypatch):
    (tmp_path / "training.json").write_text(json.dumps({"corpus": {"heldout_files": [
        "json/decoder.py", "no/such/file.py", "json/__init__.py"]}}))
    monkeypatch.setattr(datasets, "DEMO_DIR", tmp_path)
    prompts = load_dataset("stdlib-heldout").prompts
    assert [p.id for p in prompts] == ["json/decoder.py", "json/__init__.py"]
    for prompt in prompts:
        assert datasets.MIN_PREFIX_CHARS <= len(prompt.text) <= datasets.PREFIX_CHARS
        assert prompt.text.endswith("\n") and prompt.category == "stdlib"
    monkeypatch.setattr(datasets, "DEMO_DIR", tmp_path / "missing")
    with pytest.raises(DatasetError, match="training record"):
        load_dataset("stdlib-heldout")


def test_file_prefix_stops_at_a_line_end_and_leaves_a_continuation():
    text = "".join(f"line {i}\n" for i in range(100))  # 690 characters
    prefix = datasets.file_prefix(text, chars=1200)
    assert text.startswith(prefix) and prefix.endswith("\n") and len(prefix) <= len(text) // 2
    assert datasets.file_prefix(text, chars=20) == "line 0\nline 1\n"


# --- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a"}\n{"prompt": "b"\n', r"bad\.jsonl:2: not valid JSON"),
    ('{"text": "a"}\n', "expected Spec-Bench"),
    ('{"turns": []}\n', "'turns' must be a list"),
    ('{"prompt": ""}\n', "'prompt' must be a non-empty string"),
    ('["a"]\n', "expected a JSON object"),
    ("\n\n", "holds no prompts"),
])
def test_malformed_datasets_raise_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_dataset(str(path))


def test_dataset_lookup_errors(tmp_path, word_prompts):
    with pytest.raises(DatasetError, match="neither a bundled set"):
        load_dataset(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DatasetError, match="categories: words"):
        load_dataset(str(word_prompts), category="math")


def test_method_errors_are_raised_before_any_model_loads():
    with pytest.raises(InvalidOptionError, match="unknown method 'nope'.*hf-pld"):
        plan_methods(["nope"], {}, has_draft=False)
    with pytest.raises(InvalidOptionError, match="needs a draft model"):
        plan_methods(["hf-assisted"], {}, has_draft=False)
    with pytest.raises(InvalidOptionError, match="not benchmarked"):
        plan_methods(["pld"], {"aded": {"depth": "2"}}, has_draft=False)
    with pytest.raises(InvalidOptionError, match="unknown option"):
        plan_methods(["pld"], {"pld": {"depth": "2"}}, has_draft=False)
    plans = plan_methods(["all", "pld"], {"hf-pld": {"prompt_lookup_num_tokens": "3"}}, False)
    names = [p.spec.name for p in plans]
    assert names[0] == "vanilla" and len(names) == len(set(names)) and "hf-assisted" not in names
    assert next(p for p in plans if p.spec.name == "hf-pld").options == {
        "prompt_lookup_num_tokens": 3}
    with pytest.raises(InvalidOptionError):
        BenchConfig(model="demo", methods=[], dataset="humaneval", repeats=0)


def test_method_option_parsing():
    assert parse_method_options(["pld.num_draft=4", "pld.max_ngram=2", "aded.depth=3"]) == {
        "pld": {"num_draft": "4", "max_ngram": "2"}, "aded": {"depth": "3"}}
    assert parse_method_options(["token-recycling.matrix=a.b.npy"]) == {
        "token-recycling": {"matrix": "a.b.npy"}}
    for bad in ("pld=4", "pld.num_draft", ".x=1"):
        with pytest.raises(TokenforgeError, match="method.key=value"):
            parse_method_options([bad])


def test_write_outputs_reports_unwritable_folder(tmp_path, word_prompts):
    result = bench(tiny_model("gpt2"), word_prompts, [], limit=1)
    (tmp_path / "file").write_text("")
    with pytest.raises(TokenforgeError, match="cannot write"):
        write_outputs(result, tmp_path / "file" / "out")
