"""`AttentionMapWriter`: attention and relevance maps, cross-modal evidence panels and their validation.

A Lightning ``BasePredictionWriter`` run by ``mammopath predict``. For every exported sample it writes a
PNG overlay (the image, its relevance map, its localization heatmap with the top suspicious regions) and a
JSON of the numbers; for mammograms, an evidence panel PNG (each region's crop beside the pathology
patches it links to in the aligned space, with their similarities and their own relevance maps); one
``index.csv``; a few panels to TensorBoard; and ``explain_metrics.csv``: the pointing game of the
relevance, rollout and localization maps against lesion masks and deletion / insertion AUC on a fixed
subset, each beside its random-map baseline.

File names are built from ``sample_id`` only; no header value, file name or patient id is written. PNGs
are written by a small thread pool, so the inference loop does not wait on the disk. With ``overwrite:
false`` (the default) it refuses an export folder that already holds an ``index.csv``. Relevance maps
need gradients: with ``relevance: true`` it refuses to start under ``trainer.inference_mode: true``.
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image, ImageDraw

from mammopath.errors import ConfigError
from mammopath.explain.attention import explain_batch
from mammopath.explain.evidence import Bank, region_embeddings, top_regions
from mammopath.metrics.faithfulness import deletion_insertion, pointing_hits
from mammopath.report import atomic_write, write_frame

log = logging.getLogger(__name__)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(sample_id: str) -> str:
    """A file name from a sample id (characters outside [A-Za-z0-9._-] become '_')."""
    return _SAFE.sub("_", sample_id)[:180] or "sample"


def _rgb(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] → (H, W, 3) uint8."""
    arr = image.detach().float().clamp(0, 1).cpu().numpy()
    arr = np.repeat(arr, 3, axis=0) if arr.shape[0] == 1 else arr[:3]
    return (arr.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def _colorize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map (any shape) → an (H, W, 3) uint8 'inferno' image of ``size`` (min-max normalized)."""
    import matplotlib

    v = values.astype(np.float64)
    v = (v - v.min()) / max(float(v.max() - v.min()), 1e-12)
    lut = (matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    small = Image.fromarray(lut[(v * 255).astype(np.uint8)])
    return np.asarray(small.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _blend(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)


def _save_png(path: Path, array: np.ndarray, scale: int = 3) -> None:
    img = Image.fromarray(array)
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)


def overlay(
    image: np.ndarray, relevance: np.ndarray, heatmap: np.ndarray, boxes: list[tuple[int, int, int, int]]
) -> np.ndarray:
    """[image | image + relevance | image + localization heatmap with the region boxes], side by side."""
    size = image.shape[:2]
    rel = _blend(image, _colorize(relevance, size))
    loc = Image.fromarray(_blend(image, _colorize(heatmap, size)))
    draw = ImageDraw.Draw(loc)
    for box in boxes:
        draw.rectangle(box, outline=(0, 255, 0))
    return np.concatenate([image, rel, np.asarray(loc)], axis=1)


def _cell_box(
    r: int, c: int, grid: tuple[int, int], size: tuple[int, int], radius: int = 1
) -> tuple[int, int, int, int]:
    ch, cw = size[0] / grid[0], size[1] / grid[1]
    y0, x0 = max(0, r - radius) * ch, max(0, c - radius) * cw
    y1, x1 = min(grid[0], r + radius + 1) * ch - 1, min(grid[1], c + radius + 1) * cw - 1
    return int(x0), int(y0), int(x1), int(y1)


class AttentionMapWriter(BasePredictionWriter):
    """Export attention / relevance maps and cross-modal evidence during ``predict``.

    Args:
        out_dir: the export folder (``results/<run>/attention`` with a ``run_name``; default
            ``<trainer.default_root_dir>/attention``).
        overwrite: allow writing into a folder that already holds an export.
        relevance: compute the gradient-weighted relevance (needs ``inference_mode: false``); otherwise the
            attention rollout is the map.
        regions: suspicious regions per mammogram.
        links: pathology patches linked per region.
        domains: export only these domains (all when empty); the pathology bank always takes every patch.
        max_per_domain: overlays per (modality, domain) at most.
        tensorboard_panels: evidence panels also logged as TensorBoard images.
        faithfulness_images: images per modality in the fixed deletion / insertion subset.
        workers: threads writing PNGs.
    """

    def __init__(
        self,
        out_dir: str | None = None,
        overwrite: bool = False,
        relevance: bool = True,
        regions: int = 3,
        links: int = 3,
        domains: list[str] | None = None,
        max_per_domain: int = 24,
        tensorboard_panels: int = 4,
        faithfulness_images: int = 16,
        workers: int = 2,
    ) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir) if out_dir else None
        self.overwrite, self.relevance = overwrite, relevance
        self.regions, self.links, self.domains = regions, links, set(domains or [])
        self.max_per_domain, self.tensorboard_panels = max_per_domain, tensorboard_panels
        self.faithfulness_images, self.workers = faithfulness_images, workers

    # -- lifecycle -------------------------------------------------------------------------------
    def _folder(self, trainer: L.Trainer) -> Path:
        return self.out_dir or Path(trainer.default_root_dir) / "attention"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if self.relevance and getattr(trainer.predict_loop, "inference_mode", False):
            raise ConfigError(
                "AttentionMapWriter computes gradient-weighted relevance maps, which need gradients: set "
                "`trainer.inference_mode: false` (or `relevance: false` for attention rollout only)"
            )
        folder = self._folder(trainer)
        if (folder / "index.csv").exists() and not self.overwrite:
            raise ConfigError(f"{folder}: an attention export is already there; pass overwrite: true to replace it")
        self._pool = ThreadPoolExecutor(max_workers=self.workers)
        self._pending: list[Future[None]] = []
        self._rows: list[dict[str, Any]] = []
        self._mammo: list[dict[str, Any]] = []
        self._bank = Bank()
        self._bank_images: list[torch.Tensor] = []
        self._counts: dict[tuple[str, str], int] = {}
        self._hits: dict[tuple[str, str], list[float]] = {}
        self._faith: dict[str, list[Any]] = {}

    # -- per batch -------------------------------------------------------------------------------
    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):  # type: ignore[no-untyped-def]
        modality = prediction["modality"]
        images = batch["image"].to(pl_module.device)
        explained = explain_batch(pl_module, images, modality, relevance=self.relevance)
        grid = (int(explained["grid"][0]), int(explained["grid"][1]))
        maps = explained["relevance"] if self.relevance else explained["rollout"]
        size = tuple(images.shape[-2:])
        self._metrics(pl_module, batch, explained, maps, modality)
        if modality == "patho" and "embedding" in explained:
            for i, sid in enumerate(prediction["sample_id"]):
                self._bank.add(explained["embedding"][i], sid, prediction["patient_id"][i], prediction["domain"][i],
                               float(prediction["score"][i]))  # fmt: skip
                self._bank_images.append((images[i].detach().cpu() * 255).round().to(torch.uint8))
        folder = self._folder(trainer)
        for i, sid in enumerate(prediction["sample_id"]):
            domain = prediction["domain"][i]
            key = (modality, domain)
            if (self.domains and domain not in self.domains) or self._counts.get(key, 0) >= self.max_per_domain:
                continue
            self._counts[key] = self._counts.get(key, 0) + 1
            heat = explained["loc_patch_logits"][i].sigmoid()
            score_map = heat * (maps[i] / maps[i].max().clamp_min(1e-12))
            cells = top_regions(score_map, self.regions)
            image = _rgb(images[i])
            boxes = [_cell_box(r, c, grid, size) for r, c, _ in cells]
            name = safe_name(sid)
            png = folder / modality / f"{name}.png"
            self._pending.append(
                self._pool.submit(_save_png, png, overlay(image, maps[i].cpu().numpy(), heat.cpu().numpy(), boxes))
            )
            record = {
                "sample_id": sid,
                "modality": modality,
                "domain": domain,
                "role": prediction["role"][i],
                "score": float(prediction["score"][i]),
                "label": int(prediction["label"][i]),
                "map": "gradient-weighted relevance (Chefer)" if self.relevance else "attention rollout",
                "grid": list(grid),
                "relevance_grid": maps[i].cpu().numpy().round(6).tolist(),
                "rollout_grid": explained["rollout"][i].cpu().numpy().round(6).tolist(),
                "regions": [
                    {"row": r, "col": c, "score": round(s, 6), "box_xyxy": list(b)}
                    for (r, c, s), b in zip(cells, boxes, strict=True)
                ],
            }
            self._rows.append({"sample_id": sid, "modality": modality, "domain": domain, "role": record["role"],
                               "score": record["score"], "overlay": png.relative_to(folder).as_posix()})  # fmt: skip
            if modality == "mammo" and "embedding" in explained:
                projector = pl_module.projectors[modality]
                emb = region_embeddings(projector, explained["tokens"][i], grid, cells)
                self._mammo.append({"record": record, "image": image, "embeddings": emb, "boxes": boxes,
                                    "patient_id": prediction["patient_id"][i]})  # fmt: skip
            else:
                self._write_json(folder, record)

    def _metrics(self, pl_module: Any, batch: dict[str, Any], explained: dict[str, Any], maps: torch.Tensor,
                 modality: str) -> None:  # fmt: skip
        has = batch["has_mask"].bool()
        if bool(has.any()):
            masks = batch["mask"][has]
            for name, m in (("relevance" if self.relevance else "rollout", maps), ("rollout", explained["rollout"]),
                            ("localization", explained["loc_patch_logits"].sigmoid())):  # fmt: skip
                hits, chance = pointing_hits(m[has].cpu(), masks)
                self._hits.setdefault((modality, name), []).extend(hits)
            self._hits.setdefault((modality, "random point"), []).extend(chance)
        store = self._faith.setdefault(modality, [])
        room = self.faithfulness_images - sum(len(x[0]) for x in store)
        if room > 0:
            store.append((batch["image"][:room].detach().cpu(), maps[:room].detach().cpu()))

    def _write_json(self, folder: Path, record: dict[str, Any]) -> None:
        path = folder / record["modality"] / f"{safe_name(record['sample_id'])}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(record, indent=1) + "\n")

    # -- at the end ------------------------------------------------------------------------------
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = self._folder(trainer)
        panels = []
        for item in self._mammo:
            record = item["record"]
            links, scope = self._bank.link(item["embeddings"], item["patient_id"], self.links)
            record["evidence_scope"] = scope
            record["evidence"] = [
                [{"sample_id": self._bank.sample_ids[j], "domain": self._bank.domains[j], "similarity": round(s, 6),
                  "score": round(self._bank.scores[j], 6)} for j, s in region] for region in links
            ]  # fmt: skip
            panel = self._panel(pl_module, item, links)
            if panel is not None:
                path = folder / "evidence" / f"{safe_name(record['sample_id'])}.png"
                self._pending.append(self._pool.submit(_save_png, path, panel, 2))
                record["evidence_panel"] = path.relative_to(folder).as_posix()
                panels.append(panel)
            self._write_json(folder, record)
        for future in self._pending:
            future.result()
        self._pool.shutdown()
        if trainer.is_global_zero or trainer.world_size == 1:
            name = "index.csv" if trainer.world_size == 1 else f"index_rank{trainer.global_rank}.csv"
            write_frame(folder / name, pd.DataFrame(self._rows))
            write_frame(folder / "explain_metrics.csv", self._metric_table(pl_module))
        self._tensorboard(trainer, panels)
        log.info("attention export: %d samples, %d evidence panels in %s", len(self._rows), len(panels), folder)

    def _panel(self, pl_module: Any, item: dict[str, Any], links: list[list[tuple[int, float]]]) -> np.ndarray | None:
        """Rows: a region's crop, then its linked patches (each with its relevance overlay), similarities written."""
        if not links or not any(links):
            return None
        tile = 64
        rows = []
        for box, region in zip(item["boxes"], links, strict=True):
            x0, y0, x1, y1 = box
            crop = Image.fromarray(item["image"][y0 : y1 + 1, x0 : x1 + 1]).resize((tile, tile))
            cells = [np.asarray(crop)]
            for j, sim in region:
                patch = self._bank_images[j].float() / 255
                rel = explain_batch(pl_module, patch[None].to(pl_module.device), "patho", relevance=self.relevance)
                m = rel["relevance" if self.relevance else "rollout"][0].cpu().numpy()
                img = _rgb(patch)
                both = Image.fromarray(np.concatenate([img, _blend(img, _colorize(m, img.shape[:2]))], axis=1))
                both = both.resize((2 * tile, tile))
                ImageDraw.Draw(both).text((2, 2), f"{sim:.2f}", fill=(255, 255, 0))
                cells.append(np.asarray(both))
            row = np.concatenate(cells, axis=1)
            rows.append(row)
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
        return np.concatenate(rows, axis=0)

    def _metric_table(self, pl_module: Any) -> pd.DataFrame:
        rows = []
        for (modality, name), values in sorted(self._hits.items()):
            rows.append({"modality": modality, "metric": "pointing_game", "map": name, "value": float(np.mean(values)),
                         "n_images": len(values)})  # fmt: skip
        for modality, parts in self._faith.items():
            if not parts:
                continue
            images = torch.cat([p[0] for p in parts]).to(pl_module.device)
            maps = torch.cat([p[1] for p in parts])

            def predict(x: torch.Tensor, m: str = modality) -> torch.Tensor:
                return torch.sigmoid(pl_module(x, m)["cls_logit"]).cpu()

            for key, value in deletion_insertion(predict, images, maps).items():
                kind, _, name = key.partition("_auc_")
                rows.append({"modality": modality, "metric": f"{kind}_auc", "map": name, "value": value,
                             "n_images": len(images)})  # fmt: skip
        return pd.DataFrame(rows, columns=["modality", "metric", "map", "value", "n_images"])

    def _tensorboard(self, trainer: L.Trainer, panels: list[np.ndarray]) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for k, panel in enumerate(panels[: self.tensorboard_panels]):
                    logger.experiment.add_image(f"explain/evidence_{k}", panel, dataformats="HWC")
