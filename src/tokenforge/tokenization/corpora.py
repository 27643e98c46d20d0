"""Corpora that exist on every machine with Python, each split into training and held-out files.

KL3M (Bommarito et al., 2025) trains on curated legal and financial text and Binary BPE (Bommarito,
2025) on executables from several operating systems. We use only what a Linux machine with Python
already has, so that every figure can be reproduced anywhere:

- `stdlib`: the standard library's source, test suites excluded, split exactly as the demo model was
  (`tokenforge.models.train_demo.split_corpus`), so `stdlib:heldout` is the demo's held-out set;
- `site-packages`: the installed packages' Python source, the out-of-domain code check;
- `elf`: ELF executables and shared libraries from the system's binary and library folders;
- `legal`: /usr/share/common-licenses, Debian copyright files and the licence files of installed
  Python packages, deduplicated by content.

A spec is `NAME` (training split), `NAME:heldout`, or a path to a file or folder. Files are taken in
an order fixed by a hash of their path until a byte budget is met, so a sample is stable.
"""

from __future__ import annotations

import hashlib
import os
import site
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenforge.errors import InvalidOptionError
from tokenforge.models.train_demo import TrainConfig, is_heldout, split_corpus, stdlib_files

ELF_MAGIC = b"\x7fELF"
ELF_DIRS = ("/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/usr/libexec", "/usr/local/bin",
            "/usr/local/lib", "/bin", "/sbin", "/lib", "/lib64")
LICENSE_NAMES = ("license", "licence", "copying", "notice")
HELDOUT_EVERY = 10  # one file in ten is held out (stdlib keeps the demo's own rule)
KINDS = ("code", "binary", "text")


@dataclass(frozen=True)
class Document:
    name: str
    data: bytes


@dataclass
class Corpus:
    name: str
    kind: str  # one of KINDS: "code" gets identifier fertility, "binary" is read as raw bytes
    documents: list[Document]

    @property
    def n_bytes(self) -> int:
        return sum(len(doc.data) for doc in self.documents)


def as_text(data: bytes) -> str:
    """The string a text tokenizer sees: UTF-8 when the bytes are valid UTF-8, else Latin-1
    (one character per byte, lossless: how binaries are handed to text tokenizers)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _stdlib(heldout: bool) -> list[Path]:
    train, held, _ = split_corpus(TrainConfig().heldout_every)
    return held if heldout else train


def _site_packages() -> list[Path]:
    files: list[Path] = []
    for root in site.getsitepackages():
        files.extend(stdlib_files(Path(root)))
    return files


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == ELF_MAGIC
    except OSError:
        return False


def _elf_files() -> list[Path]:
    seen: set[str] = set()
    files = []
    for top in ELF_DIRS:
        for dirpath, _, names in os.walk(top):
            for name in names:
                path = Path(dirpath, name)
                if path.is_symlink() or not path.is_file():
                    continue
                real = os.path.realpath(path)
                if real not in seen and _is_elf(path):
                    seen.add(real)
                    files.append(path)
    return files


def _licence_files() -> list[Path]:
    files = [p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file()]
    files += Path("/usr/share/doc").glob("*/copyright")
    for root in site.getsitepackages():
        for path in Path(root).glob("*.dist-info/**/*"):
            if path.is_file() and path.name.lower().startswith(LICENSE_NAMES):
                files.append(path)
    return files


@dataclass(frozen=True)
class Source:
    kind: str
    files: Callable[[], list[Path]]
    describe: str


SOURCES: dict[str, Source] = {
    "stdlib": Source("code", lambda: _stdlib(False), "Python stdlib source, demo training split"),
    "site-packages": Source("code", _site_packages, "installed packages' Python source"),
    "elf": Source("binary", _elf_files, "ELF executables and shared libraries"),
    "legal": Source("text", _licence_files, "common licences, copyright and licence files"),
}


def _hash_order(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: hashlib.sha1(str(p).encode()).hexdigest())


def _read(paths: list[Path], max_bytes: int | None,
          max_doc_bytes: int | None) -> Iterator[Document]:
    total = 0
    seen: set[str] = set()
    for path in paths:
        if max_bytes is not None and total >= max_bytes:
            return
        try:
            data = path.read_bytes()[:max_doc_bytes]
        except OSError:
            continue
        digest = hashlib.sha1(data).hexdigest()
        if not data or digest in seen:
            continue
        seen.add(digest)
        total += len(data)
        yield Document(str(path), data)


def _guess_kind(paths: list[Path]) -> str:
    if paths and all(_is_elf(p) for p in paths[:20]):
        return "binary"
    return "code" if paths and sum(p.suffix == ".py" for p in paths) * 2 >= len(paths) else "text"


def _path_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def load_corpus(spec: str, max_bytes: int | None = None,
                max_doc_bytes: int | None = 1 << 20) -> Corpus:
    """Resolve a corpus spec (see the module docstring) into documents, at most `max_bytes` in all
    and `max_doc_bytes` per document (large binaries are truncated, not skipped)."""
    name, _, split = spec.partition(":")
    if name in SOURCES and split in ("", "train", "heldout"):
        source = SOURCES[name]
        heldout = split == "heldout"
        if name == "stdlib":
            files = _stdlib(heldout)
        else:
            files = [p for p in source.files() if is_heldout(str(p), HELDOUT_EVERY) == heldout]
        kind = source.kind
    elif Path(spec).expanduser().exists():
        files = _path_files(Path(spec).expanduser())
        kind = _guess_kind(files)
    else:
        names = ", ".join(f"{n}[:heldout]" for n in SOURCES)
        raise InvalidOptionError(f"unknown corpus '{spec}': pass an existing file or folder, "
                                 f"or one of {names}")
    documents = list(_read(_hash_order(files), max_bytes, max_doc_bytes))
    if not documents:
        raise InvalidOptionError(f"corpus '{spec}' is empty on this machine: pass a folder that "
                                 "holds files, or another corpus")
    return Corpus(name=spec, kind=kind, documents=documents)
