"""SpS: speculative sampling with a draft model's chain, plus the draft-model plumbing shared by
dyspec, rsd and pearl.

Papers: Leviathan, Kalman & Matias, "Fast Inference from Transformers via Speculative Decoding",
arXiv 2211.17192; Chen et al., "Accelerating Large Language Model Decoding with Speculative
Sampling", arXiv 2302.01318.

Algorithm: the draft model proposes gamma tokens autoregressively, x_i ~ q(. | prefix, x_<i)
(greedy: argmax), and the target scores [root] + chain in one forward. Verification (verify.py)
accepts x_i with probability min(1, p(x_i) / q(x_i)) and on the first rejection samples from
norm(max(0, p - q)); greedy accepts while x_i equals the target's argmax. The draft model keeps its
own KV cache, rolled back to the committed tokens at the next step.

Sampling: with the gumbel sampler the draft picks argmax(log q + G_i) with the target's own
Gumbel noise G_i for sequence index i (a coupling: when q is close to p both pick the same
token), and verification is deterministic; with the rejection sampler it draws from q with a
generator of its own and verification is min(1, p/q) rejection sampling. Greedy: argmax of q.

Options: gamma=3, adaptive=False, min_confidence=0.0 (gamma 3 is the fastest on the demo pair
on a CPU, where a draft step costs ~30% of a target forward; raise it where drafting is cheaper).
- adaptive: transformers' "heuristic" schedule for `num_assistant_tokens`: gamma += 2 after a
  step that accepted the whole chain, gamma = max(1, gamma - 1) otherwise (reset per generation).
- min_confidence: stop the chain early when the draft's top probability falls below it (as
  transformers' `assistant_confidence_threshold`); the decision is taken before the next token is
  drawn, so it stays lossless.
Differences from the papers: none in the acceptance rule; q is the draft's distribution after the
same temperature/top-k/top-p processing as p (SamplingParams.probs); with the rejection sampler
the draft's random draws use their own generator, seeded from the generation seed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import torch

from tokenforge.decoding.backends import Backend, get_backend
from tokenforge.decoding.drafters.base import Drafter
from tokenforge.decoding.registry import Method, option, register, require_positive
from tokenforge.decoding.sampling import Sampler
from tokenforge.decoding.tree import TokenTree
from tokenforge.decoding.verify import VerifyResult
from tokenforge.errors import InvalidOptionError
from tokenforge.models.load import LoadedModel

DRAFT_SEED_OFFSET = 0x5EED  # the draft's generator must not replay the verifier's random stream
DRAFT_CAPACITY = 512  # initial cache room beyond the prompt; the backend grows it when needed


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i in range(n) if a[i] != b[i])


class DraftLM:
    """A draft model on a backend of its own.

    `cached` are the tokens whose KV sits at positions 0..len-1. Chain steps append to it; a token
    tree's nodes are forwarded after it with tree attention (`forward_nodes`) and `keep_path`
    moves the accepted ones into place. `root_logits` crops the cache to what still agrees with
    the committed tokens and forwards the rest, so rejected drafts are rolled back there.
    """

    def __init__(self, draft: LoadedModel, vocab_size: int):
        self.backend = get_backend(draft, role="draft")
        self.vocab_size = vocab_size
        self.context = draft.context_length
        self.forward_sizes: Counter[int] = Counter()
        self.cached: list[int] = []
        self.slot: dict[int, int] = {}  # tree node -> offset after `cached` in the cache

    def reset(self, prompt_len: int) -> None:
        self.backend.begin(prompt_len + DRAFT_CAPACITY)
        self.cached, self.slot = [], {}
        self.forward_sizes = Counter()

    def room(self, n_tokens: int, depth: int) -> int:
        """How deep a draft after `n_tokens` committed tokens fits in the draft's context."""
        return depth if self.context is None else min(depth, self.context - n_tokens)

    def root_logits(self, tokens: list[int]) -> torch.Tensor:
        """Logits after the last committed token (the tree's root); drops any previous draft.
        The first call of a generation is the draft's prefill (not counted in forward_sizes)."""
        n = min(common_prefix(self.cached, tokens), len(tokens) - 1)
        self.backend.crop(n)
        prefill = not self.cached
        self.cached, self.slot = list(tokens), {}
        return self._forward(tokens[n:], last_only=True, count=not prefill)[-1]

    def append(self, token: int) -> torch.Tensor:
        """Chain step: forward one token after `cached`; returns the logits after it."""
        self.cached.append(token)
        return self._forward([token])[-1]

    def forward_nodes(self, tokens: list[int], parents: list[int], nodes: list[int]) -> torch.Tensor:
        """Forward tree `nodes` (their ancestors already forwarded) in one batch; each attends to
        the committed tokens, its ancestors and itself. Returns one row of logits per node."""
        prefix, first = len(self.cached), len(self.slot)
        mask = np.zeros((len(nodes), first + len(nodes)), dtype=bool)
        positions = np.empty(len(nodes), dtype=np.int64)
        for row, node in enumerate(nodes):
            self.slot[node] = first + row
            depth, ancestor = 0, node
            while ancestor >= 0:
                mask[row, self.slot[ancestor]] = True
                ancestor, depth = parents[ancestor], depth + 1
            positions[row] = prefix - 1 + depth
        return self._forward([tokens[n] for n in nodes], positions, mask)

    def keep_path(self, tokens: list[int], parents: list[int], accepted: list[int]) -> None:
        """After verification: keep the KV of the accepted tokens' leading run of forwarded tree
        nodes (found by walking the tree by token, so a cut or re-numbered tree still maps)."""
        if not self.slot:
            return
        path, node = [], -1
        for token in accepted:
            node = next((c for c in range(node + 1, len(tokens))
                         if parents[c] == node and tokens[c] == token), None)
            if node is None or node not in self.slot:
                break
            path.append(node)
        self.backend.keep(len(self.cached), [self.slot[n] for n in path])
        self.cached += [tokens[n] for n in path]
        self.slot = {}

    @torch.inference_mode()  # also in the PEARL draft thread (inference mode is per thread)
    def _forward(self, ids: list[int], positions: np.ndarray | None = None,
                 mask: np.ndarray | None = None, last_only: bool = False,
                 count: bool = True) -> torch.Tensor:
        if count:
            self.forward_sizes[len(ids)] += 1
        logits = self.backend.forward(ids, positions, mask, last_only=last_only)
        logits = logits[:, : self.vocab_size].float().cpu()
        if logits.shape[1] < self.vocab_size:  # a draft with fewer embedding rows than the target
            pad = logits.new_full((logits.shape[0], self.vocab_size - logits.shape[1]), -torch.inf)
            logits = torch.cat([logits, pad], dim=1)
        return logits


