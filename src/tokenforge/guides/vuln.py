"""Vulnerability-constrained decoding: a model that labels its own vulnerable lines, and a guide
that never lets it write a label (`train-vuln`, `GuideSpec(deny_vulnerabilities=True)`).

Paper: Storhaug, Li & Hu, "Efficient Avoidance of Vulnerabilities in Auto-completed Smart
Contract Code Using Vulnerability-constrained Decoding", arXiv 2309.09826.

Algorithm. (1) Label a corpus: every vulnerable line gets a vulnerability-type label on the line
before it. (2) Fine-tune the code model on the labelled corpus, so that it writes a label before
it writes a vulnerable line: the labels act as a classifier embedded in the generator. (3) At
decoding, deny the label tokens (their probability is set to zero). The model learned that every
vulnerable line follows a label, so a line that follows no label is, to the model, not a
vulnerable one: it continues with code it would not label. The paper fine-tuned GPT-J (6B) on
Ethereum smart contracts; the labels identified 62% of the vulnerable code, and denial avoided
67% of it.

Here (Python, lab scale):
- Labels come from a real linter: `bandit` (its Python API, on temporary files). One label per
  bandit rule in `RULES` (B102 exec, B301 pickle, B307 eval, B324 md5/sha1, B506 yaml.load,
  B602 subprocess shell=True, B605 os.system/os.popen, B608 SQL built from strings), written
  `<vuln:B307>` on a line of its own, indented like the statement it precedes. A finding is moved
  to the first line of the innermost statement that holds it (bandit reports a multi-line call at
  its `shell=True` line), so the label precedes the whole statement.
- Each label is one added token whose text is ` <vuln:B307>` (a leading space, like the words of
  byte-level BPE): the indentation before it then tokenizes as it does before code (`\\n   ` +
  ` return`), so the label is one extra token at the point where the model chooses the line's
  first word, and denying it leaves the model where it would be on unlabelled code.
  Added tokens are not special (decoded text shows them; `strip_labels` removes them).
- Corpus (`build_corpus`): a seeded subset of the demo's stdlib training files (too clean alone:
  bandit flags 18 lines of these rules in the first 200 files) plus synthetic modules of realistic
  functions, each written insecurely (eval, pickle, shell=True, yaml.load, exec, md5, os.system,
  SQL strings) or with its safe counterpart (ast.literal_eval, json, argument lists,
  yaml.safe_load, sha256, parameterised queries, ...), with the same surrounding code. Labels on
  the synthetic code are bandit's too, not the templates'.
- Fine-tuning (`fine_tune`): the demo model, vocabulary and embeddings grown by the label tokens
  (new rows mean-initialised), trained by the shared library (`models.training.train_model`:
  AdamW, warm-up + cosine, bf16 autocast on the CPU) and saved as float16 safetensors under
  `$TOKENFORGE_CACHE_DIR/models/demo-vuln` (else `~/.cache/tokenforge/...`); a cached model with
  the same configuration is reused. Nothing is downloaded.
- Decoding: `vulnerability_denial(tokenizer)` is a `DenyTokens` over the label tokens, so it runs
  under every method of the engine (drafted label tokens are cut from the tree).

Options (VulnConfig): base="demo", steps=200, batch_size=16, seq_len=256, lr=1e-3, warmup=15,
stdlib_files=30, synthetic_modules=1500, insecure_share=0.6, seed=0, threads=1: about 9 minutes
on one busy CPU core; 0.82M tokens seen, 2.6 passes over a 0.32M-token stream (57% synthetic).
It costs the model some of its stdlib: held-out stdlib loss 4.90 -> 5.57 nats/token. A smaller
run (lr 5e-4, 150 steps, 60 stdlib files, 45% synthetic) left the labels weak: denial then
removed 18% of the findings, not 87% (benchmarks/vuln_denial.py).

Differences from the paper: a static analyser's findings (not audited vulnerabilities) are the
labels, most labelled code is synthetic, one model is fine-tuned once on the labelled mixture
(the paper fine-tuned twice: on code, then on labelled vulnerable contracts), there is one
label per bandit rule, and the model has 8.9M parameters, not 6B. At this scale the tuned model
mostly recites its training templates (often not the one the prompt asks for; see the benchmark's
"own" and "params" columns): the labels and denial steer which template it recites.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import random
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from string import Template

from tokenforge.errors import GuideError
from tokenforge.guides.base import DenyTokens

RULES: dict[str, str] = {
    "B102": "exec",
    "B301": "pickle deserialisation",
    "B307": "eval",
    "B324": "md5 / sha1 hash",
    "B506": "yaml.load without a safe loader",
    "B602": "subprocess with shell=True",
    "B605": "os.system / os.popen (a shell)",
    "B608": "SQL built from strings",
}
LABEL_RE = re.compile(r"<vuln:(B\d{3})>")
_LABEL_TOKEN_RE = re.compile(r" ?<vuln:(B\d{3})>")
_LABEL_LINE_RE = re.compile(r"^[ \t]*(?:<vuln:B\d{3}>[ \t]*)+(?:\n|$)", re.MULTILINE)
TRAIN_COMMAND = "tokenforge train-vuln"


def label(rule: str) -> str:
    return f"<vuln:{rule}>"


def label_token(rule: str) -> str:
    """The added token's text: the label after one space (see the module docstring)."""
    return " " + label(rule)


