"""Cross-modal pairing: which samples are positives, and a sampler that puts true pairs in the same step.

**Pairing keys.** Every training sample carries ``patient_code`` (an integer code of its patient,
unique across the composition), ``paired`` (its patient has rows in both modalities) and a
cross-modal class from :class:`LabelMap`. :func:`~mammopath.losses.contrastive.positive_matrix` turns
them into positives: the same patient for truly paired patients (institutional data; the synthetic
paired cohort), the same cross-modal class otherwise. The public benchmarks share no patients, so on
them alignment is label-level; the run log and ``results/`` say which pairing each domain used.

**PairedSampler.** Independently shuffled mammography and pathology loaders almost never put both
modalities of a paired patient into one step. The sampler of each modality follows one shared,
seeded schedule of paired patients: step ``i`` of the mammography loader and step ``i`` of the
pathology loader hold the same paired patients (on the same rank), and the remaining places of each
batch are filled from that modality's other samples (a pluggable fill policy, shuffled by default).
Under DDP each rank takes its own part of every global batch (the sampler is a ``DistributedSampler``,
so Lightning leaves it in place and calls ``set_epoch``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from mammopath.errors import ConfigError
from mammopath.manifest import GRADE_SCHEMES, num_grades

MODALITY_CODES = {"mammo": 0, "patho": 1}


@dataclass(frozen=True)
class LabelMap:
    """The cross-modal class of a sample, used for label-level positives.

    ``malignancy`` (default): the class is the malignancy label (0/1). ``grade_bins``: the class comes
    from the sample's grade through ``bins[scheme][grade]`` (e.g. BI-RADS 0-3 → 0, 4 → 1, 5-6 → 2 and
    BACH Normal/Benign → 0, InSitu → 1, Invasive → 2), so finer anchors than benign/malignant align;
    samples of an unmapped scheme or without a grade get no label-level positive.
    """

    kind: str = "malignancy"
    bins: Mapping[str, Sequence[int]] | None = None

    @classmethod
    def parse(cls, spec: str | Mapping[str, Sequence[int]]) -> LabelMap:
        """``"malignancy"`` or a ``{scheme: [class of grade 0, class of grade 1, ...]}`` mapping."""
        if isinstance(spec, str):
            if spec != "malignancy":
                raise ConfigError(f"align_label_map must be 'malignancy' or a {{scheme: [classes]}} map; got {spec!r}")
            return cls()
        bins = {str(k): [int(c) for c in v] for k, v in spec.items()}
        for scheme, classes in bins.items():
            if scheme not in GRADE_SCHEMES:
                raise ConfigError(f"align_label_map: unknown grade scheme {scheme!r}; use {sorted(GRADE_SCHEMES)}")
            if len(classes) != num_grades(scheme):
                raise ConfigError(f"align_label_map.{scheme} needs {num_grades(scheme)} classes, got {len(classes)}")
        return cls("grade_bins", bins)

    def describe(self) -> str:
        """How label-level positives are defined, in words (for logs and results)."""
        if self.kind == "malignancy":
            return "same malignancy label"
        return "same grade bin (" + "; ".join(f"{s}: {list(c)}" for s, c in sorted((self.bins or {}).items())) + ")"

    def classes(self, label: Tensor, grade: Tensor, schemes: Sequence[str]) -> Tensor:
        """Cross-modal class per sample (-1 = unknown) from a batch's ``label``, ``grade``, ``grade_scheme``."""
        if self.kind == "malignancy":
            return torch.where(label >= 0, label, torch.full_like(label, -1)).long()
        out = torch.full_like(grade, -1).long()
        for i, (scheme, g) in enumerate(zip(schemes, grade.tolist(), strict=True)):
            table = (self.bins or {}).get(scheme)
            if table is not None and 0 <= g < len(table):
                out[i] = table[g]
        return out


