"""Loading pretrained ViT weights from a local file, strictly, with a report of what was loaded.

:func:`load_backbone_weights` reads a ``.pth``/``.pt``/``.bin``/``.ckpt`` (``torch.load(weights_only=True)``)
or ``.safetensors`` file (or the folder holding one), unwraps nesting (Lightning, DINO, DeiT checkpoints),
selects the encoder inside a larger model (a preset's ``key_prefix``), strips wrapper prefixes, converts
the vendor's key layout to timm's (:mod:`mammopath.models.layouts`), drops the classifier, resamples the
position embeddings to the model's grid and adapts the input channels. Every remaining key must match
the model in name and shape; otherwise a :class:`~mammopath.errors.CheckpointError` names the file, the
preset and the first offending keys. Nothing is ever downloaded.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from mammopath.errors import CheckpointError
from mammopath.models.layouts import ANCHORS, detect_layout, to_timm
from mammopath.models.presets import EncoderPreset

logger = logging.getLogger(__name__)

# Wrapper prefixes stripped from checkpoint keys (DDP, Lightning modules, our own ViTEncoder, open_clip
# trunks, transformers task models).
KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.", "vit.", "trunk.", "dinov2.")
# Keys under which training scripts nest the state dict, tried in this order.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "teacher", "network")
CLASSIFIER_PREFIXES = ("head.", "head_dist.")
#: Files looked for in a folder when no preset says which (Hugging Face snapshot folders).
DEFAULT_FILES = ("model.safetensors", "pytorch_model.bin")
_ADAPTER_KEY = re.compile(r"\.(adapters|lora)\.")
_MAX_LISTED = 10


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key belongs to an injected adapter (absent from pretrained files)."""
    return _ADAPTER_KEY.search(key) is not None


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f", ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return shown + more


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did (logged, and shown at fit start).

    Attributes:
        path: the file read.
        target: the preset or timm architecture it was loaded into.
        layout: the key layout detected in the file.
        file_tensors: tensors in the file (after unwrapping nesting).
        matched: model tensors loaded from the file.
        missing: model tensors the file lacks (only injected adapters may be; they keep their init).
        unexpected: file tensors the model has no place for (always 0 after a successful load).
        ignored: file tensors dropped on purpose (outside the encoder, classifier, pooler, mask token).
        notes: conversions applied (key fusion, position-embedding resampling, channel adaptation).
    """

    path: str
    target: str
    layout: str
    file_tensors: int
    matched: int
    missing: int
    unexpected: int
    ignored: int
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        """``(field, value)`` rows for a table."""
        rows = [
            ("file", self.path),
            ("into", self.target),
            ("layout", self.layout),
            ("tensors in file", f"{self.file_tensors:,}"),
            ("matched", f"{self.matched:,}"),
            ("missing (adapters, kept at init)", f"{self.missing:,}"),
            ("unexpected", f"{self.unexpected:,}"),
            ("ignored on purpose", f"{self.ignored:,}"),
        ]
        return rows + [("note", n) for n in self.notes]

    def summary(self) -> str:
        """One line for the log."""
        notes = f"; {'; '.join(self.notes)}" if self.notes else ""
        return (
            f"{self.path}: loaded into {self.target} ({self.layout} layout): {self.matched} matched, "
            f"{self.missing} missing (adapters), {self.unexpected} unexpected, {self.ignored} ignored{notes}"
        )


def _where_to_get(preset: EncoderPreset | None) -> str:
    return f"; {preset.where_to_get()}" if preset is not None else ""


def resolve_weights_file(path: str | Path, preset: EncoderPreset | None = None) -> Path:
    """The weights file ``path`` names: the file itself, or the preset's file inside a folder.

    Raises:
        CheckpointError: nothing there (saying where the preset's weights go and where to obtain them),
            or a folder with none of the expected files.
    """
    p = Path(path)
    if p.is_dir():
        names = preset.files if preset is not None else DEFAULT_FILES
        found = next((p / n for n in names if (p / n).is_file()), None)
        if found is not None:
            return found
        sharded = sorted(q.name for q in p.glob("*.index.json"))
        hint = f" (sharded checkpoints such as {sharded[0]} are not supported: merge the shards)" if sharded else ""
        raise CheckpointError(f"{p}: folder holds none of {list(names)}{hint}{_where_to_get(preset)}")
    if not p.is_file():
        raise CheckpointError(
            f"{p}: file not found (weights are read from local files only, never downloaded){_where_to_get(preset)}"
        )
    return p


def read_state_dict(path: str | Path, target: str = "") -> dict[str, Tensor]:
    """Read a tensor state dict from a local weights file, unwrapping common nesting.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)`` (no arbitrary code). Nested dicts under ``state_dict``,
    ``model``, ``module``, ``teacher``... (Lightning, DeiT/MAE, DINO checkpoints) are unwrapped.

    Args:
        path: the file.
        target: what it is read for (named in errors), e.g. ``"preset 'uni'"``.

    Raises:
        CheckpointError: the file is missing, unreadable (truncated, not a checkpoint) or holds no tensors.
    """
    p = Path(path)
    what = f" for {target}" if target else ""
    if not p.is_file():
        raise CheckpointError(f"{p}: file not found (weights are read from local files only, never downloaded)")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{p}: cannot read weights{what} ({type(exc).__name__}: {exc}); the file may be truncated or not a "
            "checkpoint: save a plain state dict (torch.save(model.state_dict(), ...)) or a .safetensors file"
        ) from exc
    for _ in range(len(NESTED_KEYS)):
        if not isinstance(obj, Mapping) or all(isinstance(v, Tensor) for v in obj.values()):
            break
        nested = next((k for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = obj[nested]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p}: expected a state dict{what} (names to tensors), found {type(obj).__name__}")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        keys = list(obj.keys())[:_MAX_LISTED]
        raise CheckpointError(f"{p}: no tensors found{what}; top-level keys are {keys} (expected a model state dict)")
    return sd


def strip_prefixes(sd: dict[str, Tensor], path: Path, anchor: str = ANCHORS["timm"]) -> tuple[dict[str, Tensor], int]:
    """Strip wrapper prefixes (``module.``, ``encoder.vit.``...) found in front of ``anchor``.

    Returns:
        The stripped state dict and how many keys outside the wrapper were dropped.
    """
    prefixes = {k[: -len(anchor)] for k in sd if k.endswith(anchor)}
    if len(prefixes) == 1:
        prefix = prefixes.pop()
        rest = prefix
        while rest:
            known = next((kp for kp in KNOWN_PREFIXES if rest.startswith(kp)), None)
            if known is None:
                return sd, 0  # an unknown wrapper: leave keys alone, the mismatch report names them
            rest = rest[len(known) :]
        if prefix:
            kept = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            if len(kept) < len(sd):
                logger.info("%s: ignoring %d keys outside '%s'", path, len(sd) - len(kept), prefix)
            return kept, len(sd) - len(kept)
        return sd, 0
    if not prefixes:  # no patch embedding at all: strip prefixes shared by every key
        changed = True
        while changed:
            changed = False
            for kp in KNOWN_PREFIXES:
                if sd and all(k.startswith(kp) for k in sd):
                    sd = {k[len(kp) :]: v for k, v in sd.items()}
                    changed = True
    return sd, 0


def fit_to_model(sd: dict[str, Tensor], vit: VisionTransformer, path: Path, notes: list[str]) -> dict[str, Tensor]:
    """Resample ``pos_embed`` to the model grid and adapt input channels (appending what was done to ``notes``)."""
    pos = sd.get("pos_embed")
    if pos is not None and vit.pos_embed is not None and pos.ndim == 3 and pos.shape != vit.pos_embed.shape:
        n_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        old_n = pos.shape[1] - n_prefix
        side = math.isqrt(max(old_n, 0))
        if side * side == old_n and pos.shape[2] == vit.pos_embed.shape[2]:
            grid = list(vit.patch_embed.grid_size)
            logger.info("%s: resampling pos_embed from %dx%d to %s", path, side, side, grid)
            notes.append(f"pos_embed resampled from {side}x{side} to {grid[0]}x{grid[1]}")
            sd["pos_embed"] = resample_abs_pos_embed(
                pos, new_size=grid, old_size=[side, side], num_prefix_tokens=n_prefix
            )
    w = sd.get("patch_embed.proj.weight")
    mw = vit.patch_embed.proj.weight
    same_kernel = w is not None and w.ndim == 4 and (w.shape[0], *w.shape[2:]) == (mw.shape[0], *mw.shape[2:])
    if w is not None and same_kernel and w.shape[1] != mw.shape[1]:
        logger.info("%s: adapting patch_embed from %d to %d input channels", path, w.shape[1], mw.shape[1])
        notes.append(f"patch_embed adapted from {w.shape[1]} to {mw.shape[1]} input channels")
        sd["patch_embed.proj.weight"] = adapt_input_conv(mw.shape[1], w)
    return sd


def _select_prefix(sd: dict[str, Tensor], prefix: str) -> tuple[dict[str, Tensor], int]:
    if not prefix or not any(k.startswith(prefix) for k in sd):
        return sd, 0
    kept = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return kept, len(sd) - len(kept)


def _mismatch_error(
    p: Path,
    target: str,
    layout: str,
    preset: EncoderPreset | None,
    missing: list[str],
    unexpected: list[str],
    shapes: list[str],
) -> CheckpointError:
    lines = [
        f"{p}: weights do not fit {target} (file layout: {layout}) ({len(missing)} missing, {len(unexpected)} "
        f"unexpected, {len(shapes)} shape mismatches)"
    ]
    if missing:
        lines.append(f"  missing in file: {_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected in file: {_listing(unexpected)}")
    if shapes:
        lines.append(f"  shape mismatch: {_listing(shapes)}")
    if preset is not None:
        expected = " or ".join(sorted({*preset.layouts, "timm"}))
        lines.append(
            f"  is this the file of another model? preset '{preset.name}' expects {preset.title} in the "
            f"{expected} layout ({' or '.join(preset.files)} from {preset.source})"
        )
    else:
        lines.append("  check the model name, img_size/patch size and model_kwargs against the checkpoint")
    return CheckpointError("\n".join(lines))


def load_backbone_weights(
    vit: VisionTransformer, path: str | Path, model_name: str = "model", preset: EncoderPreset | None = None
) -> LoadReport:
    """Load local pretrained weights into a timm ViT (with or without injected adapters), strictly.

    Adapter weights may be absent from the file (they keep their zero/near-identity init); every other
    key must match in name and shape after conversion.

    Args:
        vit: the model (adapters possibly injected).
        path: the weights file, or a folder holding the preset's file.
        model_name: the timm architecture (for messages).
        preset: the preset being loaded, if any (its ``key_prefix``; named in messages with where to get it).

    Returns:
        What was loaded (also logged).

    Raises:
        CheckpointError: the file is missing or unreadable, or does not fit, naming the file, the preset and
            the first missing, unexpected and shape-mismatched keys.
    """
    target = f"preset '{preset.name}' (timm {model_name})" if preset is not None else f"'{model_name}'"
    p = resolve_weights_file(path, preset)
    raw = read_state_dict(p, target)
    sd, outside = _select_prefix(raw, preset.key_prefix if preset is not None else "")
    layout = detect_layout(sd)
    sd, wrapped = strip_prefixes(sd, p, ANCHORS[layout])
    converted = to_timm(sd, layout, vit)
    sd = converted.state
    heads = [k for k in sd if k.startswith(CLASSIFIER_PREFIXES)]
    sd = {k: v for k, v in sd.items() if k not in heads}
    notes = list(converted.notes)
    sd = fit_to_model(sd, vit, p, notes)
    model_sd = vit.state_dict()
    missing = [k for k in model_sd if k not in sd and not is_adapter_key(k)]
    unexpected = [k for k in sd if k not in model_sd]
    shapes = [
        f"{k} file {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
        for k in sd
        if k in model_sd and sd[k].shape != model_sd[k].shape
    ]
    if missing or unexpected or shapes:
        raise _mismatch_error(p, target, layout, preset, missing, unexpected, shapes)
    vit.load_state_dict(sd, strict=False)
    report = LoadReport(
        path=str(p),
        target=target,
        layout=layout,
        file_tensors=len(raw),
        matched=len(sd),
        missing=sum(1 for k in model_sd if k not in sd),
        unexpected=0,
        ignored=outside + wrapped + len(converted.ignored) + len(heads),
        notes=notes,
    )
    logger.info("%s", report.summary())
    return report