def check_pair(target: LoadedModel, draft: LoadedModel | None) -> None:
    if draft is None:
        raise InvalidOptionError("this method needs a draft model: pass draft= (CLI: --draft-model)")
    if len(target.tokenizer) != len(draft.tokenizer):
        raise InvalidOptionError(
            f"the draft model '{draft.name}' has a different tokenizer ({len(draft.tokenizer)} "
            f"tokens) from the target '{target.name}' ({len(target.tokenizer)} tokens); draft-model "
            "methods need the same vocabulary")


class DraftModelDrafter(Drafter):
    """What every draft-model drafter shares: the draft LM and how candidates are ranked under
    the generation's sampler.

    For the children of a node whose children sit at sequence index i:
    - `q(logits)`: the draft distribution (the target's processing; greedy: the plain softmax);
    - `ranking(logits, q, i)`: scores whose descending order is the order to draft children in:
      greedy, the draft logits; gumbel, the processed draft logits plus the target's noise G_i;
      rejection, log q plus Gumbel noise from the draft's own generator (Gumbel-top-k: a sample
      without replacement, in draw order).
    """

    def __init__(self, target: LoadedModel, draft: LoadedModel):
        check_pair(target, draft)
        self.lm = DraftLM(draft, target.model.get_input_embeddings().num_embeddings)
        self.set_sampling(Sampler.greedy(self.lm.vocab_size))

    def set_sampling(self, sampler: Sampler) -> None:
        super().set_sampling(sampler)
        self.gen = None
        if sampler.kind == "rejection":
            seed = sampler.params.seed
            offset = None if seed is None else seed + DRAFT_SEED_OFFSET
            self.gen = replace(sampler.params, seed=offset).generator()

    def begin(self, prompt_ids: list[int], target: Backend) -> None:
        self.lm.reset(len(prompt_ids))

    def draft_forward_sizes(self) -> dict[int, int]:
        return dict(self.lm.forward_sizes)

    @property
    def stochastic(self) -> bool:
        """Drafts are random draws from q, verified by rejection sampling (draft_probs set)."""
        return self.gen is not None

    def q(self, logits: torch.Tensor) -> torch.Tensor:
        if self.sampler.kind == "greedy":
            return torch.softmax(logits, dim=-1)
        return self.sampler.params.probs(logits)

    def ranking(self, logits: torch.Tensor, q: torch.Tensor, index: int) -> torch.Tensor:
        if self.sampler.kind == "greedy":
            return logits
        if self.sampler.kind == "gumbel":
            return self.sampler.params.processed(logits) + self.sampler.noise.at(index).cpu()
        return q.double().log() + gumbel(q.shape, self.gen)

    def candidates(self, logits: torch.Tensor, q: torch.Tensor, index: int, k: int) -> list[int]:
        """The first k children to draft (fewer when q has fewer possible tokens)."""
        k = min(k, int((q > 0).sum()))
        return torch.topk(self.ranking(logits, q, index), k).indices.tolist()

    def probs_rows(self, rows: list[torch.Tensor | None]) -> torch.Tensor | None:
        """TokenTree.draft_probs from per-row q (None = a leaf, never expanded); None unless the
        drafts are stochastic."""
        if not self.stochastic:
            return None
        zeros = torch.zeros(self.lm.vocab_size)
        return torch.stack([zeros if q is None else q for q in rows])


