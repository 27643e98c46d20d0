"""The lab's task generator: Python function tasks composed from primitives, with tests.

A task is a pipeline over one source of values, described in English and solved in one line:

    def sum_of_squares_of_odd(xs):
        \"\"\"Return the sum of the squares of the odd numbers in xs.
        >>> sum_of_squares_of_odd([1, 2, 3])
        10
        \"\"\"
        return sum(x * x for x in xs if x % 2 == 1)

Each pipeline has four stages: a source (a list of integers, the numbers 1..n, the digits of n,
the words of a string, its characters, the items of a dict), a filter (odd, longer than k,
starting with a vowel, ...), a map (square, upper-case, length, ...) and a result (sum, count,
largest, sorted list, joined string, ...). A **family** is one choice of the four stages;
instances of a family differ in constants, argument names, phrasing and test inputs. The split
is by family: held-out families are compositions of stages that no training task combines, so
a model that solves them has learnt the stages, not the instances.

Every stage carries its meaning twice: as a Python function (which computes the expected
outputs) and as a code fragment (which renders the reference solution). A task is kept only if
its rendered reference reproduces every expected output; this check runs in-process because the
reference is rendered from this module's own templates, never from a model's output (model
output runs only in the sandbox). Hidden tests: 12 inputs with edge cases (empty input, zero,
negative values); public tests: the 2-3 examples shown in the docstring.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tokenforge.tasks.taskset import Task

HELDOUT_EVERY = 8  # one family in 8 is held out, by hash of its name
HIDDEN_TESTS = 12
WORDS = ("apple", "bird", "cat", "dog", "egg", "fish", "goat", "hat", "ice", "jam", "kite",
         "lemon", "moon", "nest", "owl", "pear", "queen", "rose", "sun", "tree", "umbrella",
         "van", "wolf", "yak", "zebra", "Alpha", "Bravo", "Echo", "Oscar", "Tango", "idea",
         "orange", "under", "a", "an", "I", "sky", "rhythm", "banana", "Ear")
VOWELS = "aeiouAEIOU"


@dataclass(frozen=True)
class Stage:
    """One stage of a pipeline: `name` (family key), the English `phrase`, the code fragment and
    the Python meaning. `{k}` in the phrase and code is the instance's constant; `kinds` are the
    element kinds the stage applies to (int, str, char); `out` is the kind it yields."""

    name: str
    phrase: str
    code: str
    fn: Callable
    kinds: tuple[str, ...]
    out: str = ""  # map stages: the kind of their output ("" = same as input)
    constants: tuple[int, ...] = ()  # the values {k} takes (ints), or letters via `letters`
    letters: str = ""


@dataclass(frozen=True)
class Source:
    name: str
    arg: str  # the argument's name in the signature
    arg_alts: tuple[str, ...]
    var: str  # the loop variable
    iterate: str  # code of the iterable, {a} = the argument
    phrase: str  # "the {what} in {a}": {what} is the filtered map's noun
    kind: str
    values: Callable[[random.Random], object]  # one random input
    edge: tuple  # inputs every task of this source is tested on
    items: Callable[[object], list]  # the Python meaning of `iterate`


def _ints(rng: random.Random) -> list[int]:
    return [rng.randint(-9, 12) for _ in range(rng.randint(1, 8))]


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))


def _text(rng: random.Random) -> str:
    pool = string.ascii_letters + string.digits + "  ,.!"
    return "".join(rng.choice(pool) for _ in range(rng.randint(1, 14)))


def _dict(rng: random.Random) -> dict[str, int]:
    return {rng.choice(WORDS).lower(): rng.randint(-5, 20) for _ in range(rng.randint(1, 6))}


SOURCES = (
    Source("list", "xs", ("xs", "nums", "values", "numbers"), "x", "{a}", "in {a}", "int",
           _ints, ([], [0], [-3, 5, -3]), lambda a: list(a)),
    Source("range", "n", ("n", "limit", "m"), "i", "range(1, {a} + 1)", "from 1 to {a}", "int",
           lambda rng: rng.randint(0, 15), (0, 1, 7), lambda a: list(range(1, a + 1))),
    Source("digits", "n", ("n", "number", "num"), "d", "map(int, str(abs({a})))",
           "of {a}", "int", lambda rng: rng.randint(-99999, 999999),
           (0, 7, -405), lambda a: [int(c) for c in str(abs(a))]),
    Source("words", "s", ("s", "text", "sentence"), "w", "{a}.split()", "in {a}", "str",
           _sentence, ("", "a", "Echo owl apple"), lambda a: a.split()),
    Source("chars", "s", ("s", "text", "word"), "c", "{a}", "in {a}", "char",
           _text, ("", "aB3 ", "Hello World 42"), lambda a: list(a)),
    Source("dict", "d", ("d", "counts", "scores", "table"), "k", "{a}", "in {a}", "key",
           _dict, ({}, {"a": 0}, {"owl": 3, "egg": -2, "ice": 9}), lambda a: list(a)),
)

# Filters: a condition on the element (`{v}` = loop variable; dict filters also see `{a}[{v}]`).
FILTERS = (
    Stage("all", "", "", lambda v, k, a: True, ("int", "str", "char", "key")),
    Stage("odd", "odd", "{v} % 2 == 1", lambda v, k, a: v % 2 == 1, ("int",)),
    Stage("even", "even", "{v} % 2 == 0", lambda v, k, a: v % 2 == 0, ("int",)),
    Stage("positive", "positive", "{v} > 0", lambda v, k, a: v > 0, ("int",)),
    Stage("negative", "negative", "{v} < 0", lambda v, k, a: v < 0, ("int",)),
    Stage("nonzero", "nonzero", "{v} != 0", lambda v, k, a: v != 0, ("int",)),
    Stage("greater", "greater than {k}|above {k}|larger than {k}", "{v} > {k}",
          lambda v, k, a: v > k, ("int",), constants=tuple(range(10))),
    Stage("less", "less than {k}|below {k}|smaller than {k}", "{v} < {k}",
          lambda v, k, a: v < k, ("int",), constants=tuple(range(1, 10))),
    Stage("divisible", "divisible by {k}|that are multiples of {k}", "{v} % {k} == 0",
          lambda v, k, a: v % k == 0, ("int",), constants=(2, 3, 4, 5, 6, 7)),
    Stage("longer", "longer than {k} letters|with more than {k} letters", "len({v}) > {k}",
          lambda v, k, a: len(v) > k, ("str",), constants=(1, 2, 3, 4, 5)),
    Stage("shorter", "shorter than {k} letters|with fewer than {k} letters", "len({v}) < {k}",
          lambda v, k, a: len(v) < k, ("str",), constants=(2, 3, 4, 5, 6)),
    Stage("vowel_start", "starting with a vowel|that begin with a vowel", "{v}[0] in 'aeiouAEIOU'",
          lambda v, k, a: v[0] in VOWELS, ("str", "key")),
    Stage("capital", "capitalized", "{v}[0].isupper()", lambda v, k, a: v[0].isupper(), ("str",)),
    Stage("has_letter", "containing the letter '{k}'", "'{k}' in {v}", lambda v, k, a: k in v,
          ("str", "key"), letters="aeiorst"),
    Stage("vowel", "vowel", "{v} in 'aeiouAEIOU'", lambda v, k, a: v in VOWELS, ("char",)),
    Stage("digit", "digit", "{v}.isdigit()", lambda v, k, a: v.isdigit(), ("char",)),
    Stage("upper", "upper-case", "{v}.isupper()", lambda v, k, a: v.isupper(), ("char",)),
    Stage("letter", "letter", "{v}.isalpha()", lambda v, k, a: v.isalpha(), ("char",)),
    Stage("value_above", "with a value above {k}", "{a}[{v}] > {k}",
          lambda v, k, a: a[v] > k, ("key",), constants=tuple(range(11))),
    Stage("value_even", "with an even value", "{a}[{v}] % 2 == 0",
          lambda v, k, a: a[v] % 2 == 0, ("key",)),
)

# Maps: a transformation of the element; `out` is what it yields.
MAPS = (
    Stage("same", "", "{v}", lambda v, k, a: v, ("int", "str", "char")),
    Stage("square", "squares|squared values", "{v} * {v}", lambda v, k, a: v * v, ("int",)),
    Stage("cube", "cubes|third powers", "{v} ** 3", lambda v, k, a: v**3, ("int",)),
    Stage("double", "doubles", "2 * {v}", lambda v, k, a: 2 * v, ("int",)),
    Stage("negate", "negations|negatives", "-{v}", lambda v, k, a: -v, ("int",)),
    Stage("abs", "absolute values|magnitudes", "abs({v})", lambda v, k, a: abs(v), ("int",)),
    Stage("plus", "values plus {k}", "{v} + {k}", lambda v, k, a: v + k, ("int",),
          constants=tuple(range(1, 13))),
    Stage("times", "values times {k}|values multiplied by {k}", "{v} * {k}",
          lambda v, k, a: v * k, ("int",), constants=tuple(range(2, 10))),
    Stage("mod", "remainders modulo {k}|remainders after division by {k}", "{v} % {k}",
          lambda v, k, a: v % k, ("int",), constants=tuple(range(2, 10))),
    Stage("upper", "upper-case forms", "{v}.upper()", lambda v, k, a: v.upper(), ("str", "char")),
    Stage("lower", "lower-case forms", "{v}.lower()", lambda v, k, a: v.lower(), ("str", "char")),
    Stage("reverse", "reversals|reversed forms", "{v}[::-1]", lambda v, k, a: v[::-1], ("str",)),
    Stage("first", "first letters|initials", "{v}[0]", lambda v, k, a: v[0], ("str",), out="char"),
    Stage("length", "lengths|letter counts", "len({v})", lambda v, k, a: len(v), ("str",), out="int"),
    Stage("title", "capitalized forms", "{v}.capitalize()", lambda v, k, a: v.capitalize(),
          ("str",)),
    Stage("value", "values", "{a}[{v}]", lambda v, k, a: a[v], ("key",), out="int"),
)


@dataclass(frozen=True)
class Result:
    """The last stage: `template` wraps the generator expression `{g}`; `fn` reduces the list."""

    name: str
    phrase: str  # "{what}" is the stage noun phrase
    template: str
    fn: Callable[[list], object]
    kinds: tuple[str, ...]
    prefix: str  # the function name's first word


RESULTS = (
    Result("sum", "the sum of {what}|the total of {what}|{what}, added up", "sum({g})", sum,
           ("int",), "sum_of"),
    Result("count", "how many {what} there are|the number of {what}",
           "sum(1 for {v} in {it}{cond})", len, ("int", "str", "char", "key"), "count"),
    Result("max", "the largest of {what}, or None if there are none|the maximum of {what} "
           "(None if there are none)", "max(({g}), default=None)",
           lambda xs: max(xs, default=None), ("int", "str", "char"), "largest"),
    Result("min", "the smallest of {what}, or None if there are none|the minimum of {what} "
           "(None if there are none)", "min(({g}), default=None)",
           lambda xs: min(xs, default=None), ("int", "str", "char"), "smallest"),
    Result("list", "the list of {what}, in order|{what} as a list, in their original order",
           "[{g}]", list, ("int", "str", "char", "key"), "list"),
    Result("sorted", "the list of {what}, sorted in increasing order|{what} in ascending "
           "order, as a list", "sorted({g})", sorted, ("int", "str", "char", "key"), "sorted"),
    Result("desc", "the list of {what}, sorted in decreasing order|{what} from largest to "
           "smallest, as a list", "sorted(({g}), reverse=True)",
           lambda xs: sorted(xs, reverse=True), ("int", "str", "char", "key"), "descending"),
    Result("distinct", "how many different {what} there are|the number of distinct {what}",
           "len({{{g}}})", lambda xs: len(set(xs)), ("int", "str", "char", "key"), "distinct"),
    Result("any", "whether there is at least one of {what}|whether any of {what} exist",
           "any(True for {v} in {it}{cond})", lambda xs: len(xs) > 0,
           ("int", "str", "char", "key"), "has"),
    Result("join", "{what} joined with spaces|{what} separated by single spaces, as one string",
           "' '.join({g})", " ".join, ("str", "char"), "joined"),
    Result("concat", "{what} joined into one string|{what} concatenated", "''.join({g})",
           "".join, ("str", "char"), "concat"),
    Result("by_length", "the list of {what}, sorted by length and then alphabetically|{what} "
           "ordered by length, ties broken alphabetically",
           "sorted(({g}), key=lambda {v}: (len({v}), {v}))",
           lambda xs: sorted(xs, key=lambda w: (len(w), w)), ("str",), "by_length"),
)

# How a filtered, mapped source reads: "the squares of the odd numbers in xs".
NOUNS = {"int": "numbers", "str": "words", "char": "characters", "key": "keys"}
SOURCE_NOUNS = {"digits": "digits", "range": "numbers", "dict": "keys"}


def _adjective(stage: Stage) -> bool:
    """A one-word filter reads before the noun ("the odd numbers"), a longer one after it."""
    return " " not in stage.phrase.split("|")[0]


@dataclass(frozen=True)
class Family:
    """One composition: source, filter, a second filter (`extra`, "all" when none: an
    adjective and a phrase after the noun, "the odd numbers greater than 3", joined by `and`),
    map and result."""

    source: Source
    filter: Stage
    extra: Stage
    map: Stage
    result: Result

    @property
    def name(self) -> str:
        filters = self.filter.name + ("" if self.extra.name == "all" else f"+{self.extra.name}")
        return f"{self.source.name}/{filters}/{self.map.name}/{self.result.name}"

    @property
    def heldout(self) -> bool:
        return int(hashlib.sha1(self.name.encode()).hexdigest(), 16) % HELDOUT_EVERY == 0


def _valid(source: Source, filt: Stage, extra: Stage, mapping: Stage, result: Result) -> bool:
    if source.kind not in filt.kinds or source.kind not in extra.kinds:
        return False
    if extra.name != "all" and (filt.name == "all" or not _adjective(filt) or _adjective(extra)):
        return False
    if source.name == "range" and filt.name in ("positive", "negative", "nonzero"):
        return False  # always or never true of 1..n
    kind = source.kind
    if source.name == "dict":
        if mapping.name not in ("same", "value"):
            return False
        kind = "int" if mapping.name == "value" else "key"
    elif kind not in mapping.kinds:
        return False
    else:
        kind = mapping.out or kind
    if result.name in ("count", "any"):  # a map changes nothing to count
        return mapping.name == "same" and not (filt.name == "all" and result.name == "any")
    if result.name == "distinct" and source.name in ("range",) and mapping.name == "same":
        return False  # 1..n filtered is always distinct: a trivial family
    if kind == "key":
        kind = "str"
    return kind in result.kinds and not (kind == "char" and result.name == "by_length")


def families() -> list[Family]:
    """Every valid composition, in a stable order."""
    return [Family(s, f, e, m, r) for s in SOURCES for f in FILTERS for e in FILTERS
            for m in MAPS for r in RESULTS if _valid(s, f, e, m, r)]


@dataclass(frozen=True)
class Wording:
    """One instance's choices: argument name, constants and the phrasing of each stage."""

    arg: str
    k_filter: object
    k_extra: object
    k_map: object
    filter: str
    extra: str
    map: str
    result: str

    @classmethod
    def draw(cls, fam: Family, rng: random.Random) -> Wording:
        say = lambda stage: rng.choice(stage.phrase.split("|"))  # noqa: E731
        return cls(rng.choice(fam.source.arg_alts), _constant(fam.filter, rng),
                   _constant(fam.extra, rng), _constant(fam.map, rng), say(fam.filter),
                   say(fam.extra), say(fam.map), say(fam.result))


