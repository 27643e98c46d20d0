"""Give a causal LM a new tokenizer: new embedding and LM-head rows, every other weight kept.

Methods, each writing a new row as a combination of old rows (see `plan`):
- `omp`: Orthogonal Matching Pursuit in a donor's embedding space (mergekit tokensurgeon;
  Goddard & Fernandes Neto, 2025), see `omp`;
- `tokenadapt`: TokenAdapt's local + global hybrid (Sharthak et al., 2025), see `tokenadapt`;
- `subword-mean`: the mean of the old pieces of the new token;
- `mean`: the mean of all old rows;
- `zero`: zeros.
Tokens present in both vocabularies copy their old rows under every method. Input embeddings and
an untied LM head are rebuilt with the same combination (the papers do the same; tokensurgeon can
also fit the head separately, which we do not).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tokenforge.errors import InvalidOptionError
from tokenforge.models.load import LoadedModel
from tokenforge.tokenization.lm import Donor
from tokenforge.tokenization.plan import Combination, Plan, make_plan, subword_mean

METHODS = ("omp", "tokenadapt", "subword-mean", "mean", "zero")


@dataclass
class TransplantOptions:
    method: str = "omp"
    donor: str | None = None  # omp: a model directory that uses the new tokenizer
    donor_corpus: str = "stdlib"  # omp: what the trained donor reads
    donor_steps: int = 1000  # 200 gave a visibly worse OMP (benchmarks/TOKENIZERS.md)
    donor_max_mb: float = 16.0
    k: int | None = None  # omp atoms (default 32) or tokenadapt neighbours (default 8)


@dataclass
class TransplantReport:
    method: str
    old_vocab: int
    new_vocab: int
    shared: int
    approximated: int
    fallback: int  # omp: tokens the donor did not learn, given the subword mean instead
    seconds: float

    def summary(self) -> str:
        extra = f", {self.fallback} via subword mean (not learned by the donor)" \
            if self.fallback else ""
        return (f"{self.method}: {self.new_vocab} tokens, {self.shared} copied, "
                f"{self.approximated} approximated{extra} in {self.seconds:.1f}s")


def combination(method: str, plan: Plan, donor: Donor | None, k: int | None,
                min_exposures: float = 0.0) -> tuple[Combination | None, int]:
    """The unshared rows' combination (None for `mean`/`zero`) and the omp fallback count."""
    if method == "omp":
        from tokenforge.tokenization.omp import omp_combination

        if donor is None:
            raise InvalidOptionError("omp needs a donor: pass --donor DIR or let it train one")
        return omp_combination(plan, donor, k or 32, min_exposures)
    if method == "tokenadapt":
        from tokenforge.tokenization.tokenadapt import TokenAdaptOptions, tokenadapt_combination

        return tokenadapt_combination(plan, TokenAdaptOptions(k=k or 8)), 0
    if method == "subword-mean":
        return subword_mean(plan, plan.unshared.tolist()), 0
    return None, 0


def _new_rows(old: torch.Tensor, plan: Plan, method: str, comb: Combination | None) -> torch.Tensor:
    old = old.detach().float()
    rows = torch.zeros(plan.new_vocab, old.shape[1])
    if method == "mean":
        rows[:] = old.mean(0)
    if comb is not None:
        rows[comb.new_ids] = comb.apply(old)
    rows[plan.shared_new] = old[plan.shared_old]
    return rows