# ---------------------------------------------------------------------------------------------
# bandit


@dataclass(frozen=True)
class Finding:
    rule: str  # bandit's test id, e.g. "B307"
    line: int  # 1-based line bandit reports
    lines: tuple[int, ...]  # the lines the finding spans
    severity: str
    confidence: str


def bandit_scan(texts: list[str]) -> list[list[Finding] | None]:
    """Every bandit finding (all rules, all severities, `# nosec` ignored) in each text; None for a
    text bandit could not parse."""
    with warnings.catch_warnings():  # stevedore's deprecation notices, as bandit loads
        warnings.simplefilter("ignore", DeprecationWarning)
        from bandit.core import config, manager

    logger = logging.getLogger("bandit")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # its per-file chatter
    try:
        return _scan(texts, config, manager)
    finally:
        logger.setLevel(level)


def _scan(texts: list[str], config, manager) -> list[list[Finding] | None]:
    with tempfile.TemporaryDirectory(prefix="tokenforge-bandit-") as tmp:
        paths = []
        for i, text in enumerate(texts):
            path = Path(tmp) / f"{i}.py"
            path.write_text(text, encoding="utf-8")
            paths.append(str(path))
        results: dict[str, list[Finding]] = {p: [] for p in paths}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            mgr = manager.BanditManager(config.BanditConfig(), "file", quiet=True,
                                        ignore_nosec=True)
        mgr.files_list = list(paths)
        mgr.run_tests()
        skipped = {name for name, _ in mgr.skipped}
        for issue in mgr.get_issue_list():
            results[issue.fname].append(Finding(
                issue.test_id, int(issue.lineno), tuple(int(n) for n in issue.linerange),
                str(issue.severity), str(issue.confidence)))
    return [None if p in skipped else sorted(results[p], key=lambda f: (f.line, f.rule))
            for p in paths]


def _statement_start(tree: ast.AST | None, line: int) -> int:
    """The first line of the innermost statement that spans `line` (the line itself if none)."""
    best = None
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.stmt) and node.lineno <= line <= (node.end_lineno or node.lineno):
            if best is None or node.lineno >= best.lineno:
                best = node
    return best.lineno if best is not None else line


def insert_labels(text: str, findings: list[Finding], rules=RULES) -> str:
    """`text` with a label line before each statement holding a finding of `rules`."""
    wanted = [f for f in findings if f.rule in rules]
    if not wanted:
        return text
    try:
        tree = ast.parse(text)
    except SyntaxError:
        tree = None
    at: dict[int, list[str]] = {}
    for finding in wanted:
        start = _statement_start(tree, finding.line)
        if finding.rule not in at.setdefault(start, []):
            at[start].append(finding.rule)
    lines = re.findall(r"[^\n]*\n|[^\n]+$", text)  # "\n" only, as bandit's line numbers count
    out = []
    for number, line in enumerate(lines, start=1):
        for rule in at.get(number, ()):
            indent = line[: len(line) - len(line.lstrip(" \t"))]
            out.append(indent + (label(rule) if indent.endswith(" ") else label_token(rule)) + "\n")
        out.append(line)
    return "".join(out)


