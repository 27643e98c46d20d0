"""Token Recycling.

Paper: Luo et al., "Turning Trash into Treasure: Accelerating Inference of Large Language Models
with Token Recycling", arXiv 2408.08696.

Algorithm: an adjacency matrix M (vocab x k, k = 8) holds, for every token, the target's top-k
next tokens the last time that token was a tree node. A draft fills a static BFS tree template:
node (parent, rank) gets M[token(parent), rank], starting from the root (the last committed
token). After each verify step every tree node's row is overwritten with the target's top-k at
that node (accepted or not: the "trash" is recycled). M persists across generations in the
process and can be saved (`save_matrix`) and loaded (option `matrix=PATH`).

Templates are data (`templates/*.json`): nodes as (parent, rank) pairs in decreasing prior
score, so every prefix of a template is itself a valid tree. `paper-80` has the paper's
80-node depth profile 8/21/25/15/8/3; `narrow-24` is a smaller, deeper one for CPUs.

Tree size: `tree_size=auto` (default) measures, on the current device, the target's forward cost
for each prefix size of the template (once per process, when the first generation begins), and
during the first `explore_steps` steps of the process runs the full template while recording how
many tokens each prefix would have accepted (exact in
greedy mode: the accepted path of a prefix tree is the full tree's path cut where it leaves the
prefix). It then keeps the size with the most expected tokens per second. `tree_size=N` fixes it.

Options: k=8, template=paper-80, tree_size=auto, explore_steps=24, matrix="" (a .npy to load).
Differences from the paper: the paper's exact template is not reproduced node for node (ours is
derived from a rank prior with the same depth profile); untouched rows are empty (-1) and prune
their subtree instead of drafting token 0; the tree-size search is ours.
"""

from __future__ import annotations

import heapq
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tokenforge.decoding import kv
from tokenforge.decoding.drafters.base import Drafter
from tokenforge.decoding.registry import Method, Option, register, require_positive
from tokenforge.decoding.tree import TokenTree
from tokenforge.decoding.verify import VerifyResult
from tokenforge.errors import InvalidOptionError

TEMPLATE_DIR = Path(__file__).parent / "templates"
RANK_PRIOR = (0.55, 0.15, 0.07, 0.045, 0.03, 0.02, 0.015, 0.012)


def build_template(widths: list[int], k: int = 8, prior=RANK_PRIOR) -> list[tuple[int, int]]:
    """Nodes (parent, rank) chosen best-first by the product of rank priors along the path,
    with at most widths[d - 1] nodes at depth d. Used to write the JSON templates."""
    nodes: list[tuple[int, int]] = []
    taken = [0] * len(widths)
    heap = [(-prior[r], -1, r, 1) for r in range(k)]
    while heap:
        score, parent, rank, depth = heapq.heappop(heap)
        if taken[depth - 1] >= widths[depth - 1]:
            continue
        taken[depth - 1] += 1
        nodes.append((parent, rank))
        if depth < len(widths):
            me = len(nodes) - 1
            for r in range(k):
                heapq.heappush(heap, (score * prior[r], me, r, depth + 1))
    return nodes


def load_template(name: str) -> list[tuple[int, int]]:
    path = TEMPLATE_DIR / f"{name}.json"
    if not path.exists():
        names = ", ".join(sorted(p.stem for p in TEMPLATE_DIR.glob("*.json")))
        raise InvalidOptionError(f"unknown token-recycling template '{name}'; available: {names}")
    return [tuple(node) for node in json.loads(path.read_text())["nodes"]]


@dataclass
class SharedState:
    """What persists across generations for one (model, vocab, k): the matrix and the size choice."""

    matrix: np.ndarray
    tree_size: int | None = None
    explored: int = 0
    accepted_by_size: dict[int, int] = field(default_factory=dict)
    cost_by_size: dict[int, float] = field(default_factory=dict)


_SHARED: dict[tuple, SharedState] = {}