def pairing_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Per (modality, domain): samples, patients, patients with both modalities, and the pairing used."""
    modalities = manifest.groupby("patient_id")["modality"].nunique()
    paired_patients = set(modalities[modalities > 1].index)
    rows = []
    for (modality, domain), group in manifest.groupby(["modality", "domain"], sort=True):
        n_paired = int(group["patient_id"].isin(paired_patients).groupby(group["patient_id"]).first().sum())
        rows.append(
            {
                "modality": modality,
                "domain": domain,
                "n_samples": len(group),
                "n_patients": int(group["patient_id"].nunique()),
                "n_paired_patients": n_paired,
                "pairing": "patient-level" if n_paired else "label-level",
            }
        )
    return pd.DataFrame(rows)


#: fill(rng, pool, n, chunk) -> n indices drawn from ``pool`` (local dataset indices of one modality), used in
#: consecutive chunks of ``chunk`` (the unpaired places of one batch)
FillPolicy = Callable[[np.random.Generator, np.ndarray, int, int], np.ndarray]


def shuffled_fill(rng: np.random.Generator, pool: np.ndarray, n: int, chunk: int) -> np.ndarray:
    """``n`` indices from ``pool`` in a fresh random order, cycling the pool when it is shorter."""
    if n == 0 or len(pool) == 0:
        return np.zeros(0, dtype=np.int64)
    reps = -(-n // len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:n]


class PairedSampler(DistributedSampler):
    """Sample indices of one modality so that paired patients meet their other modality in the same step.

    Each global batch holds ``paired_per_batch`` paired patients per rank, one sample of this modality
    each, drawn from a schedule shared by both modalities' samplers (same ``seed``, epoch and patient
    list ⇒ same schedule); the rest of the batch is filled by ``fill`` from the modality's samples of
    unpaired patients (or, when there are none, from the paired patients' other samples).

    Args:
        dataset: the modality's training dataset (only its length is used).
        patients: patient id of every dataset row.
        paired_patients: the patients with both modalities (the same list for both modalities).
        batch_size: per rank.
        paired_per_batch: paired patients per rank and batch (≤ ``batch_size``).
        num_batches: batches per epoch (give both modalities the same number: they advance in lockstep).
        seed: base seed; the schedule of epoch ``e`` is seeded by ``(seed, e)``.
        modality: ``mammo`` or ``patho`` (seeds the fill order of this modality).
        num_replicas, rank: DDP world size and this rank (default: from the process group, else 1 and 0).
        fill: the policy that fills the unpaired places (:func:`shuffled_fill`, or
            :func:`~mammopath.datamodules.samplers.balanced_fill` for domain-balanced batches).
    """

    def __init__(
        self,
        dataset: Dataset,
        patients: Sequence[str],
        paired_patients: Sequence[str],
        *,
        batch_size: int,
        paired_per_batch: int,
        num_batches: int,
        seed: int = 0,
        modality: str = "mammo",
        num_replicas: int | None = None,
        rank: int | None = None,
        fill: FillPolicy = shuffled_fill,
    ) -> None:
        from mammopath.datamodules.samplers import replica_context

        world, me = replica_context(num_replicas, rank)
        super().__init__(dataset, num_replicas=world, rank=me, shuffle=False, seed=seed, drop_last=True)
        if not 0 < paired_per_batch <= batch_size:
            raise ConfigError(f"paired_per_batch must be in [1, batch_size={batch_size}]; got {paired_per_batch}")
        if num_batches < 1:
            raise ConfigError(f"num_batches must be >= 1; got {num_batches}")
        self.batch_size, self.per_batch, self.num_batches = batch_size, paired_per_batch, num_batches
        self.modality_code = MODALITY_CODES[modality]
        self.paired_patients = sorted(set(paired_patients))
        if not self.paired_patients:
            raise ConfigError("PairedSampler needs at least one patient with both modalities")
        patient_array = np.asarray(list(patients), dtype=object)
        self.rows_of = {p: np.flatnonzero(patient_array == p) for p in self.paired_patients}
        missing = [p for p, rows in self.rows_of.items() if len(rows) == 0]
        if missing:
            raise ConfigError(f"paired patients without a {modality} sample in this dataset: {missing[:5]}")
        unpaired = np.flatnonzero(~np.isin(patient_array, self.paired_patients))
        self.pool = unpaired if len(unpaired) else np.arange(len(patient_array))
        self.fill = fill

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def schedule(self) -> list[list[str]]:
        """Paired patients of every batch of this rank, this epoch (identical for both modalities)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        per_global = self.per_batch * self.num_replicas
        need = self.num_batches * per_global
        order: list[str] = []
        while len(order) < need:
            order += [self.paired_patients[i] for i in rng.permutation(len(self.paired_patients))]
        out = []
        for b in range(self.num_batches):
            start = b * per_global + self.rank * self.per_batch
            out.append(order[start : start + self.per_batch])
        return out

    def __iter__(self):  # type: ignore[no-untyped-def]
        pick = np.random.default_rng([self.seed, self.epoch, 1 + self.modality_code, self.rank])
        # one fill sequence for all ranks, each rank taking its own part of every global batch: disjoint shards
        fill_rng = np.random.default_rng([self.seed, self.epoch, 10 + self.modality_code])
        n_fill = self.batch_size - self.per_batch
        fill = self.fill(fill_rng, self.pool, n_fill * self.num_batches * self.num_replicas, n_fill)
        indices: list[int] = []
        for b, patients in enumerate(self.schedule()):
            indices += [int(self.rows_of[p][pick.integers(len(self.rows_of[p]))]) for p in patients]
            start = (b * self.num_replicas + self.rank) * n_fill
            indices += [int(i) for i in fill[start : start + n_fill]]
        return iter(indices)