def label_corpus(files_or_texts, rules=RULES) -> list[str]:
    """Each file (a Path) or text (a str) with bandit's findings of `rules` labelled; a text bandit
    cannot parse is kept unlabelled."""
    texts = [item.read_text(encoding="utf-8", errors="replace") if isinstance(item, Path) else item
             for item in files_or_texts]
    return [text if found is None else insert_labels(text, found, rules)
            for text, found in zip(texts, bandit_scan(texts))]


def strip_labels(text: str) -> str:
    """`text` without label lines (and without labels written inside a line)."""
    return _LABEL_TOKEN_RE.sub("", _LABEL_LINE_RE.sub("", text))


# ---------------------------------------------------------------------------------------------
# label tokens and the guide


def label_token_ids(tokenizer) -> dict[str, int]:
    """Rule -> token id of the label tokens the tokenizer has (empty when it has none)."""
    vocab = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    found = {}
    for content, token_id in vocab.items():
        match = _LABEL_TOKEN_RE.fullmatch(content)
        if match:
            found[match.group(1)] = int(token_id)
    return dict(sorted(found.items()))


def add_label_tokens(tokenizer, model=None, rules=RULES) -> dict[str, int]:
    """Add one label token per rule to `tokenizer` (not special, so decoded text shows it) and
    grow `model`'s embeddings (and LM head) to the new vocabulary; returns rule -> token id."""
    from tokenizers import AddedToken

    have = label_token_ids(tokenizer)
    new = [AddedToken(label_token(rule), normalized=False, special=False, lstrip=False,
                      rstrip=False, single_word=False) for rule in rules if rule not in have]
    if new:
        tokenizer.add_tokens(new)
    if model is not None and model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return label_token_ids(tokenizer)


class VulnerabilityDenial(DenyTokens):
    """Vulnerability-constrained decoding: the label tokens are never allowed."""

    name = "deny_vulnerabilities"

    def __init__(self, labels: dict[str, int]):
        super().__init__(list(labels.values()))
        self.labels = dict(labels)


def vulnerability_denial(tokenizer) -> VulnerabilityDenial:
    """The guide that denies every vulnerability label of `tokenizer` (GuideError without any)."""
    labels = label_token_ids(tokenizer)
    if not labels:
        raise GuideError("deny_vulnerabilities: this model was not trained with vulnerability "
                         "labels (its tokenizer has no <vuln:B...> tokens); make one with "
                         f"`{TRAIN_COMMAND}` and load the folder it prints")
    return VulnerabilityDenial(labels)


# ---------------------------------------------------------------------------------------------
# synthetic insecure / secure functions


@dataclass(frozen=True)
class Task:
    """A function written insecurely (`bad`) or safely (`good`). `shape`: "expr" (a value of the
    parameters), "file" (a value read from the open file $f) or "stmt" (a statement)."""

    rule: str
    name: str
    params: str
    doc: str
    shape: str
    bad: str
    good: str
    bad_imports: tuple[str, ...]
    good_imports: tuple[str, ...]
    mode: str = '"r"'


def _t(rule, name, params, doc, shape, bad, good, bad_imports, good_imports, mode='"r"') -> Task:
    return Task(rule, name, params, doc, shape, bad, good, tuple(bad_imports.split()),
                tuple(good_imports.split()), mode)


