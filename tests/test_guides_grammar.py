"""Grammar guides (guides/grammar.py) on the demo tokenizer and model: guided output parses and
validates, the seam's methods agree with each other, bad grammars fail in one line quoting
llguidance, and masks are as wide as the model's logits."""

from __future__ import annotations

import ast
import json
import random
import re

import jsonschema
import pytest
import torch

import tokenforge
from tests.conftest import word_tokenizer
from tokenforge.errors import GuideError
from tokenforge.guides import GuideSpec, make_guide
from tokenforge.guides.base import Guide
from tokenforge.guides.grammar import GrammarGuide

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["admin", "user", "guest"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
PROMPTS = ["def load_config(path):\n    return ", "# user record\nuser = ",
           "import json\n\ndata = json.loads('"]
IMPORTS = 'start: "import " NAME ("." NAME)* "\\n"\nNAME: /[a-z]{1,10}/'
ARITHMETIC = ('start: expr\nexpr: term (OP term)~0..3\nterm: NUMBER | "(" inner ")"\n'
              'inner: NUMBER (OP NUMBER)~1..3\nOP: " + " | " - "\nNUMBER: /[0-9]{1,3}/')


def test_json_schema_output_validates_and_every_method_agrees(demo):
    """Greedy: guided vanilla's JSON validates, and speculative methods give the same ids."""
    for prompt in PROMPTS:
        outputs = {}
        for method in ("vanilla", "token-recycling", "pld"):
            guide = GrammarGuide(demo.tokenizer, "json_schema", PERSON)
            gen = tokenforge.generate(demo, prompt, method=method, max_new_tokens=96, guide=guide)
            assert gen.stats.finish_reason == "eos", (prompt, method, gen.text)
            jsonschema.validate(json.loads(gen.text), PERSON)
            assert gen.stats.guide["grammar"] == "json_schema"
            assert gen.stats.guide["grammar_masks"] > 0
            assert gen.stats.guide["matcher_rebuilds"] == 0
            outputs[method] = gen.token_ids
        assert outputs["token-recycling"] == outputs["vanilla"] == outputs["pld"], prompt


def test_json_schema_as_text_and_sampling(demo):
    guide = make_guide(demo, GuideSpec(json_schema=json.dumps(PERSON)))
    for seed in range(3):
        gen = tokenforge.generate(demo, PROMPTS[1], max_new_tokens=96, temperature=0.9, seed=seed,
                                  guide=guide)
        assert gen.stats.finish_reason == "eos", gen.text
        jsonschema.validate(json.loads(gen.text), PERSON)


def test_json_object(demo):
    guide = make_guide(demo, GuideSpec(json_object=True))
    gen = tokenforge.generate(demo, "data = ", max_new_tokens=64, guide=guide)
    assert gen.stats.finish_reason == "eos", gen.text
    assert isinstance(json.loads(gen.text), dict) and gen.text != "{}"
    gen = tokenforge.generate(demo, "return ", max_new_tokens=32, guide=guide)
    assert gen.stats.finish_reason == "length"  # cut in a string: a prefix the grammar allows
    assert gen.text.startswith('{"') and guide.allowed().any()


def test_regex_output_fullmatches(demo):
    pattern = r"(def|class) [a-z_]{1,12}\((self)?\): return [0-9]{1,3}"
    guide = GrammarGuide(demo.tokenizer, "regex", pattern)
    for prompt in ("import os\n\n", "    ", "x = 1\n"):
        gen = tokenforge.generate(demo, prompt, method="token-recycling", max_new_tokens=48,
                                  guide=guide)
        assert gen.stats.finish_reason == "eos", gen.text
        assert re.fullmatch(pattern, gen.text), gen.text


def test_lark_grammars(demo):
    guide = GrammarGuide(demo.tokenizer, "lark", IMPORTS)
    gen = tokenforge.generate(demo, "#!/usr/bin/env python\n", max_new_tokens=48, guide=guide)
    assert re.fullmatch(r"import [a-z]{1,10}(\.[a-z]{1,10})*\n", gen.text), gen.text
    guide = GrammarGuide(demo.tokenizer, "lark", ARITHMETIC)
    for prompt in ("total = ", "return "):
        gen = tokenforge.generate(demo, prompt, max_new_tokens=48, guide=guide, method="pld")
        assert gen.stats.finish_reason == "eos", gen.text
        tree = ast.parse(gen.text, mode="eval")  # balanced, well-formed arithmetic
        assert all(isinstance(node, (ast.Expression, ast.BinOp, ast.Constant, ast.Add, ast.Sub))
                   for node in ast.walk(tree)), gen.text
        assert re.fullmatch(r"[0-9()+\- ]+", gen.text), gen.text


def test_consume_rollback_and_allowed_agree(demo):
    """On random walks: consume(t) is True exactly where allowed()[t] is, a refused token and a
    rollback leave the state as it was, and forced() is the base class's mask walk."""
    rng = random.Random(0)
    vocab = len(demo.tokenizer)
    for kind, source in (("json_schema", PERSON), ("lark", ARITHMETIC)):
        guide = GrammarGuide(demo.tokenizer, kind, source)
        for _ in range(4):
            guide.begin([1, 2, 3], vocab)
            for _ in range(40):
                mask = guide.allowed()
                assert mask.dtype == torch.bool and mask.shape == (vocab,)
                allowed = mask.nonzero().flatten().tolist()
                if not allowed:
                    break
                probes = rng.sample(range(vocab), 60) + allowed[:20]
                for token in probes:
                    took = guide.consume(token)
                    assert took == bool(mask[token]), (kind, token)
                    if took:
                        guide.rollback(1)
                    assert torch.equal(guide.allowed(), mask)
                assert guide.forced() == Guide.forced(guide)
                assert torch.equal(guide.allowed(), mask)
                assert guide.consume(rng.choice(allowed))


def test_end_of_grammar_and_eos(demo):
    """At a complete grammar only EOS is allowed; after EOS nothing; rolling back over EOS and
    the token before gives the state a fresh guide reaches on the same tokens."""
    tok = demo.tokenizer
    eos = tok.eos_token_id
    text = '{"name": "Ann", "age": 7, "tags": ["admin"]}'
    ids = tok(text, add_special_tokens=False)["input_ids"]
    guide = GrammarGuide(tok, "json_schema", PERSON)
    guide.begin([5], len(tok))
    assert guide.accepts(ids) == len(ids)
    assert all(guide.consume(t) for t in ids)
    assert guide.allowed().nonzero().flatten().tolist() == [eos]
    assert guide.forced() == [eos]
    assert guide.consume(eos)
    assert not guide.allowed().any() and not guide.consume(eos) and guide.forced() == []
    guide.rollback(2)
    fresh = GrammarGuide(tok, "json_schema", PERSON)
    fresh.begin([5], len(tok))
    assert all(fresh.consume(t) for t in ids[:-1])
    assert torch.equal(guide.allowed(), fresh.allowed())
    assert guide.consume(ids[-1]) and guide.allowed().nonzero().flatten().tolist() == [eos]
    with pytest.raises(ValueError):
        guide.rollback(len(ids) + 1)


def test_canonical_tokenization_cuts_other_spellings(demo):
    """llguidance allows only the canonical tokens of forced text: "import" but not "imp"."""
    vocab = demo.tokenizer.get_vocab()
    guide = GrammarGuide(demo.tokenizer, "lark", IMPORTS)
    guide.begin([1], len(vocab))
    assert guide.allowed().nonzero().flatten().tolist() == [vocab["import"]]
    assert guide.matcher.validate_tokens([vocab["imp"]]) == 1  # llguidance's own check takes it
    assert not guide.consume(vocab["imp"])
    assert guide.forced() == [vocab["import"]]


def test_vocab_padding_and_truncation(demo):
    tok = demo.tokenizer
    n = len(tok)
    guide = GrammarGuide(tok, "json_object")
    guide.begin([1], n + 40)  # the model's logits are wider than the tokenizer's vocabulary
    mask = guide.allowed()
    assert mask.shape == (n + 40,) and not mask[n:].any() and mask[:n].any()
    assert not guide.consume(n + 3)
    guide.begin([1], n - 100)  # or narrower: tokens past the logits can never be chosen
    assert guide.allowed().shape == (n - 100,)
    brace = tok.get_vocab()["{"]
    assert guide.consume(brace) and guide.allowed().shape == (n - 100,)


def test_bad_grammars_raise_one_line_guide_errors(demo):
    tok = demo.tokenizer
    cases = [
        ("regex", "[a-", "invalid regex: ", "unclosed character class"),
        ("lark", "start: foo", "invalid Lark grammar: ", 'unknown name: "foo"'),
        ("json_schema", {"type": "objekt"}, "invalid JSON schema: ", "Invalid type: objekt"),
        ("json_schema", '{"type": "string", "format": "nope"}', "invalid JSON schema: ",
         "Unknown format: nope"),
        ("json_schema", "{not json", "not valid JSON", "line 1"),
        ("json_schema", "[1, 2]", "must be a JSON object", "list"),
        ("regex", "", "non-empty str", ""),
        ("json_object", "{}", "takes no source", ""),
        ("yaml", "a: 1", "unknown grammar kind 'yaml'", "json_schema"),
    ]
    for kind, source, start, quoted in cases:
        with pytest.raises(GuideError) as info:
            GrammarGuide(tok, kind, source)
        message = str(info.value)
        assert start in message and quoted in message, (kind, message)
        assert "\n" not in message, message
    with pytest.raises(GuideError, match="unclosed group"):
        make_guide(demo, GuideSpec(regex="(abc"))
    with pytest.raises(GuideError) as info:  # a tokenizer llguidance cannot read
        GrammarGuide(word_tokenizer(), "regex", "w5 w6")
    assert str(info.value).startswith("llguidance cannot use this tokenizer")
    assert "WordPiece" in str(info.value) and "\n" not in str(info.value)


def test_tokenizer_built_once_and_guide_reused(demo):
    """The LLTokenizer is cached per tokenizer; a reused guide starts each generation afresh and
    a trimmed state cache gives the same output."""
    first = GrammarGuide(demo.tokenizer, "json_schema", PERSON)
    assert first.lltokenizer is GrammarGuide(demo.tokenizer, "json_object").lltokenizer
    regex = GrammarGuide(demo.tokenizer, "regex", "[a-z]+")
    assert regex.lltokenizer is GrammarGuide(demo.tokenizer, "lark", IMPORTS).lltokenizer
    assert regex.lltokenizer is not first.lltokenizer  # llguidance's JSON mask slices
    one = tokenforge.generate(demo, PROMPTS[0], max_new_tokens=96, guide=first)
    two = tokenforge.generate(demo, PROMPTS[0], max_new_tokens=96, guide=first)
    assert one.token_ids == two.token_ids
    assert two.stats.guide["grammar_masks"] < one.stats.guide["grammar_masks"]  # known states
    small, big = (GrammarGuide(demo.tokenizer, "json_schema", PERSON) for _ in range(2))
    small.max_states = 4
    outputs = [[tokenforge.generate(demo, prompt, method="token-recycling", max_new_tokens=96,
                                    guide=guide).token_ids for prompt in PROMPTS]
               for guide in (small, big)]  # a guide's trie keeps earlier generations' states
    assert outputs[0] == outputs[1] and outputs[0][0] == one.token_ids
    assert small.trims > 0 and big.trims == 0
    assert trie_size(small.root) == small.states < trie_size(big.root) == big.states


def trie_size(state) -> int:
    return 1 + sum(trie_size(child) for child in state.children.values())
