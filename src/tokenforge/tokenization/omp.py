"""Orthogonal Matching Pursuit transplantation (Goddard & Fernandes Neto, 2025, "Training-Free
Tokenizer Transplantation via Orthogonal Matching Pursuit"; mergekit's tokensurgeon).

In the donor's embedding space (a model that already uses the new tokenizer) each new token is
written as a sparse combination of `k` tokens that both vocabularies share, chosen greedily by OMP
with the least-squares coefficients on the chosen atoms; the same coefficients then combine the base
model's rows.
Differences: our donor is a draft-size model we train ourselves on the target corpus (see
`lm.train_donor`), so only tokens that occur in its training stream (or, with `min_exposures`, that
it saw more often than that) count as learned; the others are neither atoms nor targets and fall
back to the subword mean, the way tokensurgeon treats tokens it finds under-trained. The solver is
our own batched OMP.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from tokenforge.tokenization.lm import Donor
from tokenforge.tokenization.plan import Combination, Plan, subword_mean

BATCH = 2048


def batch_omp(targets: torch.Tensor, atoms: torch.Tensor, k: int) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
    """For each row of `targets` (B, d): indices (B, k) into `atoms` (N, d) and least-squares
    coefficients (B, k). Atoms are chosen one at a time by largest |correlation| with the residual;
    the chosen atoms are kept orthonormalised (Gram-Schmidt, Q R), so that the residual update is
    one projection and the coefficients one triangular solve at the end."""
    batch, dim = targets.shape
    unit = (atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()
    index = torch.zeros(batch, k, dtype=torch.long)
    q = torch.zeros(batch, dim, k, dtype=targets.dtype)
    r = torch.zeros(batch, k, k, dtype=targets.dtype)
    residual = targets.clone()
    for t in range(k):
        scores = (residual.float() @ unit.T).abs()
        if t:
            scores.scatter_(1, index[:, :t], -1.0)
        index[:, t] = scores.argmax(dim=1)
        atom = atoms[index[:, t]].to(targets.dtype)
        if t:
            r[:, :t, t] = torch.einsum("bdt,bd->bt", q[:, :, :t], atom)
            atom = atom - torch.einsum("bdt,bt->bd", q[:, :, :t], r[:, :t, t])
        r[:, t, t] = atom.norm(dim=1).clamp_min(1e-12)
        q[:, :, t] = atom / r[:, t, t, None]
        residual -= (residual * q[:, :, t]).sum(1, keepdim=True) * q[:, :, t]
    projections = torch.einsum("bdk,bd->bk", q, targets)[..., None]
    coef = torch.linalg.solve_triangular(r, projections, upper=True)[..., 0]
    return index, coef


def omp_combination(plan: Plan, donor: Donor, k: int = 32,
                    min_exposures: float = 0.0) -> tuple[Combination, int]:
    """(combination for every unshared token, how many fell back to the subword mean)."""
    learned = donor.seen(min_exposures)
    atom_mask = learned[plan.shared_new]
    atom_new, atom_old = plan.shared_new[atom_mask], plan.shared_old[atom_mask]
    atoms = donor.embeddings[atom_new].double()
    k = min(k, len(atom_new), atoms.shape[1])
    targets = plan.unshared[learned[plan.unshared]]
    fallback = plan.unshared[~learned[plan.unshared]]
    parts = [subword_mean(plan, fallback.tolist())]
    for start in tqdm(range(0, len(targets), BATCH), desc="omp", unit="batch", leave=False):
        ids = targets[start : start + BATCH]
        index, coef = batch_omp(donor.embeddings[ids].double(), atoms, k)
        parts.append(Combination(ids, atom_old[index], coef.float()))
    return Combination.concat(parts), len(fallback)