TRAIN_TASKS: list[Task] = [
    # B307 eval
    _t("B307", "parse_literal", "text", "Parse a Python literal written in text.", "expr",
       "eval(text)", "ast.literal_eval(text)", "", "ast"),
    _t("B307", "read_option", "raw", "Convert an option string into its value.", "expr",
       "eval(raw.strip())", "ast.literal_eval(raw.strip())", "", "ast"),
    _t("B307", "decode_point", "line", "Decode a point written as '(x, y)'.", "expr",
       "tuple(eval(line))", "tuple(ast.literal_eval(line))", "", "ast"),
    _t("B307", "coerce_setting", "setting", "Coerce a setting read from the environment.", "expr",
       "eval(setting, {\"__builtins__\": {}})", "ast.literal_eval(setting)", "", "ast"),
    _t("B307", "unrepr", "s", "Inverse of repr() for simple values.", "expr",
       "eval(s)", "ast.literal_eval(s)", "", "ast"),
    _t("B307", "parse_mapping", "text", "Parse a dict literal from text.", "expr",
       "dict(eval(text))", "dict(ast.literal_eval(text))", "", "ast"),
    # B301 pickle
    _t("B301", "load_cache", "path", "Load cached results from path.", "file",
       "pickle.load($f)", "json.load($f)", "pickle", "json", '"rb"'),
    _t("B301", "restore_state", "path", "Restore the saved state from a file.", "file",
       "pickle.load($f)", "json.load($f)", "pickle", "json", '"rb"'),
    _t("B301", "read_snapshot", "filename", "Read a snapshot written by save_snapshot.", "file",
       "pickle.loads($f.read())", "json.loads($f.read())", "pickle", "json", '"rb"'),
    _t("B301", "deserialize", "blob", "Deserialize a message received from the network.", "expr",
       "pickle.loads(blob)", "json.loads(blob)", "pickle", "json"),
    _t("B301", "from_bytes", "data", "Rebuild the object from its serialized bytes.", "expr",
       "pickle.loads(data)", "json.loads(data.decode(\"utf-8\"))", "pickle", "json"),
    _t("B301", "load_session", "path", "Load a user session from disk.", "file",
       "pickle.load($f)", "json.load($f)", "pickle", "json", '"rb"'),
    # B602 subprocess shell=True
    _t("B602", "list_directory", "path", "List the files in path.", "expr",
       "subprocess.run(f\"ls -l {path}\", shell=True, capture_output=True, text=True).stdout",
       "subprocess.run([\"ls\", \"-l\", path], capture_output=True, text=True).stdout",
       "subprocess", "subprocess"),
    _t("B602", "count_lines", "path", "Count the lines of a file with wc.", "expr",
       "int(subprocess.check_output(f\"wc -l < {path}\", shell=True, text=True))",
       "int(subprocess.check_output([\"wc\", \"-l\", path], text=True).split()[0])",
       "subprocess", "subprocess"),
    _t("B602", "compress_file", "path", "Compress a file with gzip, keeping the original.", "stmt",
       "subprocess.run(f\"gzip -k {path}\", shell=True, check=True)",
       "subprocess.run([\"gzip\", \"-k\", path], check=True)", "subprocess", "subprocess"),
    _t("B602", "ping_host", "host", "Ping a host once; True when it answers.", "expr",
       "subprocess.call(f\"ping -c 1 {host}\", shell=True) == 0",
       "subprocess.call([\"ping\", \"-c\", \"1\", host]) == 0", "subprocess", "subprocess"),
    _t("B602", "disk_usage", "path", "Return the disk usage of a folder.", "expr",
       "subprocess.check_output(f\"du -sh {path}\", shell=True, text=True).split()[0]",
       "subprocess.check_output([\"du\", \"-sh\", path], text=True).split()[0]",
       "subprocess", "subprocess"),
    _t("B602", "search_text", "pattern", "Search the source tree for pattern.", "expr",
       "subprocess.run(f\"grep -rn {pattern} .\", shell=True, capture_output=True, "
       "text=True).stdout.splitlines()",
       "subprocess.run([\"grep\", \"-rn\", pattern, \".\"], capture_output=True, "
       "text=True).stdout.splitlines()", "subprocess", "subprocess"),
    # B605 os.system / os.popen
    _t("B605", "remove_tree", "path", "Delete a folder and everything in it.", "stmt",
       "os.system(f\"rm -rf {path}\")", "shutil.rmtree(path)", "os", "shutil"),
    _t("B605", "make_tarball", "folder", "Pack a folder into a tarball.", "stmt",
       "os.system(f\"tar czf {folder}.tar.gz {folder}\")",
       "subprocess.run([\"tar\", \"czf\", f\"{folder}.tar.gz\", folder], check=True)",
       "os", "subprocess"),
    _t("B605", "copy_file", "src, dst", "Copy src to dst.", "stmt",
       "os.system(f\"cp {src} {dst}\")", "shutil.copy(src, dst)", "os", "shutil"),
    _t("B605", "current_branch", "repo", "Name the checked-out branch of a repository.", "expr",
       "os.popen(f\"git -C {repo} branch --show-current\").read().strip()",
       "subprocess.run([\"git\", \"-C\", repo, \"branch\", \"--show-current\"], capture_output=True, "
       "text=True).stdout.strip()", "os", "subprocess"),
    _t("B605", "open_url", "url", "Open a URL in the browser.", "stmt",
       "os.system(f\"xdg-open {url}\")", "webbrowser.open(url)", "os", "webbrowser"),
    # B506 yaml.load
    _t("B506", "read_settings_file", "path", "Read the settings from a YAML file.", "file",
       "yaml.load($f, Loader=yaml.Loader)", "yaml.safe_load($f)", "yaml", "yaml"),
    _t("B506", "parse_manifest", "text", "Parse a YAML manifest.", "expr",
       "yaml.load(text, Loader=yaml.FullLoader)", "yaml.safe_load(text)", "yaml", "yaml"),
    _t("B506", "load_fixtures", "path", "Load the test fixtures from a YAML file.", "file",
       "yaml.load($f, Loader=yaml.UnsafeLoader)", "yaml.load($f, Loader=yaml.SafeLoader)",
       "yaml", "yaml"),
    _t("B506", "read_pipeline", "path", "Read a CI pipeline definition.", "file",
       "yaml.load($f)", "yaml.safe_load($f)", "yaml", "yaml"),
    _t("B506", "decode_document", "stream", "Decode a YAML document from stream.", "expr",
       "yaml.load(stream, Loader=yaml.Loader)", "yaml.safe_load(stream)", "yaml", "yaml"),
    # B102 exec
    _t("B102", "run_hook", "source, namespace", "Run a hook's source code in namespace.", "stmt",
       "exec(source, namespace)", "namespace.update(ast.literal_eval(source))", "", "ast"),
    _t("B102", "call_handler", "name", "Call the handler function called name.", "stmt",
       "exec(f\"{name}()\")", "globals()[name]()", "", ""),
    _t("B102", "define_constant", "name, value", "Define a module constant.", "stmt",
       "exec(f\"{name} = {value!r}\", globals())", "globals()[name] = value", "", ""),
    _t("B102", "load_plugin_code", "path", "Load the plugin definitions from path.", "file",
       "exec($f.read(), globals())", "globals().update(json.load($f))", "", "json"),
    # B324 md5 / sha1
    _t("B324", "file_checksum", "data", "Checksum of the given bytes.", "expr",
       "hashlib.md5(data).hexdigest()", "hashlib.sha256(data).hexdigest()", "hashlib", "hashlib"),
    _t("B324", "cache_key", "text", "A cache key for text.", "expr",
       "hashlib.md5(text.encode()).hexdigest()", "hashlib.sha256(text.encode()).hexdigest()",
       "hashlib", "hashlib"),
    _t("B324", "password_digest", "password, salt", "Digest of a salted password.", "expr",
       "hashlib.sha1(salt + password.encode()).hexdigest()",
       "hashlib.pbkdf2_hmac(\"sha256\", password.encode(), salt, 100_000).hex()",
       "hashlib", "hashlib"),
    _t("B324", "etag_for", "body", "ETag header value for a response body.", "expr",
       "'\"' + hashlib.md5(body).hexdigest() + '\"'", "'\"' + hashlib.sha256(body).hexdigest() + '\"'",
       "hashlib", "hashlib"),
    _t("B324", "fingerprint", "key", "Fingerprint of a public key.", "expr",
       "hashlib.new(\"md5\", key).hexdigest()", "hashlib.new(\"sha256\", key).hexdigest()",
       "hashlib", "hashlib"),
    # B608 SQL strings
    _t("B608", "find_user", "cursor, name", "Find the user called name.", "expr",
       "cursor.execute(f\"SELECT * FROM users WHERE name = '{name}'\").fetchone()",
       "cursor.execute(\"SELECT * FROM users WHERE name = ?\", (name,)).fetchone()", "", ""),
    _t("B608", "delete_order", "cursor, order_id", "Delete an order.", "stmt",
       "cursor.execute(\"DELETE FROM orders WHERE id = %s\" % order_id)",
       "cursor.execute(\"DELETE FROM orders WHERE id = ?\", (order_id,))", "", ""),
    _t("B608", "count_items", "conn, category", "Count the items of a category.", "expr",
       "conn.execute(\"SELECT COUNT(*) FROM items WHERE category = '\" + category + \"'\")"
       ".fetchone()[0]",
       "conn.execute(\"SELECT COUNT(*) FROM items WHERE category = ?\", (category,)).fetchone()[0]",
       "", ""),
    _t("B608", "update_email", "db, user_id, email", "Change a user's email address.", "stmt",
       "db.execute(\"UPDATE users SET email = '{}' WHERE id = {}\".format(email, user_id))",
       "db.execute(\"UPDATE users SET email = ? WHERE id = ?\", (email, user_id))", "", ""),
    _t("B608", "search_products", "cursor, term", "Products whose name contains term.", "expr",
       "cursor.execute(f\"SELECT name FROM products WHERE name LIKE '%{term}%'\").fetchall()",
       "cursor.execute(\"SELECT name FROM products WHERE name LIKE ?\", (f\"%{term}%\",)).fetchall()",
       "", ""),
]