def transplant(loaded: LoadedModel, new_tokenizer, method: str, donor: Donor | None = None,
               k: int | None = None, plan: Plan | None = None, min_exposures: float = 0.0):
    """Return (a new model with the new vocabulary, report). `loaded` is left unchanged.
    `min_exposures` (omp): donor rows seen this many times or fewer count as not learned."""
    import copy

    if method not in METHODS:
        raise InvalidOptionError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
    start = time.time()
    plan = plan or make_plan(loaded.tokenizer, new_tokenizer)
    comb, fallback = combination(method, plan, donor, k, min_exposures)
    model = copy.deepcopy(loaded.model)
    old_in = model.get_input_embeddings().weight
    old_out = model.get_output_embeddings().weight
    tied = old_out is old_in or old_out.data_ptr() == old_in.data_ptr()
    new_in = _new_rows(old_in, plan, method, comb)
    new_out = None if tied else _new_rows(old_out, plan, method, comb)
    model.resize_token_embeddings(plan.new_vocab, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(new_in)
        if new_out is not None:
            model.get_output_embeddings().weight.copy_(new_out)
    for role in ("eos", "bos", "pad"):
        value = getattr(new_tokenizer, f"{role}_token_id")
        setattr(model.config, f"{role}_token_id", value)
        if getattr(model, "generation_config", None) is not None:
            setattr(model.generation_config, f"{role}_token_id", value)
    report = TransplantReport(method, len(plan.old_bytes), plan.new_vocab, len(plan.shared_new),
                              len(plan.unshared), fallback, round(time.time() - start, 1))
    return model, report


def load_new_tokenizer(spec: str):
    """(transformers tokenizer, is it one of our byte tokenizers) for a tokenizer spec."""
    from transformers import PreTrainedTokenizerFast

    from tokenforge.tokenization.handles import REFERENCES, SIDECAR, tokenizer_file
    from tokenforge.tokenization.vocab import reference_tokenizer

    if spec in REFERENCES:
        return reference_tokenizer(spec), False
    path = tokenizer_file(spec)
    sidecar = path.parent / SIDECAR
    record = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path), clean_up_tokenization_spaces=False)
    eos = record.get("options", {}).get("special_tokens", [None])[0] or _guess_eos(tok)
    if eos is None:
        raise InvalidOptionError(f"tokenizer '{spec}' has no end-of-text token that tokenforge "
                                 "recognises: retrain it with --special-token '<|endoftext|>'")
    tok.eos_token = tok.bos_token = tok.pad_token = eos
    return tok, record.get("kind") == "byte"


def _guess_eos(tok) -> str | None:
    vocab = tok.get_vocab()
    return next((t for t in ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>") if t in vocab),
                None)


def trained_donor(new_tokenizer, opts: TransplantOptions) -> Donor:
    from tokenforge.tokenization.corpora import load_corpus
    from tokenforge.tokenization.lm import encode_stream, train_donor

    docs = [d.data for d in load_corpus(opts.donor_corpus,
                                        max_bytes=int(opts.donor_max_mb * (1 << 20))).documents]
    cut = max(1, len(docs) // 20)
    train = encode_stream(new_tokenizer, docs[cut:] or docs)
    heldout = encode_stream(new_tokenizer, docs[:cut])
    return train_donor(train, heldout, len(new_tokenizer), opts.donor_steps)


def loaded_donor(spec: str, new_tokenizer) -> Donor:
    from tokenforge.models.load import load_model

    donor = load_model(spec, device="cpu", dtype="float32")
    emb = donor.model.get_input_embeddings().weight.detach().float()
    if emb.shape[0] < len(new_tokenizer):
        raise InvalidOptionError(f"donor '{spec}' has {emb.shape[0]} embedding rows but the new "
                                 f"tokenizer {len(new_tokenizer)} tokens: pass a donor trained "
                                 "with the new tokenizer")
    emb = emb[: len(new_tokenizer)]
    return Donor(emb, torch.full((len(emb),), float("inf")), {"model": spec})


def run_transplant(model_spec: str, tokenizer_spec: str, opts: TransplantOptions,
                   out: Path) -> TransplantReport:
    """The `tokenizer transplant` command: load, transplant, save safetensors + tokenizer."""
    from tokenforge.models.load import load_model

    loaded = load_model(model_spec, device="cpu", dtype="float32")
    new_tok, latin1 = load_new_tokenizer(tokenizer_spec)
    plan = make_plan(loaded.tokenizer, new_tok, new_latin1=latin1)
    donor = None
    if opts.method == "omp":
        donor = loaded_donor(opts.donor, new_tok) if opts.donor else trained_donor(new_tok, opts)
    model, report = transplant(loaded, new_tok, opts.method, donor, opts.k, plan)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    new_tok.save_pretrained(out)
    (out / "transplant.json").write_text(json.dumps(
        {"base": model_spec, "tokenizer": tokenizer_spec, "options": asdict(opts),
         "report": asdict(report)}, indent=2) + "\n")
    return report
