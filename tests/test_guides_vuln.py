"""Vulnerability-constrained decoding (guides/vuln.py): bandit's findings become label lines, label
tokens join a tokenizer and a model, and the denial guide keeps a model that prefers a label from
ever writing one, under plain and speculative decoding. The fine-tune itself is not run here
(`tokenforge train-vuln`, benchmarks/vuln_denial.py)."""

from __future__ import annotations

import random
import re

import pytest
import torch
from transformers import AutoTokenizer

import tokenforge
from tokenforge.errors import GuideError
from tokenforge.guides import GuideSpec, make_guide
from tokenforge.guides.vuln import (
    RULES,
    TRAIN_TASKS,
    VulnerabilityDenial,
    add_label_tokens,
    bandit_scan,
    label_corpus,
    label_token_ids,
    strip_labels,
    synthetic_function,
    synthetic_modules,
    vulnerability_denial,
)
from tokenforge.models.load import DEMO_DIR, LoadedModel, load_model
from tokenforge.models.training import ModelShape, build_model, save_model

INSECURE = '''import pickle
import subprocess
import yaml


def parse(text):
    return eval(text)


def restore(path):
    with open(path, "rb") as fh:
        return pickle.load(fh)


def run(cmd):
    out = subprocess.run(
        cmd,
        shell=True,
        capture_output=True,
    )
    return out.stdout


def settings(path):
    with open(path) as fh:
        data = yaml.load(fh, Loader=yaml.Loader)
    return data
'''

SECURE = '''import ast
import json
import subprocess
import yaml


def parse(text):
    return ast.literal_eval(text)


def restore(path):
    with open(path, "rb") as fh:
        return json.load(fh)


def run(cmd):
    out = subprocess.run(
        cmd.split(),
        capture_output=True,
    )
    return out.stdout


def settings(path):
    with open(path) as fh:
        data = yaml.safe_load(fh)
    return data
'''


def demo_tokenizer():
    return AutoTokenizer.from_pretrained(DEMO_DIR / "demo")


def test_label_corpus_labels_bandit_findings_and_not_safe_code(tmp_path):
    path = tmp_path / "insecure.py"
    path.write_text(INSECURE)
    labelled, safe = label_corpus([path, SECURE])
    assert safe == SECURE
    lines = labelled.splitlines()
    for label, statement in [("<vuln:B307>", "return eval(text)"),
                             ("<vuln:B301>", "return pickle.load(fh)"),
                             ("<vuln:B602>", "out = subprocess.run("),  # the statement's first line
                             ("<vuln:B506>", "data = yaml.load(fh, Loader=yaml.Loader)")]:
        i = next(i for i, line in enumerate(lines) if line.strip() == statement)
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        assert lines[i - 1] == indent + label
    assert len(re.findall(r"<vuln:B\d+>", labelled)) == 4  # imports (B403/B404) are not labelled
    assert strip_labels(labelled) == INSECURE
    assert strip_labels("x = 1\n <vuln:B307>\ny = eval(x)<vuln:B307>\n") == "x = 1\ny = eval(x)\n"


def test_synthetic_functions_are_labelled_by_bandit_as_their_templates_intend():
    texts, expected = [], []
    for task in TRAIN_TASKS:
        for insecure in (True, False):
            text, imports = synthetic_function(task, insecure, random.Random(len(texts)))
            texts.append("".join(f"import {m}\n" for m in sorted(imports)) + "\n\n" + text)
            expected.append({task.rule} if insecure else set())
    assert {task.rule for task in TRAIN_TASKS} == set(RULES)
    for text, want, got in zip(texts, expected, label_corpus(texts)):
        assert set(re.findall(r"<vuln:(B\d+)>", got)) == want, text
    modules = synthetic_modules(20, seed=1)
    assert modules == synthetic_modules(20, seed=1) and all(f is not None
                                                            for f in bandit_scan(modules))


def test_label_tokens_tokenize_as_one_extra_token_before_the_line():
    tokenizer = demo_tokenizer()
    plain = "def f(x):\n    y = 1\n    return eval(x)\n"
    before = tokenizer(plain, add_special_tokens=False)["input_ids"]
    labels = add_label_tokens(tokenizer)
    assert set(labels) == set(RULES) and label_token_ids(tokenizer) == labels
    labelled = label_corpus([plain])[0]
    assert labelled == "def f(x):\n    y = 1\n    <vuln:B307>\n    return eval(x)\n"
    after = tokenizer(labelled, add_special_tokens=False)["input_ids"]
    i = after.index(labels["B307"])
    # the label sits where the line's first word would, and the rest tokenizes as before
    assert after[:i] + after[i + 2:] == before and after[i + 1] == after[i - 1]
    assert tokenizer.decode(after) == labelled
    assert add_label_tokens(tokenizer) == labels  # idempotent