_EXPR = ["    return $x\n",
         "    $v = $x\n    return $v\n",
         "    if not $p:\n        raise ValueError(\"$p is empty\")\n    return $x\n",
         "    try:\n        $v = $x\n    except Exception as err:\n"
         "        raise RuntimeError(f\"$name failed: {err}\") from err\n    return $v\n"]
_FILE = ["    with open($p, $mode) as $f:\n        return $x\n",
         "    with open($p, $mode) as $f:\n        $v = $x\n    return $v\n",
         "    if not os.path.exists($p):\n        return None\n    with open($p, $mode) as $f:\n"
         "        return $x\n"]
_STMT = ["    $x\n",
         "    if not $p:\n        raise ValueError(\"$p is empty\")\n    $x\n",
         "    $x\n    return True\n"]
_HANDLES = ["f", "fh", "fp", "handle", "stream"]
_VARS = ["result", "value", "data", "out", "payload"]


def synthetic_function(task: Task, insecure: bool, rng: random.Random) -> tuple[str, set[str]]:
    """One function for `task` and the modules it imports."""
    wrappers = {"expr": _EXPR, "file": _FILE, "stmt": _STMT}[task.shape]
    wrapper = rng.choice(wrappers)
    handle = rng.choice(_HANDLES)
    expr = Template(task.bad if insecure else task.good).safe_substitute(f=handle)
    first = task.params.split(",")[0].strip()
    body = Template(wrapper).safe_substitute(x=expr, v=rng.choice(_VARS), p=first, f=handle,
                                             mode=task.mode, name=task.name)
    doc = f"    \"\"\"{task.doc}\"\"\"\n" if rng.random() < 0.8 else ""
    imports = set(task.bad_imports if insecure else task.good_imports)
    if "os.path" in body:
        imports.add("os")
    return f"def {task.name}({task.params}):\n{doc}{body}", imports


