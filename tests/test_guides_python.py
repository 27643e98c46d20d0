"""The member monitor (MGD) and the Repilot-style completion engine on the demo tokenizer and model.

Masks are checked against a brute-force rule over the whole vocabulary, consume/rollback against
allowed(), and guided generations of the demo model against jedi run independently of the guide.
"""

from __future__ import annotations

import random
import re

import jedi
import pytest
import torch

import tokenforge
from tokenforge.guides import GuideSpec, make_guide
from tokenforge.guides.python_monitor import MemberMonitor, ident_head
from tokenforge.guides.repilot import CompletionEngine

VOCAB = 8192
CLASS = "class A:\n    def __init__(self):\n        self.alpha = 1\n\n    def f(self):\n        return self"


@pytest.fixture(scope="module")
def tok(demo):
    return demo.tokenizer


@pytest.fixture(scope="module")
def monitor(tok):
    return MemberMonitor(tok)


@pytest.fixture(scope="module")
def engine(tok):
    return CompletionEngine(tok)


def ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def one(tok, text: str) -> int:
    found = ids(tok, text)
    assert len(found) == 1, (text, found)
    return found[0]


def started(guide, tok, text: str):
    guide.begin(ids(tok, text), VOCAB)
    return guide


def jedi_members(code: str) -> set[str]:
    """Member names at the `.` ending `code`, straight from jedi (not through the guide)."""
    line, column = code.count("\n") + 1, len(code) - code.rfind("\n") - 1
    return {c.name for c in jedi.Script(code).complete(line, column) if c.type != "keyword"}


def brute_force(guide: MemberMonitor, names: set[str], partial: str) -> torch.Tensor:
    """The member rule token by token, over the whole vocabulary."""
    mask = torch.zeros(VOCAB, dtype=torch.bool)
    encoded = {n.encode() for n in names}
    for token, data in enumerate(guide.vocab.bytes):
        word = partial.encode() + data[: ident_head(data)]
        if data and ident_head(data) == len(data):
            mask[token] = any(n.startswith(word) for n in encoded)
        else:
            mask[token] = word in encoded
    return mask


def test_member_mask_after_os_pa(monitor, tok):
    mask = started(monitor, tok, "import os\nos.pa").allowed()
    names = {n for n in jedi_members("import os\nos.") if n.startswith("pa")}
    assert {"path", "pardir", "pathsep"} <= names
    assert torch.equal(mask, brute_force(monitor, names, "pa"))
    for text in ("th", "t", "r"):  # -> path/pathsep, pardir
        assert mask[one(tok, text)], text
    for text in ("x", " ", "(", ".", "join", "pa"):
        assert not mask[one(tok, text)], text
    assert monitor.stats()["masks_built"] == 1


def test_complete_member_may_be_followed(monitor, tok):
    mask = started(monitor, tok, "import os\nos.path").allowed()
    assert mask[one(tok, ".")] and mask[one(tok, "(")] and mask[one(tok, "sep")]  # pathsep
    assert not mask[one(tok, "x")] and not mask[one(tok, "join")]
    assert mask[tok.eos_token_id]  # the text may end after a complete member
    names = {n for n in jedi_members("import os\nos.") if n.startswith("path")}
    assert torch.equal(mask, brute_force(monitor, names, "path"))


def test_logits_wider_than_the_vocabulary(tok):
    guide = MemberMonitor(tok)
    narrow = started(guide, tok, "import os\nos.path").allowed()
    guide.begin(ids(tok, "import os\nos.path"), VOCAB + 8)  # the cached masks have the old width
    wide = guide.allowed()
    assert wide.shape == (VOCAB + 8,) and torch.equal(wide[:VOCAB], narrow) and wide[VOCAB:].all()
    guide.begin(ids(tok, "import os\nos.pa"), VOCAB + 8)
    assert not guide.allowed()[VOCAB:].any() and not guide.consume(VOCAB + 3)
    assert not guide.consume(VOCAB + 8)  # outside the logits


def test_self_members_and_a_token_carrying_the_dot(monitor, tok):
    guide = started(monitor, tok, CLASS + ".")
    mask = guide.allowed()
    assert mask[one(tok, "alpha")] and mask[one(tok, "f")] and not mask[one(tok, "b")]
    guide = started(monitor, tok, CLASS)
    assert guide.allowed() is None  # `self` without a dot: no member access yet
    assert guide.consume(one(tok, ".__"))  # the dot and the name's start in one token
    mask = guide.allowed()
    assert mask[one(tok, "class")] and mask[one(tok, "init")] and not mask[one(tok, "alpha")]


