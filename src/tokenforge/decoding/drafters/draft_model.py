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

Options: gamma=3, adaptive=False, min_confidence=0.0 (gamma 3 is the fastest on the demo pair
on a CPU, where a draft step costs ~30% of a target forward; raise it where drafting is cheaper).
- adaptive: transformers' "heuristic" schedule for `num_assistant_tokens`: gamma += 2 after a
  step that accepted the whole chain, gamma = max(1, gamma - 1) otherwise (reset per generation).
- min_confidence: stop the chain early when the draft's top probability falls below it (as
  transformers' `assistant_confidence_threshold`); the decision is taken before the next token is
  drawn, so it stays lossless.
Differences from the papers: none in the acceptance rule; q is the draft's distribution after the
same temperature/top-k/top-p processing as p (SamplingParams.probs), and the draft's random draws
use their own generator, seeded from the generation seed.
"""

from __future__ import annotations

import torch

from tokenforge.decoding import kv
from tokenforge.decoding.drafters.base import Drafter
from tokenforge.decoding.registry import Method, Option, register, require_positive
from tokenforge.decoding.sampling import SamplingParams
from tokenforge.decoding.tree import TokenTree
from tokenforge.decoding.verify import VerifyResult
from tokenforge.errors import InvalidOptionError
from tokenforge.models.load import LoadedModel

DRAFT_SEED_OFFSET = 0x5EED  # the draft's generator must not replay the verifier's random stream


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i in range(n) if a[i] != b[i])


class DraftLM:
    """A draft model with its own KV cache.

    `cached` are the tokens whose KV sits at positions 0..len-1. Chain steps append to it; a token
    tree's nodes are forwarded after it with tree attention (`forward_nodes`) and `keep_path`
    moves the accepted ones into place. `root_logits` crops the cache to what still agrees with
    the committed tokens and forwards the rest, so rejected drafts are rolled back there.
    """

    def __init__(self, draft: LoadedModel, vocab_size: int):
        self.model, self.device = draft.model, draft.device
        self.vocab_size = vocab_size
        self.context = draft.context_length
        self.reset()

    def reset(self) -> None:
        self.cache = None
        self.cached: list[int] = []
        self.slot: dict[int, int] = {}  # tree node -> offset after `cached` in the cache

    def room(self, n_tokens: int, depth: int) -> int:
        """How deep a draft after `n_tokens` committed tokens fits in the draft's context."""
        return depth if self.context is None else min(depth, self.context - n_tokens)

    def root_logits(self, tokens: list[int]) -> torch.Tensor:
        """Logits after the last committed token (the tree's root); drops any previous draft."""
        if self.cache is None:
            self.cache = kv.new_cache(self.model)
        n = min(common_prefix(self.cached, tokens), len(tokens) - 1)
        kv.crop(self.cache, n)
        self.cached, self.slot = list(tokens), {}
        return self._forward(tokens[n:])[-1]

    def append(self, token: int) -> torch.Tensor:
        """Chain step: forward one token after `cached`; returns the logits after it."""
        self.cached.append(token)
        return self._forward([token])[-1]

    def forward_nodes(self, tokens: list[int], parents: list[int], nodes: list[int]) -> torch.Tensor:
        """Forward tree `nodes` (their ancestors already forwarded) in one batch; each attends to
        the committed tokens, its ancestors and itself. Returns one row of logits per node."""
        prefix, first = len(self.cached), len(self.slot)
        mask = torch.zeros(len(nodes), prefix + first + len(nodes), dtype=torch.bool)
        mask[:, :prefix] = True
        positions = []
        for row, node in enumerate(nodes):
            self.slot[node] = first + row
            depth, ancestor = 0, node
            while ancestor >= 0:
                mask[row, prefix + self.slot[ancestor]] = True
                ancestor, depth = parents[ancestor], depth + 1
            positions.append(prefix - 1 + depth)
        return self._forward([tokens[n] for n in nodes], torch.tensor([positions], device=self.device),
                             mask[None, None].to(self.device))

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
        kv.keep(self.cache, len(self.cached), [self.slot[n] for n in path])
        self.cached += [tokens[n] for n in path]
        self.slot = {}

    @torch.inference_mode()  # also in the PEARL draft thread (inference mode is per thread)
    def _forward(self, ids: list[int], position_ids=None, attention_mask=None) -> torch.Tensor:
        logits = kv.cached_forward(self.model, torch.tensor([ids], device=self.device), self.cache,
                                   position_ids=position_ids, attention_mask=attention_mask)
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
    """What every draft-model drafter shares: the draft LM, the sampling parameters (set by the
    engine through `set_sampling`) and a CPU generator of its own for the draft's draws."""

    def __init__(self, target: LoadedModel, draft: LoadedModel):
        check_pair(target, draft)
        self.lm = DraftLM(draft, target.model.get_input_embeddings().num_embeddings)
        self.set_sampling(SamplingParams())

    def set_sampling(self, sampling: SamplingParams) -> None:
        self.sampling = sampling
        self.gen = None
        if not sampling.greedy:
            self.gen = torch.Generator()
            if sampling.seed is None:
                self.gen.seed()
            else:
                self.gen.manual_seed(sampling.seed + DRAFT_SEED_OFFSET)

    def begin(self, prompt_ids: list[int]) -> None:
        self.lm.reset()

    def dist(self, logits: torch.Tensor) -> torch.Tensor:
        """q: what sampled drafts are drawn from (the same processing as the target's p); in
        greedy mode the plain softmax, used only to rank candidates."""
        if self.sampling.greedy:
            return torch.softmax(logits, dim=-1)
        return self.sampling.probs(logits)

    def draw(self, q: torch.Tensor) -> int:
        """argmax when greedy, else a draw from q (which need not be normalised)."""
        if self.gen is None:
            return int(q.argmax())
        return int(torch.multinomial(q, 1, generator=self.gen))

    def probs_rows(self, rows: list[torch.Tensor | None]) -> torch.Tensor | None:
        """TokenTree.draft_probs from per-row q (None = a leaf, never expanded); None if greedy."""
        if self.gen is None:
            return None
        zeros = torch.zeros(self.lm.vocab_size)
        return torch.stack([zeros if q is None else q for q in rows])