def gumbel(shape, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=gen, dtype=torch.float64).clamp_(min=1e-300)
    return -torch.log(-torch.log(u))


class TreeDrafter(DraftModelDrafter):
    """Base of the draft-model token trees (dyspec, rsd): node lists, batched draft forwards over
    new nodes, and siblings drawn without replacement (verified with q dropping rejected tokens)."""

    def begin(self, prompt_ids: list[int], target: Backend) -> None:
        super().begin(prompt_ids, target)
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depths: list[int] = []
        self.rows: list[torch.Tensor | None] = []
        self.first_index = 0

    def start_tree(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reset the tree to the bare root; returns the root's (logits, q)."""
        self.tokens, self.parents, self.depths = [], [], []
        self.first_index = len(tokens)
        logits = self.lm.root_logits(tokens)
        self.rows = [self.q(logits)]
        return logits, self.rows[0]

    def index_after(self, node: int) -> int:
        """Sequence index of the children of `node` (-1 = the root)."""
        return self.first_index + (0 if node < 0 else self.depths[node])

    def add(self, token: int, parent: int) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.depths.append(1 if parent < 0 else self.depths[parent] + 1)
        self.rows.append(None)
        return len(self.tokens) - 1

    def expand(self, nodes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One draft forward over `nodes`; returns (and records) (logits, q) after each of them."""
        logits = self.lm.forward_nodes(self.tokens, self.parents, nodes)
        out = []
        for node, row in zip(nodes, logits):
            self.rows[node + 1] = self.q(row)
            out.append((row, self.rows[node + 1]))
        return out

    def tree(self) -> TokenTree:
        return TokenTree(self.tokens, self.parents, self.probs_rows(self.rows),
                         without_replacement=True)

    def feedback(self, tree: TokenTree, logits: torch.Tensor, result: VerifyResult) -> None:
        self.lm.keep_path(self.tokens, self.parents, result.tokens[: len(result.path)])


@dataclass(frozen=True)
class SpSOptions:
    gamma: int = option(3, "draft tokens per step (the start value when adaptive)")
    adaptive: bool = option(False, "transformers' heuristic: +2 after a fully accepted chain, "
                                   "else -1")
    min_confidence: float = option(0.0, "stop drafting when the draft's top probability is "
                                        "below this")

    def __post_init__(self):
        require_positive(gamma=self.gamma)
        if not 0.0 <= self.min_confidence < 1.0:
            raise InvalidOptionError(f"sps: min_confidence must be in [0, 1), got "
                                     f"{self.min_confidence}")


class SpS(DraftModelDrafter):
    name = "sps"

    def __init__(self, target: LoadedModel, draft: LoadedModel, options: SpSOptions = SpSOptions()):
        super().__init__(target, draft)
        self.initial_gamma, self.adaptive = options.gamma, options.adaptive
        self.min_confidence = options.min_confidence
        self.gamma = options.gamma
        self.drafted = 0  # the length of the last chain drafted

    def begin(self, prompt_ids: list[int], target: Backend) -> None:
        super().begin(prompt_ids, target)
        self.gamma = self.initial_gamma

    def propose(self, tokens: list[int], max_depth: int) -> TokenTree:
        depth = self.lm.room(len(tokens), min(self.gamma, max_depth))
        if depth <= 0:
            return TokenTree()
        logits = self.lm.root_logits(tokens)
        drafted: list[int] = []
        rows: list[torch.Tensor | None] = []
        while True:
            q = self.q(logits)
            if drafted and float(q.max()) < self.min_confidence:
                break
            drafted += self.candidates(logits, q, len(tokens) + len(drafted), 1)
            rows.append(q)
            if len(drafted) == depth:
                break
            logits = self.lm.append(drafted[-1])
        self.drafted = len(drafted)
        return TokenTree.chain(drafted, self.probs_rows(rows + [None]))

    def feedback(self, tree: TokenTree, logits: torch.Tensor, result: VerifyResult) -> None:
        if self.adaptive:  # against the chain drafted: a guide may have cut `tree` short
            full = len(result.path) == self.drafted
            self.gamma = self.gamma + 2 if full else max(1, self.gamma - 1)


register(Method(
    "sps", "Speculative sampling (Leviathan et al., arXiv 2211.17192; Chen et al., arXiv 2302.01318)",
    "a draft model proposes a chain of gamma tokens; min(1, p/q) acceptance, residual resampling",
    build=lambda target, draft, options: SpS(target, draft, options), options_type=SpSOptions,
    needs_draft=True,
))