def test_unknown_receivers_allow_everything(monitor, tok):
    for code in ("def f(a):\n    return a.", "x = undefined_name.",
                 "class D:\n    def __getattr__(self, name):\n        return 1\n\n\nD()."):
        guide = started(monitor, tok, code)
        assert guide.allowed() is None, code
        assert guide.consume(one(tok, "name"))
        stats = guide.stats()
        assert stats["unknown_receivers"] == 1 and stats["unknown_in_text"] == 1, code


def test_no_member_access_no_analysis(tok):
    guide = MemberMonitor(tok)
    for code in ("import os\n# os.", "import os\nx = 1  # see os.", "import os\ns = 'os.", "x = 1.",
                 "from .", "import os\nos"):
        started(guide, tok, code)
        assert guide.allowed() is None, code
        assert guide.stats()["jedi_calls"] == 0, code
    assert guide.stats()["member_accesses"] == 0
    assert started(guide, tok, "import os\nx = '#' + os.").allowed() is not None  # no comment


def test_escaped_prefix_is_left_unconstrained(tok):
    guide = started(MemberMonitor(tok, private=False), tok, "import os\nos")
    assert guide.consume(one(tok, "._"))  # no public member of os starts with `_`
    assert guide.allowed() is None and guide.stats()["escaped"] == 1
    assert guide.consume(one(tok, "name")) and guide.allowed() is None
    assert guide.stats()["escaped"] == 1 and guide.stats()["member_accesses"] == 1
    guide.rollback(2)
    assert guide.stats()["escaped"] == 0


def test_prefix_is_analysed_with_the_prompt(tok):
    guide = MemberMonitor(tok, prefix="import os\n")  # the file's start, outside the model's window
    mask = started(guide, tok, "os.pa").allowed()
    assert torch.equal(mask, started(MemberMonitor(tok), tok, "import os\nos.pa").allowed())
    guide.prefix = b""
    assert started(guide, tok, "os.pa").allowed() is None  # no import: an unknown receiver


def test_suffix_makes_later_members_known(tok):
    later = "\n\n    def g(self):\n        self.later = 2\n"
    bare = started(MemberMonitor(tok), tok, CLASS + ".").allowed()
    guide = MemberMonitor(tok, suffix=later)
    mask = started(guide, tok, CLASS + ".").allowed()
    assert not bare[one(tok, "g")] and mask[one(tok, "g")]
    assert torch.equal(mask & bare, bare)  # only adds members


def test_analysis_cached_per_position(tok):
    guide = started(MemberMonitor(tok), tok, "import os\nos.")
    first = guide.allowed()
    for _ in range(3):
        assert guide.consume(one(tok, "path"))
        assert guide.consume(one(tok, "."))
        guide.rollback(2)
        assert guide.allowed() is first
    stats = guide.stats()
    assert stats["jedi_calls"] == 2 and stats["cache_hits"] == 2  # os. and os.path.
    assert stats["masks_built"] == 1 and stats["mask_cache_hits"] == 3


def test_consume_agrees_with_allowed(tok):
    """Every token: consume(t) == allowed()[t], and a refused token leaves the state unchanged."""
    monitor, engine = MemberMonitor(tok), CompletionEngine(tok)
    for guide, code in ((monitor, "import os\nos."), (monitor, CLASS + "."), (monitor, "import os\nos.path"),
                        (engine, "import os\nos.path.is"), (engine, "import re\nre.comp")):
        started(guide, tok, code)
        mask = guide.allowed()
        for token in range(VOCAB):
            took = guide.consume(token)
            assert took == bool(mask[token]), (guide.name, code, tok.decode([token]))
            if took:
                guide.rollback(1)
        assert torch.equal(guide.allowed(), mask)
    assert int(engine.allowed().sum()) == 1  # re.comp -> compile: forced