def _constant(stage: Stage, rng: random.Random):
    if stage.constants:
        return rng.choice(stage.constants)
    if stage.letters:
        return rng.choice(stage.letters)
    return None


def _what(fam: Family, w: Wording) -> str:
    """The noun phrase: "the squares of the odd numbers greater than 3 in xs"."""
    noun = SOURCE_NOUNS.get(fam.source.name, NOUNS[fam.source.kind])
    phrase = w.filter.format(k=w.k_filter)
    if not phrase:
        base = f"the {noun}"
    elif _adjective(fam.filter):
        base = f"the {phrase} {noun}"
    else:
        base = f"the {noun} {phrase}"
    if fam.extra.name != "all":
        base += " " + w.extra.format(k=w.k_extra)
    base += " " + fam.source.phrase.format(a=w.arg)
    if fam.map.name != "same":
        base = f"the {w.map.format(k=w.k_map)} of {base}"
    return base


def _code(fam: Family, w: Wording) -> str:
    v = fam.source.var
    it = fam.source.iterate.format(a=w.arg)
    conds = [stage.code.format(v=v, k=k, a=w.arg)
             for stage, k in ((fam.filter, w.k_filter), (fam.extra, w.k_extra)) if stage.code]
    cond = f" if {' and '.join(conds)}" if conds else ""
    expr = fam.map.code.format(v=v, k=w.k_map, a=w.arg)
    g = f"{expr} for {v} in {it}{cond}"
    return fam.result.template.format(g=g, v=v, it=it, cond=cond)


