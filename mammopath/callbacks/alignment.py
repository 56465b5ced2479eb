"""`AlignmentMonitor`: alignment curves in TensorBoard, and the final alignment numbers with their chance levels.

Every validation epoch it collects the aligned embeddings of the evaluation steps (``outputs["embedding"]``,
``MammoPathModule(alignment=True)``), gathers them across ranks as tensors with their sample index, and
logs under ``align/``:

- ``loss`` (the contrastive loss on the whole evaluated set), ``logit_scale`` and ``temperature``;
- ``alignment`` and ``uniformity`` (Wang & Isola; lower is better), ``pos_minus_neg`` (mean cosine of
  positive pairs minus negative pairs);
- patient-level retrieval where true pairs exist (one embedding per patient and modality, the mean of its
  samples): ``R@1``, ``R@5`` (mammography → pathology and back, averaged), beside ``R@k_chance`` (random
  ranking) and ``R@k_label_chance`` (a model that knows only the class);
- class-consistent retrieval on every sample: ``P@5`` and ``mAP@R`` beside their chance levels.

At the end of ``fit`` it writes the per-epoch history (``alignment_history.csv``); after ``test`` the
final numbers (``alignment.csv``/``.md``) and the pairing each domain used (``pairing.csv``), under
``out_dir`` (``results/<run>`` with a ``run_name``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from rich.console import Console
from torch import Tensor

from mammopath.datamodules.pairing import MODALITY_CODES, pairing_table
from mammopath.errors import ConfigError
from mammopath.losses.contrastive import cross_modal_contrastive_loss, positive_matrix
from mammopath.losses.distributed import all_gather_rows
from mammopath.metrics import retrieval as R
from mammopath.report import atomic_write, render_table, to_markdown, write_frame

log = logging.getLogger(__name__)


def _patient_means(z: Tensor, patients: Tensor) -> tuple[Tensor, Tensor]:
    """One normalized embedding per patient (the mean of its rows), and the sorted patient codes."""
    codes, inverse = torch.unique(patients, return_inverse=True)
    sums = torch.zeros(len(codes), z.shape[1], dtype=z.dtype).index_add_(0, inverse, z)
    return torch.nn.functional.normalize(sums, dim=1), codes


def alignment_metrics(
    z_mammo: Tensor,
    z_patho: Tensor,
    keys_mammo: dict[str, Tensor],
    keys_patho: dict[str, Tensor],
    ks: tuple[int, ...] = (1, 5),
    seed: int = 0,
) -> dict[str, float]:
    """The ``align/*`` numbers of one evaluated set (normalized embeddings and their pairing keys)."""
    km, kp = keys_mammo, keys_patho
    out: dict[str, float] = {"n_mammo": float(len(z_mammo)), "n_patho": float(len(z_patho))}
    if len(z_mammo) == 0 or len(z_patho) == 0:
        return out
    positives = positive_matrix(km["patient"], km["cls"], km["paired"], kp["patient"], kp["cls"], kp["paired"])
    sim = z_mammo @ z_patho.T
    out["pos_minus_neg"] = R.positive_minus_negative(sim, positives)
    out["uniformity"] = 0.5 * (R.uniformity(z_mammo) + R.uniformity(z_patho))
    # patient level: patients with both modalities in this set
    pm, pp = km["paired"], kp["paired"]
    if bool(pm.any()) and bool(pp.any()):
        um, cm = _patient_means(z_mammo[pm], km["patient"][pm])
        up, cp = _patient_means(z_patho[pp], kp["patient"][pp])
        common = torch.tensor([c for c in cm.tolist() if c in set(cp.tolist())], dtype=torch.long)
        if len(common) >= 2:
            um, up = um[torch.searchsorted(cm, common)], up[torch.searchsorted(cp, common)]
            cls_of = {int(p): int(c) for p, c in zip(km["patient"][pm].tolist(), km["cls"][pm].tolist(), strict=True)}
            cls = torch.tensor([cls_of[int(p)] for p in common])
            correct = torch.eye(len(common), dtype=torch.bool)
            out["n_paired_patients"] = float(len(common))
            out["alignment"] = R.alignment(um, up)
            sims = (um @ up.T, up @ um.T)  # mammography → pathology and back
            for k in ks:
                out[f"R@{k}"] = sum(R.recall_at_k(s, correct, k) for s in sims) / 2
                out[f"R@{k}_chance"] = R.chance_recall_at_k(correct, k)
                out[f"R@{k}_label_chance"] = R.label_only_recall_at_k(correct, cls, cls, k)
    # class-consistent (label level): every sample, mammography queries
    known = km["cls"] >= 0
    relevant = (km["cls"][known, None] == kp["cls"][None, :]) & (kp["cls"][None, :] >= 0)
    if bool(known.any()) and bool(relevant.any()):
        s = sim[known]
        k = max(ks)
        out[f"P@{k}"] = R.precision_at_k(s, relevant, k)
        out[f"P@{k}_chance"] = R.chance_precision_at_k(relevant)
        out["mAP@R"] = R.map_at_r(s, relevant)
        out["mAP@R_chance"] = R.chance_map_at_r(relevant, seed=seed)
    return out


class AlignmentMonitor(L.Callback):
    """Alignment curves every validation epoch and the final alignment numbers after test.

    Args:
        out_dir: where ``alignment*.csv``/``.md`` and ``pairing.csv`` go (``results/<run>`` with a ``run_name``;
            default ``<trainer.default_root_dir>/results``).
        ks: retrieval cut-offs (R@k for each, P@max(k)).
        seed: seed of the chance estimates that use random rankings.
    """

    def __init__(self, out_dir: str | None = None, ks: list[int] | None = None, seed: int = 0) -> None:
        super().__init__()
        self.out_dir = Path(out_dir) if out_dir else None
        self.ks = tuple(ks or (1, 5))
        self.seed = seed
        self._parts: dict[str, list[Tensor]] = {}
        self.history: list[dict[str, float]] = []
        self.final: dict[str, float] = {}

    # -- collection ------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not getattr(pl_module, "alignment", False):
            raise ConfigError("AlignmentMonitor needs model.alignment: true (the aligned embedding it monitors)")

    def _reset(self) -> None:
        self._parts = {"index": [], "embedding": [], "modality": [], "cls": []}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def _record(self, pl_module: Any, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        keys = pl_module.pairing_keys(batch)
        n = len(outputs["index"])
        self._parts["index"].append(outputs["index"].cpu())
        self._parts["embedding"].append(outputs["outputs"]["embedding"].detach().float().cpu())
        self._parts["modality"].append(torch.full((n,), MODALITY_CODES[outputs["modality"]], dtype=torch.long))
        self._parts["cls"].append(keys["cls"].cpu())

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
        self._record(pl_module, outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
        self._record(pl_module, outputs, batch)

    # -- computation -----------------------------------------------------------------------------
    def _gathered(self, pl_module: Any) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
        cat = {k: torch.cat(v) if v else torch.zeros(0) for k, v in self._parts.items()}
        device = pl_module.device
        full = {k: all_gather_rows(v.to(device), grad=False).cpu() for k, v in cat.items()}
        index = full["index"].long()
        order = torch.argsort(index, stable=True)
        keep = torch.ones(len(index), dtype=torch.bool)
        keep[order[1:]] = index[order[1:]] != index[order[:-1]]  # drop the duplicates a sampler padded in
        table = pl_module.trainer.datamodule.sample_table
        z, mods, cls, idx = (
            full["embedding"][keep],
            full["modality"][keep].long(),
            full["cls"][keep].long(),
            index[keep],
        )
        rows = table.loc[idx.numpy()]
        patient = torch.tensor(rows["patient_code"].to_numpy(dtype="int64"))
        paired = torch.tensor(rows["paired"].to_numpy(dtype=bool))
        embeddings, keys = {}, {}
        for name, code in MODALITY_CODES.items():
            sel = mods == code
            embeddings[name] = z[sel]
            keys[name] = {"patient": patient[sel], "cls": cls[sel], "paired": paired[sel]}
        return embeddings, keys

    def _compute(self, pl_module: Any) -> dict[str, float]:
        z, keys = self._gathered(pl_module)
        metrics = alignment_metrics(z["mammo"], z["patho"], keys["mammo"], keys["patho"], self.ks, self.seed)
        scale = float(pl_module.scale().detach())
        metrics["logit_scale"], metrics["temperature"] = scale, 1.0 / scale
        if len(z["mammo"]) and len(z["patho"]):
            km, kp = keys["mammo"], keys["patho"]
            pos = positive_matrix(km["patient"], km["cls"], km["paired"], kp["patient"], kp["cls"], kp["paired"])
            metrics["loss"] = float(cross_modal_contrastive_loss(z["mammo"], z["patho"], pos, scale))
        return metrics

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = self._compute(pl_module)
        for name, value in metrics.items():
            if not name.startswith("n_") and value == value:  # NaN is not logged
                pl_module.log(f"align/{name}", value)
        self.history.append({"epoch": float(trainer.current_epoch), **metrics})

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.final = self._compute(pl_module)
        for name, value in self.final.items():
            if not name.startswith("n_") and value == value:
                pl_module.log(f"align/test_{name}", value)

    # -- writing ---------------------------------------------------------------------------------
    def _out(self, trainer: L.Trainer) -> Path:
        return self.out_dir or Path(trainer.default_root_dir) / "results"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            table = self.pairing(trainer)
            Console().print(render_table(table, "cross-modal pairing per domain (training split)"))
            for _, row in table.iterrows():
                log.info("pairing %s %s: %s", row["modality"], row["domain"], row["pairing"])

    def pairing(self, trainer: L.Trainer) -> pd.DataFrame:
        """Which pairing each domain uses, from the datamodule's training rows."""
        dm: Any = trainer.datamodule  # type: ignore[attr-defined]
        manifest = dm.manifest
        train = manifest[(manifest["split"] == "train") & ~manifest["domain"].isin(dm.holdout_domains)]
        table = pairing_table(train)
        module: Any = trainer.lightning_module
        label_map = module.label_map.describe()
        table["pairing"] = table["pairing"].where(table["pairing"] == "patient-level", f"label-level ({label_map})")
        return table

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.history:
            write_frame(self._out(trainer) / "alignment_history.csv", pd.DataFrame(self.history))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.final:
            return
        out = self._out(trainer)
        rows = []
        for name, value in self.final.items():
            if name.endswith("_chance") or name.endswith("_label_chance"):
                continue
            rows.append(
                {
                    "metric": name,
                    "value": value,
                    "chance": self.final.get(f"{name}_chance", float("nan")),
                    "label_only_chance": self.final.get(f"{name}_label_chance", float("nan")),
                }
            )
        frame = pd.DataFrame(rows)
        write_frame(out / "alignment.csv", frame)
        atomic_write(out / "alignment.md", to_markdown(frame, "Cross-modal alignment (test)"))
        write_frame(out / "pairing.csv", self.pairing(trainer))
        Console().print(render_table(frame, "cross-modal alignment (test)"))