class TreeDrafter(DraftModelDrafter):
    """Base of the draft-model token trees (dyspec, rsd): node lists, batched draft forwards over
    new nodes, and siblings drawn without replacement (verified with q dropping rejected tokens)."""

    def begin(self, prompt_ids: list[int]) -> None:
        super().begin(prompt_ids)
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.rows: list[torch.Tensor | None] = []

    def start_tree(self, tokens: list[int]) -> torch.Tensor:
        """Reset the tree to the bare root; returns q at the root."""
        self.tokens, self.parents = [], []
        self.rows = [self.dist(self.lm.root_logits(tokens))]
        return self.rows[0]

    def add(self, token: int, parent: int) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.rows.append(None)
        return len(self.tokens) - 1

    def expand(self, nodes: list[int]) -> list[torch.Tensor]:
        """One draft forward over `nodes`; returns (and records) q after each of them."""
        logits = self.lm.forward_nodes(self.tokens, self.parents, nodes)
        for node, row in zip(nodes, logits):
            self.rows[node + 1] = self.dist(row)
        return [self.rows[node + 1] for node in nodes]

    def tree(self) -> TokenTree:
        return TokenTree(self.tokens, self.parents, self.probs_rows(self.rows),
                         without_replacement=True)

    def feedback(self, tree: TokenTree, logits: torch.Tensor, result: VerifyResult) -> None:
        self.lm.keep_path(self.tokens, self.parents, result.tokens[: len(result.path)])


class SpS(DraftModelDrafter):
    name = "sps"

    def __init__(self, target: LoadedModel, draft: LoadedModel, gamma: int = 3,
                 adaptive: bool = False, min_confidence: float = 0.0):
        require_positive(gamma=gamma)
        if not 0.0 <= min_confidence < 1.0:
            raise InvalidOptionError(f"sps: min_confidence must be in [0, 1), got {min_confidence}")
        super().__init__(target, draft)
        self.initial_gamma, self.adaptive, self.min_confidence = gamma, adaptive, min_confidence
        self.gamma = gamma

    def begin(self, prompt_ids: list[int]) -> None:
        super().begin(prompt_ids)
        self.gamma = self.initial_gamma

    def propose(self, tokens: list[int], max_depth: int) -> TokenTree:
        depth = self.lm.room(len(tokens), min(self.gamma, max_depth))
        if depth <= 0:
            return TokenTree()
        logits = self.lm.root_logits(tokens)
        drafted: list[int] = []
        rows: list[torch.Tensor | None] = []
        while True:
            q = self.dist(logits)
            if drafted and float(q.max()) < self.min_confidence:
                break
            drafted.append(self.draw(q))
            rows.append(q)
            if len(drafted) == depth:
                break
            logits = self.lm.append(drafted[-1])
        return TokenTree.chain(drafted, self.probs_rows(rows + [None]))

    def feedback(self, tree: TokenTree, logits: torch.Tensor, result: VerifyResult) -> None:
        if self.adaptive:
            full = len(result.path) == len(tree)
            self.gamma = self.gamma + 2 if full else max(1, self.gamma - 1)


register(Method(
    "sps", "Speculative sampling (Leviathan et al., arXiv 2211.17192; Chen et al., arXiv 2302.01318)",
    "a draft model proposes a chain of gamma tokens; min(1, p/q) acceptance, residual resampling",
    factory=lambda target, draft, **opts: SpS(target, draft, **opts),
    options={
        "gamma": Option(3, "draft tokens per step (the start value when adaptive)"),
        "adaptive": Option(False, "transformers' heuristic: +2 after a fully accepted chain, else -1"),
        "min_confidence": Option(0.0, "stop drafting when the draft's top probability is below this"),
    },
    needs_draft=True,
))
