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

Tree size: `tree_size=auto` (default) measures, on the current device and backend, the target's
forward cost for each prefix size of the template (when the first generation begins), and during
the drafter's first `explore_steps` steps runs the full template while recording how many tokens
each prefix would have accepted (exact with a deterministic sampler: the accepted path of a
prefix tree is the full tree's path cut where it leaves the prefix). It then keeps the size with
the most expected tokens per second. The cost curve, the exploration so far and the chosen size
are stored per (model, device, dtype, backend) in the user cache (decoding/costs.py), so a new
process starts where the last one stopped (short one-off generations finish the exploration
over several runs); `calibrate=True` measures and explores again. `tree_size=N` fixes the size.
Guided generations do not count toward the exploration (a guide's cuts would bias it).

State (the matrix, the cost curve, the exploration counts) lives in the drafter object: the
benchmark and the server keep one drafter per method, so it carries over between generations.

Options: k=8, template=paper-80, tree_size=auto, explore_steps=24, matrix="" (a .npy to load),
calibrate=False.
Differences from the paper: the paper's exact template is not reproduced node for node (ours is
derived from a rank prior with the same depth profile); untouched rows are empty (-1) and prune
their subtree instead of drafting token 0; the tree-size search is ours.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenforge.decoding.backends import Backend
from tokenforge.decoding.costs import CalibrationStore, CostCurve, measure_forward_costs
from tokenforge.decoding.drafters.base import Drafter
from tokenforge.decoding.registry import Method, option, register, require_positive
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


@dataclass(frozen=True)
class TokenRecyclingOptions:
    k: int = option(8, "candidates stored per token (matrix columns)")
    template: str = option("paper-80", "tree template under decoding/drafters/templates/")
    tree_size: str = option("auto", "'auto' (measure cost and acceptance on this device) or N "
                                    "nodes")
    explore_steps: int = option(24, "full-tree steps used by tree_size=auto before it chooses")
    matrix: str = option("", "a .npy adjacency matrix to load (see save_matrix)")
    calibrate: bool = option(False, "tree_size=auto: measure and explore again instead of "
                                    "using the stored calibration")

    def __post_init__(self):
        require_positive(k=self.k, explore_steps=self.explore_steps)
        if self.tree_size != "auto" and not str(self.tree_size).isdigit():
            raise InvalidOptionError("tree_size must be 'auto' or a node count")


class TokenRecycling(Drafter):
    name = "token-recycling"

    def __init__(self, target, options: TokenRecyclingOptions = TokenRecyclingOptions()):
        self.template_name, self.k = options.template, options.k
        self.template = load_template(options.template)
        if any(rank >= options.k for _, rank in self.template):
            raise InvalidOptionError(f"template '{options.template}' uses ranks >= "
                                     f"k={options.k}; raise k")
        self.parents = [p for p, _ in self.template]
        self.depths = TokenTree([0] * len(self.template), self.parents).depths
        self.sizes = [n for n in (0, 4, 8, 12, 16, 24, 32, 48, 64, 80) if n < len(self.template)]
        self.sizes.append(len(self.template))
        self.explore_steps, self.calibrate = options.explore_steps, options.calibrate
        vocab = target.model.get_input_embeddings().num_embeddings
        self.matrix = np.full((vocab, options.k), -1, dtype=np.int32)
        if options.matrix:
            self.load_matrix(options.matrix)
        self.fixed_size: int | None = None
        if options.tree_size != "auto":
            size = int(options.tree_size)
            if not 0 <= size <= len(self.template):
                raise InvalidOptionError(f"tree_size must lie in [0, {len(self.template)}]")
            self.fixed_size = size
        self.chosen_size: int | None = None  # what tree_size=auto settled on
        self.costs: CostCurve | None = None  # seconds of a forward over [root] + n nodes, by n
        self.explored = 0
        self.accepted_by_size: dict[int, int] = {}
        self.store: CalibrationStore | None = None
        self._root = -1
        self._proposed = TokenTree()
        self._template_ids: list[int] = []

    def save_matrix(self, path: str | Path) -> None:
        np.save(Path(path), self.matrix, allow_pickle=False)

    def load_matrix(self, path: str | Path) -> None:
        try:
            loaded = np.load(Path(path), allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InvalidOptionError(f"cannot read token-recycling matrix '{path}': {err}") from None
        if loaded.shape != self.matrix.shape:
            raise InvalidOptionError(f"matrix '{path}' has shape {loaded.shape}, expected "
                                     f"{self.matrix.shape} (vocab x k) for this model")
        self.matrix[:] = loaded

    def begin(self, prompt_ids: list[int], target: Backend) -> None:
        """The first time: the stored calibration (a chosen size, or the cost curve and the
        exploration so far), else the cost of each template prefix measured now (after the
        prompt's prefill, so that it lands in this generation's start) and stored at once."""
        if self.fixed_size is not None or self.costs is not None:
            return
        self.store = CalibrationStore(target)
        stored = None if self.calibrate else self.store.get(self._store_name())
        if stored is not None:
            self.costs = CostCurve.from_dict(stored["forward_costs"])
            self.chosen_size = stored["tree_size"]
            self.explored = stored.get("explored", 0)
            self.accepted_by_size = {int(n): c for n, c in
                                     stored.get("accepted_by_size", {}).items()}
            return
        masks = {n + 1: TokenTree([0] * n, self.parents[:n]).block_mask() for n in self.sizes}
        curve = measure_forward_costs(target, [n + 1 for n in self.sizes], masks)
        self.costs = CostCurve({n: curve.seconds[n + 1] for n in self.sizes})
        self.store.put(self._store_name(), self.calibration())

    def finish(self) -> None:
        """Store an unfinished exploration, so that short generations in new processes carry
        it on instead of starting again."""
        if self.fixed_size is None and self.chosen_size is None and self.store is not None:
            self.store.put(self._store_name(), self.calibration())

    @property
    def tree_size(self) -> int:
        if self.fixed_size is not None:
            return self.fixed_size
        if self.chosen_size is None and self.explored >= self.explore_steps:
            self.chosen_size = self._choose_size()
            if self.store is not None:
                self.store.put(self._store_name(), self.calibration())
        return len(self.template) if self.chosen_size is None else self.chosen_size

    def calibration(self) -> dict:
        """What tree_size=auto measured, explored and chose (for results files and the user
        cache)."""
        return {"tree_size": self.fixed_size if self.fixed_size is not None else self.chosen_size,
                "forward_costs": self.costs.as_dict() if self.costs else None,
                "explored": self.explored,
                "accepted_by_size": {str(n): c for n, c in sorted(self.accepted_by_size.items())}}

    def _store_name(self) -> str:
        return f"token-recycling/{self.template_name}/k{self.k}/explore{self.explore_steps}"

    def propose(self, tokens: list[int], max_depth: int) -> TokenTree:
        matrix = self.matrix
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
        self._proposed = TokenTree(node_tokens, parents)
        return self._proposed

    def feedback(self, tree: TokenTree, logits: torch.Tensor, result: VerifyResult) -> None:
        values, top = torch.topk(logits, self.matrix.shape[1], dim=-1)
        rows = [self._root] + tree.tokens
        # a row a guide masked has fewer than k allowed tokens: its -inf ties are not candidates,
        # so those slots keep what the matrix had
        self.matrix[rows] = np.where(torch.isfinite(values).cpu().numpy(), top.cpu().numpy(),
                                     self.matrix[rows])
        if self.fixed_size is None and self.chosen_size is None and len(tree) and not self.guided:
            # the engine may have verified a cut of the proposed tree (first chain, depth):
            # map its path back to the proposed tree's template indices
            proposed = tree.map_into(self._proposed)
            self._record([self._template_ids[proposed[i]] for i in result.path])

    # tree-size search --------------------------------------------------------------------
    def _record(self, path: list[int]) -> None:
        """Count the tokens each template prefix would have accepted on this step (`path`:
        template indices of the accepted nodes, increasing)."""
        for n in self.sizes:
            self.accepted_by_size[n] = self.accepted_by_size.get(n, 0) + sum(t < n for t in path)
        self.explored += 1

    def _choose_size(self) -> int:
        score = {n: (1 + self.accepted_by_size.get(n, 0) / self.explored) / self.costs.cost(n)
                 for n in self.sizes}
        return max(score, key=score.get)


register(Method(
    "token-recycling", "Turning Trash into Treasure (Luo et al.), arXiv 2408.08696",
    "training-free: recycles the target's top-k candidates into a static tree template",
    build=lambda target, draft, options: TokenRecycling(target, options),
    options_type=TokenRecyclingOptions,
))
