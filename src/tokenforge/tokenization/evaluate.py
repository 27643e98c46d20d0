"""Compare tokenizers on corpora: bytes per token, tokens per document, vocabulary utilisation and
identifier fertility, as a Markdown table, a JSON record and a PNG plot.

These are the intrinsic measures of the KL3M tokenizer report (Bommarito et al., 2025) and of
Binary BPE (Bommarito, 2025). Differences: bytes are always the corpus' original bytes (a binary
handed to a text tokenizer is read as Latin-1, one character per byte, which is lossless but lets
bytes >= 0x80 cost two UTF-8 bytes inside that tokenizer); identifier fertility counts every token
that overlaps an ASCII identifier in context (not the identifier tokenized alone), keywords
excluded.
"""

from __future__ import annotations

import json
import keyword
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tokenforge.tokenization.corpora import Corpus
from tokenforge.tokenization.handles import Encoded, Handle

IDENTIFIER = re.compile(rb"(?<![0-9A-Za-z_])[A-Za-z_][A-Za-z0-9_]*")
KEYWORDS = {k.encode() for k in keyword.kwlist + keyword.softkwlist}


@dataclass
class Measurement:
    tokenizer: str
    vocab_size: int
    corpus: str
    documents: int
    bytes: int
    tokens: int
    used_ids: int
    identifiers: int  # 0 when the corpus is not code
    identifier_tokens: int

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(self.tokens, 1)

    @property
    def tokens_per_document(self) -> float:
        return self.tokens / max(self.documents, 1)

    @property
    def utilisation(self) -> float:
        return self.used_ids / max(self.vocab_size, 1)

    @property
    def fertility(self) -> float | None:
        return self.identifier_tokens / self.identifiers if self.identifiers else None


def identifier_tokens(data: bytes, enc: Encoded) -> tuple[int, int]:
    """(identifiers, tokens overlapping them) for one document."""
    ends = enc.ends
    starts = np.concatenate([[0], ends[:-1]])
    spans = [(m.start(), m.end()) for m in IDENTIFIER.finditer(data) if m.group() not in KEYWORDS]
    if not spans:
        return 0, 0
    s, e = np.asarray(spans).T
    first = np.searchsorted(ends, s, side="right")
    last = np.searchsorted(starts, e, side="left") - 1
    return len(spans), int(np.maximum(last - first + 1, 1).sum())


def measure(handle: Handle, corpus: Corpus, batch: int = 64) -> Measurement:
    tokens, used, idents, ident_tokens = 0, set(), 0, 0
    docs = corpus.documents
    for i in tqdm(range(0, len(docs), batch), desc=f"{handle.name} on {corpus.name}",
                  unit="batch", leave=False):
        chunk = docs[i : i + batch]
        for doc, enc in zip(chunk, handle.encode([d.data for d in chunk]), strict=True):
            tokens += len(enc.ids)
            used.update(np.unique(enc.ids).tolist())
            if corpus.kind == "code":
                n, t = identifier_tokens(doc.data, enc)
                idents, ident_tokens = idents + n, ident_tokens + t
    return Measurement(handle.name, handle.vocab_size, corpus.name, len(docs), corpus.n_bytes,
                       tokens, len(used), idents, ident_tokens)


def markdown_table(rows: list[Measurement], baseline: str | None = None) -> str:
    """One row per (corpus, tokenizer); `vs baseline` is tokens relative to `baseline`."""
    base = {m.corpus: m.tokens for m in rows if m.tokenizer == baseline}
    head = ["corpus", "tokenizer", "vocab", "bytes/token", "tokens/doc", "vocab used",
            "id fertility"] + ([f"tokens vs {baseline}"] if baseline else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in rows:
        cells = [m.corpus, m.tokenizer, f"{m.vocab_size:,}", f"{m.bytes_per_token:.2f}",
                 f"{m.tokens_per_document:,.0f}", f"{100 * m.utilisation:.1f}%",
                 f"{m.fertility:.2f}" if m.fertility is not None else "-"]
        if baseline:
            ref = base.get(m.corpus)
            cells.append(f"{100 * (m.tokens / ref - 1):+.1f}%" if ref else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Measurement], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = list(dict.fromkeys(m.corpus for m in rows))
    names = list(dict.fromkeys(m.tokenizer for m in rows))
    panels = [("bytes per token", lambda m: m.bytes_per_token),
              ("tokens per document (log scale)", lambda m: m.tokens_per_document),
              ("vocabulary utilisation (%)", lambda m: 100 * m.utilisation),
              ("identifier fertility (code)", lambda m: m.fertility or 0.0)]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    width = 0.8 / len(names)
    by_key = {(m.tokenizer, m.corpus): m for m in rows}
    for ax, (title, value) in zip(axes.flat, panels, strict=True):
        for j, name in enumerate(names):
            heights = [value(by_key[name, c]) if (name, c) in by_key else 0.0 for c in corpora]
            ax.bar(np.arange(len(corpora)) + j * width, heights, width, label=name)
        ax.set_xticks(np.arange(len(corpora)) + width * (len(names) - 1) / 2, corpora, fontsize=8)
        ax.set_title(title)
    axes.flat[1].set_yscale("log")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(names), 7), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[Measurement], out: Path, baseline: str | None) -> str:
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, baseline)
    (out / "table.md").write_text(table)
    records = [dict(asdict(m), bytes_per_token=m.bytes_per_token, fertility=m.fertility,
                    utilisation=m.utilisation) for m in rows]
    (out / "results.json").write_text(json.dumps(records, indent=2) + "\n")
    plot(rows, out / "tokenizers.png")
    return table