def test_random_walk_rollback_restores_masks(tok):
    rng = random.Random(0)
    for guide in (MemberMonitor(tok), CompletionEngine(tok)):
        started(guide, tok, "import os\nos.")
        masks, walked = [guide.allowed()], []
        for _ in range(12):  # allowed tokens only, through member accesses and out
            mask = masks[-1]
            choices = list(range(VOCAB)) if mask is None else mask.nonzero()[:, 0].tolist()
            token = rng.choice(choices)
            assert guide.consume(token)
            walked.append(token)
            masks.append(guide.allowed())
        for depth in range(len(walked), 0, -1):
            guide.rollback(1)
            expected = masks[depth - 1]
            got = guide.allowed()
            assert (got is None and expected is None) or torch.equal(got, expected), depth
        guide.rollback(0)
        assert bytes(guide._text) == b"import os\nos."
        with pytest.raises(ValueError):
            guide.rollback(1)


def test_accepts_stops_at_an_invalid_member(monitor, tok):
    guide = started(monitor, tok, "import os\nos.")
    assert guide.accepts(ids(tok, "path.join(a)")) == len(ids(tok, "path.join(a)"))
    assert guide.accepts([one(tok, "path"), one(tok, "."), one(tok, "x")]) == 2  # os.path.x


def test_repilot_forces_the_rest_of_a_unique_member(engine, monitor, tok):
    guide = started(engine, tok, "import os\nos.path.supp")  # supports_unicode_filenames
    forced = guide.forced()
    assert forced == ids(tok, "orts_unicode_filenames") and len(forced) > 2
    assert guide.stats()["completions_forced"] == 1 and guide.stats()["completion_tokens"] == 0
    # the member monitor alone allows other tokenizations of the same rest
    alone = started(monitor, tok, "import os\nos.path.supp").allowed()
    assert int(alone.sum()) > 1 and int(guide.allowed().sum()) == 1
    for token in forced:
        assert guide.consume(token)
    assert guide.forced() == [] and not guide.allowed()[one(tok, "x")]
    assert guide.allowed()[one(tok, "(")]
    assert guide.stats()["completion_tokens"] == len(forced)
    guide.rollback(len(forced))
    assert guide.stats()["completion_tokens"] == 0


def test_repilot_waits_while_several_members_remain(engine, tok):
    guide = started(engine, tok, "import os\nos.getcw")  # getcwd, getcwdb
    assert guide.forced() == []
    assert guide.consume(one(tok, "d"))
    assert guide.forced() == [] and guide.stats()["completions_forced"] == 0


def first_members(prompt: str, text: str) -> list[tuple[str, str]]:
    """(code up to each `.` after the prompt's last one, the identifier after it) in prompt + text."""
    code = prompt + text
    out = []
    for found in re.finditer(r"\.([A-Za-z_]\w*)?", code[len(prompt) - 1:]):
        at = len(prompt) - 1 + found.start() + 1
        out.append((code[:at], found.group(1) or ""))
    return out


PROMPTS = ["import struct\n\n\ndef pack(x):\n    return struct.",
           "import sys\n\n\ndef main():\n    sys.",
           "import string\n\nletters = string."]


@pytest.mark.parametrize("temperature,seed", [(0.0, None), (0.8, 1), (0.8, 2)])
def test_guided_generation_members_resolve(demo, temperature, seed):
    guide = MemberMonitor(demo.tokenizer)
    for prompt in PROMPTS:
        out = tokenforge.generate(demo, prompt, max_new_tokens=12, stop="\n", guide=guide,
                                  temperature=temperature, seed=seed)
        code, member = first_members(prompt, out.text)[0]
        assert member and member in jedi_members(code), (prompt, out.text)
        assert out.stats.guide["name"] == "member_monitor" and out.stats.guide["member_accesses"] >= 1


def test_repilot_generation_saves_forwards_and_stays_lossless(demo):
    prompt = "import os\n\n\ndef main():\n    return os.path.supp"
    guide = make_guide(demo, GuideSpec(repilot=True))
    assert isinstance(guide, CompletionEngine)
    plain = tokenforge.generate(demo, prompt, max_new_tokens=10, guide=guide)
    assert plain.text.startswith("orts_unicode_filenames")
    # the first of them comes from the prompt's forward, the others are forced
    assert plain.stats.guide["forced_tokens"] >= len(ids(demo.tokenizer, "orts_unicode_filenames")) - 1
    assert plain.stats.guide["completions_forced"] == 1
    assert plain.stats.target_forwards < plain.stats.new_tokens
    speculative = tokenforge.generate(demo, prompt, method="pld", max_new_tokens=10, guide=guide)
    assert speculative.token_ids == plain.token_ids