def _meaning(fam: Family, w: Wording) -> Callable:
    def solve(a):
        kept = [v for v in fam.source.items(a)
                if fam.filter.fn(v, w.k_filter, a) and fam.extra.fn(v, w.k_extra, a)]
        return fam.result.fn([fam.map.fn(v, w.k_map, a) for v in kept])
    return solve


def _function_name(fam: Family) -> str:
    parts = [fam.result.prefix]
    if fam.map.name != "same":
        parts.append(fam.map.name)
    parts += [stage.name for stage in (fam.filter, fam.extra) if stage.name != "all"]
    parts.append(fam.source.name)
    return "_".join(parts)


def make_task(fam: Family, rng: random.Random, task_id: str) -> Task | None:
    """One instance of `fam`, or None when its tests do not tell solutions apart (e.g. every
    hidden input gives the same answer)."""
    w = Wording.draw(fam, rng)
    name = _function_name(fam)
    solve = _meaning(fam, w)
    inputs = list(fam.source.edge)
    while len(inputs) < HIDDEN_TESTS + 3:
        value = fam.source.values(rng)
        if value not in inputs:
            inputs.append(value)
    try:
        expected = [solve(x) for x in inputs]
    except (IndexError, ValueError, TypeError):
        return None  # e.g. first letter of an empty word: the family does not fit this input
    if len({repr(e) for e in expected}) < 3:
        return None
    body = f"    return {_code(fam, w)}\n"
    examples = [len(fam.source.edge), len(fam.source.edge) + 1, len(fam.source.edge) - 1]
    doc_lines = [f"Return {w.result.format(what=_what(fam, w))}."]
    for i in examples:
        doc_lines += [f">>> {name}({inputs[i]!r})", repr(expected[i])]
    doc = "\n    ".join(doc_lines)
    prompt = f'def {name}({w.arg}):\n    """{doc}\n    """\n'
    public = [f"assert {name}({inputs[i]!r}) == {expected[i]!r}" for i in examples]
    hidden = [f"assert {name}({x!r}) == {e!r}" for i, (x, e) in enumerate(zip(inputs, expected))
              if i not in examples][:HIDDEN_TESTS]
    task = Task(task_id=task_id, prompt=prompt, entry_point=name, reference=body,
                public_tests=public, hidden_tests=hidden, family=fam.name)
    _check_reference(task, inputs, expected)
    return task


def _check_reference(task: Task, inputs: list, expected: list) -> None:
    """The rendered reference must reproduce the meaning on every input (a generator bug
    otherwise: raise, never ship a wrong task)."""
    namespace: dict = {}
    exec(task.prompt + task.reference, namespace)  # noqa: S102 - this module's own template
    solve = namespace[task.entry_point]
    for x, e in zip(inputs, expected):
        got = solve(x)
        if got != e or type(got) is not type(e):
            raise AssertionError(f"generator bug in {task.family}: {task.entry_point}({x!r}) "
                                 f"gives {got!r}, meaning says {e!r}")


def generate_tasks(split: str, count: int, seed: int) -> Iterator[Task]:
    """`count` tasks of the families of `split` ("train" or "heldout"), cycling through the
    families in a seeded order so that every family gets its share."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    pool = [f for f in families() if f.heldout == (split == "heldout")]
    rng = random.Random(f"{split}:{seed}")
    made = 0
    while made < count:
        order = pool[:]
        rng.shuffle(order)
        for fam in order:
            task = make_task(fam, rng, f"lab-{split}/{made}")
            if task is None:
                continue
            yield task
            made += 1
            if made == count:
                return