def synthetic_modules(n: int, seed: int = 0, insecure_share: float = 0.6,
                      tasks: list[Task] = TRAIN_TASKS) -> list[str]:
    """`n` modules of 1-4 synthetic functions each (insecure with probability `insecure_share`),
    their imports on top; a module sometimes imports an unsafe module it then does not use, so
    that an import does not give the body away."""
    rng = random.Random(seed)
    modules = []
    for _ in range(n):
        functions, imports = [], set()
        for task in rng.sample(tasks, rng.randint(1, 4)):
            insecure = rng.random() < insecure_share
            text, needs = synthetic_function(task, insecure, rng)
            functions.append(text)
            imports |= needs
            if not insecure and rng.random() < 0.3:
                imports |= set(task.bad_imports)
        head = "".join(f"import {name}\n" for name in sorted(imports))
        modules.append((head + "\n\n" if head else "") + "\n\n".join(functions))
    return modules


# ---------------------------------------------------------------------------------------------
# fine-tuning


@dataclass
class VulnConfig:
    base: str = "demo"
    steps: int = 200
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 1e-3
    warmup: int = 15
    stdlib_files: int = 30  # demo training files mixed in (seeded subset)
    synthetic_modules: int = 1500
    insecure_share: float = 0.6
    seed: int = 0
    threads: int = 1
    eval_windows: int = 16

    def fingerprint(self) -> str:
        """Identifies the run: the configuration, the rules and the synthetic tasks."""
        blob = json.dumps([asdict(self), RULES, [asdict(t) for t in TRAIN_TASKS]], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_dir() -> Path:
    """Where `fine_tune` keeps its model: the user cache (see decoding/costs.py's cache_dir)."""
    from tokenforge.decoding.costs import cache_dir

    folder = cache_dir()
    if folder is None:
        raise GuideError("TOKENFORGE_CACHE_DIR=off: pass --out to choose where the "
                         "vulnerability-labelled model goes")
    return folder / "models" / "demo-vuln"


def build_corpus(cfg: VulnConfig, log=print) -> dict:
    """The labelled training and held-out texts, and what bandit labelled."""
    from tokenforge.models.train_demo import TrainConfig, split_corpus

    rng = random.Random(cfg.seed)
    train_files, heldout_files, _ = split_corpus(TrainConfig().heldout_every)
    stdlib = sorted(rng.sample(train_files, min(cfg.stdlib_files, len(train_files))))
    heldout_stdlib = heldout_files[: max(4, cfg.stdlib_files // 10)]
    synthetic = synthetic_modules(cfg.synthetic_modules, cfg.seed, cfg.insecure_share)
    cut = max(1, len(synthetic) // 20)
    start = time.time()
    labelled = label_corpus(stdlib + heldout_stdlib + synthetic)
    n_train, n_held = len(stdlib), len(heldout_stdlib)
    parts = {"stdlib": labelled[:n_train], "stdlib_heldout": labelled[n_train:n_train + n_held],
             "synthetic": labelled[n_train + n_held + cut:],
             "synthetic_heldout": labelled[n_train + n_held:n_train + n_held + cut]}
    counts = {name: _label_counts(texts) for name, texts in parts.items()}
    log(f"bandit labelled {sum(sum(c.values()) for c in counts.values())} statements in "
        f"{len(labelled)} texts ({time.time() - start:.0f}s): "
        + ", ".join(f"{name} {dict(c)}" for name, c in counts.items()))
    return {"parts": parts, "label_counts": counts,
            "stdlib_files": [p.name for p in stdlib]}


def _label_counts(texts: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for text in texts:
        for rule in LABEL_RE.findall(text):
            counts[rule] = counts.get(rule, 0) + 1
    return dict(sorted(counts.items()))


def fine_tune(out: Path | None = None, cfg: VulnConfig | None = None, force: bool = False,
              log=print) -> Path:
    """The demo model fine-tuned to label bandit's findings, saved in `out` (default: the cache);
    an existing model there with the same configuration is reused unless `force`."""
    import torch

    from tokenforge.models.load import load_model
    from tokenforge.models.training import Recipe, encode_corpus, evaluate, save_model, train_model

    cfg = cfg or VulnConfig()
    out = Path(out) if out is not None else default_dir()
    record_path = out / "vuln.json"
    if not force and record_path.exists() and (out / "model.safetensors").exists():
        if json.loads(record_path.read_text()).get("fingerprint") == cfg.fingerprint():
            log(f"reusing the vulnerability-labelled model in {out}")
            return out
    torch.manual_seed(cfg.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        base = load_model(cfg.base, device="cpu", dtype="float32")
        tokenizer, model = base.tokenizer, base.model
        original_vocab = len(tokenizer)
        corpus = build_corpus(cfg, log)
        parts = corpus["parts"]
        plain_heldout = encode_corpus(tokenizer, [strip_labels(t) for t in parts["stdlib_heldout"]])
        base_loss = evaluate(model, plain_heldout, cfg.seq_len, cfg.eval_windows)
        labels = add_label_tokens(tokenizer, model)
        stream = encode_corpus(tokenizer, parts["stdlib"] + parts["synthetic"])
        heldout = encode_corpus(tokenizer, parts["stdlib_heldout"] + parts["synthetic_heldout"])
        n_synth = len(encode_corpus(tokenizer, parts["synthetic"]))
        log(f"{len(stream):,} training tokens ({n_synth / len(stream):.0%} synthetic), "
            f"{len(heldout):,} held out; label tokens {labels}")
        recipe = Recipe(lr=cfg.lr, warmup=cfg.warmup, seq_len=cfg.seq_len,
                        batch_size=cfg.batch_size, seed=cfg.seed, eval_windows=cfg.eval_windows)
        stats = train_model(model, stream, heldout, recipe, cfg.steps, "demo-vuln", log)
        tuned_loss = evaluate(model, plain_heldout, cfg.seq_len, cfg.eval_windows)
        out.mkdir(parents=True, exist_ok=True)
        stats["file_bytes"] = save_model(model, out, tokenizer)
    finally:
        torch.set_num_threads(threads)
    record = {
        "fingerprint": cfg.fingerprint(), "config": asdict(cfg), "rules": RULES,
        "labels": labels, "original_vocab": original_vocab,
        "label_counts": corpus["label_counts"], "stdlib_files": corpus["stdlib_files"],
        "train_tokens": int(len(stream)), "synthetic_tokens": int(n_synth),
        "stdlib_heldout_loss": {"base": round(base_loss, 4), "tuned": round(tuned_loss, 4)},
        **stats,
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    log(f"saved {out}: held-out loss {stats['heldout_loss']}, stdlib held-out loss "
        f"{base_loss:.3f} -> {tuned_loss:.3f}, {stats['wall_time_s']}s")
    return out


def register(app) -> None:
    import typer

    @app.command("train-vuln")
    def train_vuln(
        out: Path = typer.Option(None, help="output folder (default: "
                                            "$TOKENFORGE_CACHE_DIR/models/demo-vuln)"),
        steps: int = typer.Option(VulnConfig.steps, help="optimiser steps"),
        batch_size: int = typer.Option(VulnConfig.batch_size, help="windows per step"),
        lr: float = typer.Option(VulnConfig.lr, help="peak learning rate"),
        synthetic: int = typer.Option(VulnConfig.synthetic_modules,
                                      help="synthetic modules in the corpus"),
        stdlib_files: int = typer.Option(VulnConfig.stdlib_files, help="stdlib files mixed in"),
        threads: int = typer.Option(VulnConfig.threads, help="CPU threads"),
        seed: int = typer.Option(VulnConfig.seed, help="seed for data and order"),
        force: bool = typer.Option(False, help="retrain even when a matching model is cached"),
    ):
        """Fine-tune the demo model to write bandit's vulnerability labels (for
        deny_vulnerabilities); a few minutes on the CPU."""
        from tokenforge.errors import InvalidOptionError

        if steps < 1 or batch_size < 1 or threads < 1 or synthetic < 1 or stdlib_files < 0:
            raise InvalidOptionError("--steps, --batch-size, --threads and --synthetic must be "
                                     ">= 1 and --stdlib-files >= 0")
        cfg = VulnConfig(steps=steps, batch_size=batch_size, lr=lr, synthetic_modules=synthetic,
                         stdlib_files=stdlib_files, threads=threads, seed=seed)
        path = fine_tune(out, cfg, force=force, log=lambda msg: typer.echo(msg, err=True))
        typer.echo(f"vulnerability-labelled model: {path} (load it with "
                   f"tokenforge.load_model({str(path)!r}) and decode with "
                   f"guide=GuideSpec(deny_vulnerabilities=True))")
