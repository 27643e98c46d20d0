"""The benchmark harness: token counting shared by methods and transformers baselines, the
length-aware lossless check, results.json's schema, both dataset formats and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_model
from tokenforge.bench import datasets, runner
from tokenforge.bench.cli import parse_method_options
from tokenforge.bench.datasets import Prompt, encode, load_dataset
from tokenforge.bench.report import (
    SCHEMA_VERSION,
    markdown_report,
    markdown_table,
    results_json,
    write_outputs,
)
from tokenforge.bench.runner import (
    BenchConfig,
    MethodPlan,
    MethodResult,
    PromptResult,
    count_tokens,
    lossless_rate,
    plan_methods,
    run_bench,
    same_tokens,
    score,
)
from tokenforge.decoding.registry import get_method
from tokenforge.errors import DatasetError, InvalidOptionError, TokenforgeError

SPEC_BENCH = Path(__file__).resolve().parents[2] / "shared/data/spec_bench/question.jsonl"
PHRASES = ["w73 w84 w25", "w77 w50 w75", "w22 w23 w22 w23 w30", "w70 w3 w88 w29 w64 w21"]
METHOD_KEYS = {"kind", "paper", "options", "n_prompts", "new_tokens", "seconds", "tokens_per_s",
               "speedup", "mean_accepted_tokens", "target_forwards", "lossless_rate",
               "peak_memory_mb", "time_split", "prompts"}



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
    assert early.speedup == pytest.approx((5 / 1.0) / (6 / 2.0))


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
    table = capsys.readouterr().out
    assert "| method | tokens/s | speedup |" in table
    speedups = [float(line.split("|")[3].strip().rstrip("x")) for line in table.splitlines()
                if line.startswith("| ") and "x |" in line]
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
    assert (datasets.DATA_DIR / "humaneval.LICENSE").exists()


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