class TokenRecycling(Drafter):
    name = "token-recycling"

    def __init__(self, target, k: int = 8, template: str = "paper-80", tree_size: str = "auto",
                 explore_steps: int = 24, matrix: str = ""):
        require_positive(k=k, explore_steps=explore_steps)
        self.target = target
        self.template = load_template(template)
        if any(rank >= k for _, rank in self.template):
            raise InvalidOptionError(f"template '{template}' uses ranks >= k={k}; raise k")
        self.depths = TokenTree([0] * len(self.template), [p for p, _ in self.template]).depths
        self.sizes = [n for n in (0, 4, 8, 12, 16, 24, 32, 48, 64, 80) if n < len(self.template)]
        self.sizes.append(len(self.template))
        self.explore_steps = explore_steps
        vocab = target.model.get_input_embeddings().num_embeddings
        key = (target.name, id(target.model), vocab, k, template)
        if key not in _SHARED:
            _SHARED[key] = SharedState(np.full((vocab, k), -1, dtype=np.int32))
        self.state = _SHARED[key]
        if matrix:
            self.load_matrix(matrix)
        if tree_size != "auto":
            try:
                size = int(tree_size)
            except ValueError:
                raise InvalidOptionError("tree_size must be 'auto' or a node count") from None
            if not 0 <= size <= len(self.template):
                raise InvalidOptionError(f"tree_size must lie in [0, {len(self.template)}]")
            self.fixed_size: int | None = size
        else:
            self.fixed_size = None
        self._root = -1
        self._template_ids: list[int] = []

    def save_matrix(self, path: str | Path) -> None:
        np.save(Path(path), self.state.matrix, allow_pickle=False)

    def load_matrix(self, path: str | Path) -> None:
        try:
            loaded = np.load(Path(path), allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InvalidOptionError(f"cannot read token-recycling matrix '{path}': {err}") from None
        if loaded.shape != self.state.matrix.shape:
            raise InvalidOptionError(f"matrix '{path}' has shape {loaded.shape}, expected "
                                     f"{self.state.matrix.shape} (vocab x k) for this model")
        self.state.matrix[:] = loaded

    def begin(self, prompt_ids: list[int]) -> None:
        """Measure the forward costs once per process, before the first draft, so that the cost
        of measuring lands in the first generation's start and not in the middle of a later one."""
        state = self.state
        if self.fixed_size is None and state.tree_size is None and not state.cost_by_size:
            state.cost_by_size = measure_costs(self.target.model, self.template, self.sizes)

    @property
    def tree_size(self) -> int:
        if self.fixed_size is not None:
            return self.fixed_size
        state = self.state
        if state.tree_size is None and state.explored >= self.explore_steps:
            state.tree_size = self._choose_size()
        return len(self.template) if state.tree_size is None else state.tree_size

    def propose(self, tokens: list[int], max_depth: int) -> TokenTree:
        matrix = self.state.matrix
        self._root = tokens[-1]
        node_tokens: list[int] = []
        parents: list[int] = []
        kept: list[int] = []  # template index of each tree node
        tree_index = {-1: -1}
        for i in range(self.tree_size):
            parent, rank = self.template[i]
            if parent not in tree_index or self.depths[i] > max_depth:
                continue
            source = self._root if parent < 0 else node_tokens[tree_index[parent]]
            token = int(matrix[source, rank])
            if token < 0:  # never seen as a node: nothing to recycle yet
                continue
            tree_index[i] = len(node_tokens)
            node_tokens.append(token)
            parents.append(tree_index[parent])
            kept.append(i)
        self._template_ids = kept
        return TokenTree(node_tokens, parents)

    def feedback(self, tree: TokenTree, logits: torch.Tensor, result: VerifyResult) -> None:
        top = torch.topk(logits, self.state.matrix.shape[1], dim=-1).indices
        self.state.matrix[[self._root] + tree.tokens] = top.cpu().numpy()
        if self.fixed_size is None and self.state.tree_size is None and len(tree):
            self._record(result)

    # tree-size search --------------------------------------------------------------------
    def _record(self, result: VerifyResult) -> None:
        """Count the tokens each template prefix would have accepted on this step."""
        state = self.state
        path = [self._template_ids[i] for i in result.path]  # template indices, increasing
        for n in self.sizes:
            state.accepted_by_size[n] = state.accepted_by_size.get(n, 0) + sum(t < n for t in path)
        state.explored += 1

    def _choose_size(self) -> int:
        state = self.state
        score = {n: (1 + state.accepted_by_size.get(n, 0) / state.explored) / state.cost_by_size[n]
                 for n in self.sizes}
        return max(score, key=score.get)


def measure_costs(model, template: list[tuple[int, int]], sizes: list[int], prefix: int = 256,
                  repeats: int = 5) -> dict[int, float]:
    """Median seconds of one cached target forward over [root] + the first n template nodes."""
    from tokenforge.decoding.engine import tree_forward

    device = next(model.parameters()).device
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    prefix = min(prefix, context // 2)
    vocab = model.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(0)
    costs = {}
    with torch.inference_mode():
        cache = kv.new_cache(model)
        kv.cached_forward(model, torch.randint(0, vocab, (1, prefix), generator=gen).to(device), cache)
        for n in sizes:
            tree = TokenTree([1] * n, [p for p, _ in template[:n]])
            times = []
            for _ in range(repeats + 1):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                tree_forward(model, 1, tree, prefix, cache, device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
                kv.crop(cache, prefix)
            costs[n] = float(np.median(times[1:]))
    return costs


register(Method(
    "token-recycling", "Turning Trash into Treasure (Luo et al.), arXiv 2408.08696",
    "training-free: recycles the target's top-k candidates into a static tree template",
    factory=lambda target, draft, **opts: TokenRecycling(target, **opts),
    options={
        "k": Option(8, "candidates stored per token (matrix columns)"),
        "template": Option("paper-80", "tree template under decoding/drafters/templates/"),
        "tree_size": Option("auto", "'auto' (measure cost and acceptance on this device) or N nodes"),
        "explore_steps": Option(24, "full-tree steps used by tree_size=auto before it chooses"),
        "matrix": Option("", "a .npy adjacency matrix to load (see save_matrix)"),
    },
))