def label_loving_model() -> LoadedModel:
    """A tiny random Llama with the demo tokenizer + labels whose LM head puts two label tokens
    far ahead of every other token (and EOS far behind), whatever the context: hidden unit 0 is
    1 in every embedding and no layer writes to it, the final norm passes only it, and the head
    reads it with a large weight for the labels, a random one for the rest."""
    tokenizer = demo_tokenizer()
    torch.manual_seed(0)
    model = build_model(ModelShape(32, 1, 2, 1, 64, tie_word_embeddings=False),
                        len(tokenizer), 256, tokenizer.eos_token_id)
    labels = add_label_tokens(tokenizer, model)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        head = model.lm_head.weight
        head[:, 0] = torch.randn(len(tokenizer))
        head[tokenizer.eos_token_id, 0] = -50.0
        head[labels["B307"], 0] = 50.0
        head[labels["B301"], 0] = 49.0
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, name="tiny-label-loving")


def test_denial_keeps_a_label_loving_model_from_writing_labels(tmp_path):
    loaded = label_loving_model()
    labels = label_token_ids(loaded.tokenizer)
    prompt = "import pickle\n\n\ndef restore(path):\n"
    plain = tokenforge.generate(loaded, prompt, max_new_tokens=12)
    assert set(plain.token_ids) <= set(labels.values())  # unguided, it writes nothing else
    runs = [dict(), dict(temperature=1.0, seed=0), dict(temperature=1.0, seed=1)]
    for kwargs in runs:
        for guide in (vulnerability_denial(loaded.tokenizer),
                      make_guide(loaded, GuideSpec(deny_vulnerabilities=True))):
            out = tokenforge.generate(loaded, prompt, max_new_tokens=12, guide=guide, **kwargs)
            assert out.stats.new_tokens == 12
            assert not set(out.token_ids) & set(labels.values())
            assert "<vuln:" not in out.text
    # speculative: the prompt holds "a b w <label>" and ends in "a b", and the guided model writes
    # w next, so prompt lookup drafts the label after "a b w"; the guide cuts it from the tree
    written = tokenforge.generate(loaded, prompt, max_new_tokens=1,
                                  guide=vulnerability_denial(loaded.tokenizer)).token_ids[0]
    lookup_prompt = [42, 43, written, labels["B307"], 44, 42, 43]
    guide = vulnerability_denial(loaded.tokenizer)
    out = tokenforge.generate(loaded, lookup_prompt, method="pld", max_new_tokens=12, guide=guide)
    assert not set(out.token_ids) & set(labels.values())
    assert out.stats.guide["pruned_nodes"] > 0
    # saved and loaded again, the labels are still there and still denied
    save_model(loaded.model, tmp_path, loaded.tokenizer)
    again = load_model(str(tmp_path), device="cpu", dtype="float32")
    assert label_token_ids(again.tokenizer) == labels
    assert vulnerability_denial(again.tokenizer).token_ids == sorted(labels.values())


def test_a_model_without_labels_is_refused_with_the_command_to_make_one():
    with pytest.raises(GuideError, match="tokenforge train-vuln"):
        vulnerability_denial(demo_tokenizer())
    loaded = LoadedModel(model=None, tokenizer=demo_tokenizer(), name="demo")
    with pytest.raises(GuideError, match="not trained with vulnerability labels"):
        make_guide(loaded, GuideSpec(deny_vulnerabilities=True))
    guide = vulnerability_denial(_with_labels())
    assert isinstance(guide, VulnerabilityDenial) and len(guide.labels) == len(RULES)


def _with_labels():
    tokenizer = demo_tokenizer()
    add_label_tokens(tokenizer)
    return tokenizer


def test_train_vuln_command_is_registered():
    from typer.testing import CliRunner

    from tokenforge.cli import app

    result = CliRunner().invoke(app, ["train-vuln", "--help"])
    assert result.exit_code == 0 and "deny_vulnerabilities" in result.output
