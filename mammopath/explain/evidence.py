"""Cross-modal evidence: a mammogram's suspicious regions linked to the pathology patches they resemble.

For a mammogram, the top suspicious regions are the cells of the patch grid with the highest
``localization probability × relevance`` (non-maximum suppression keeps them apart); each region's
embedding is the alignment projector applied to the mean of the tokens around it (the image embedding is
the projector on the mean of all tokens, so regions and images live in the same aligned space); its links
are the most similar pathology patches of a bank (cosine similarity). Where the mammogram's patient has
pathology in the bank (a true pair) the links are searched within that patient; otherwise they are
retrievals across patients, which is all the public benchmarks allow (no patient has both modalities),
and every link says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

WITHIN_PATIENT = "within the same patient (a true cross-modal pair)"
ACROSS_PATIENTS = "across patients (label-level alignment: this patient has no pathology in the bank)"


def top_regions(score: Tensor, k: int, suppress: int = 1) -> list[tuple[int, int, float]]:
    """The ``k`` highest cells ``(row, col, score)`` of ``score`` ``[h, w]``, none within ``suppress`` of another."""
    s = score.detach().float().clone()
    h, w = s.shape
    found: list[tuple[int, int, float]] = []
    for _ in range(min(k, h * w)):
        flat = int(torch.argmax(s))
        r, c = divmod(flat, w)
        if not torch.isfinite(s[r, c]):
            break
        found.append((r, c, float(score[r, c])))
        s[max(0, r - suppress) : r + suppress + 1, max(0, c - suppress) : c + suppress + 1] = float("-inf")
    return found


def region_embeddings(
    projector: torch.nn.Module,
    tokens: Tensor,
    grid: tuple[int, int],
    cells: list[tuple[int, int, float]],
    radius: int = 1,
) -> Tensor:
    """Aligned embeddings ``[K, d]`` of regions: the projector on the mean token of each cell's neighbourhood."""
    h, w = grid
    t = tokens.view(h, w, -1)
    means = []
    for r, c, _ in cells:
        window = t[max(0, r - radius) : r + radius + 1, max(0, c - radius) : c + radius + 1]
        means.append(window.reshape(-1, t.shape[-1]).mean(0))
    if not means:
        return torch.zeros(0, 1)
    with torch.no_grad():
        return F.normalize(projector(torch.stack(means)), dim=1)


@dataclass
class Bank:
    """Pathology patches to link to: their aligned embeddings and what a link reports about them."""

    embeddings: list[Tensor] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def add(self, embedding: Tensor, sample_id: str, patient_id: str, domain: str, score: float) -> None:
        self.index[sample_id] = len(self.sample_ids)
        self.embeddings.append(embedding.detach().float().cpu())
        self.sample_ids.append(sample_id)
        self.patient_ids.append(patient_id)
        self.domains.append(domain)
        self.scores.append(score)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def link(self, regions: Tensor, patient_id: str, top: int) -> tuple[list[list[tuple[int, float]]], str]:
        """Per region, the ``top`` (bank index, cosine similarity) links, and the scope of the search."""
        if not len(self) or regions.shape[0] == 0:
            return [[] for _ in range(regions.shape[0])], ACROSS_PATIENTS
        bank = torch.stack(self.embeddings)
        own = [i for i, p in enumerate(self.patient_ids) if p == patient_id]
        candidates = torch.tensor(own) if own else torch.arange(len(self))
        scope = WITHIN_PATIENT if own else ACROSS_PATIENTS
        sim = regions.float() @ bank[candidates].T
        links = []
        for row in sim:
            values, order = row.topk(min(top, len(candidates)))
            links.append([(int(candidates[j]), float(v)) for v, j in zip(values, order, strict=True)])
        return links, scope
