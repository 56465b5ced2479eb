"""Shared ViT encoder with per-modality adapters, local weights and grayscale input.

:class:`ViTEncoder` wraps a timm ``VisionTransformer`` (any size; tiny variants in tests), loads
pretrained weights only from a local file (timm/PyTorch ``.pth``/``.pt``/``.bin`` or
``.safetensors``; pathology foundation models such as UNI/Phikon-style ViTs load the same way),
injects one adapter set per modality into every block (``mammopath.models.adapters``) and freezes
the backbone by policy. ``forward(x, modality)`` routes through that modality's adapters and
returns ``{"features", "tokens", "grid"}``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from mammopath.errors import CheckpointError, ConfigError
from mammopath.models.adapters import ADAPTER_KINDS, inject_adapters, use_modality
from mammopath.models.scaling import compiled, set_block_checkpointing

logger = logging.getLogger(__name__)

FREEZE_POLICIES = ("adapters", "last_k", "full")
GRAYSCALE_MODES = ("sum", "replicate")
# Wrapper prefixes stripped from checkpoint keys (DDP, Lightning modules, our own ViTEncoder, open_clip trunks).
KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.", "vit.", "trunk.")
# Keys under which training scripts nest the state dict, tried in this order.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "teacher", "network")
CLASSIFIER_PREFIXES = ("head.", "head_dist.")
_ADAPTER_KEY = re.compile(r"\.(adapters|lora)\.")
_MAX_LISTED = 10


def _is_adapter_key(key: str) -> bool:
    return _ADAPTER_KEY.search(key) is not None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a tensor state dict from a local weights file, unwrapping common nesting.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)`` (no arbitrary code). Nested dicts under ``state_dict``,
    ``model``, ``module``, ``teacher``... (Lightning, DeiT/MAE, DINO checkpoints) are unwrapped.

    Raises:
        CheckpointError: the file is missing, unreadable or holds no tensor state dict.
    """
    p = Path(path)
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
            f"{p}: cannot read weights ({type(exc).__name__}: {exc}); save a plain state dict "
            "(torch.save(model.state_dict(), ...)) or a .safetensors file"
        ) from exc
    for _ in range(len(NESTED_KEYS)):
        if not isinstance(obj, Mapping) or all(isinstance(v, Tensor) for v in obj.values()):
            break
        nested = next((k for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = obj[nested]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p}: expected a state dict (mapping of names to tensors), found {type(obj).__name__}")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        keys = list(obj.keys())[:_MAX_LISTED]
        raise CheckpointError(f"{p}: no tensors found; top-level keys are {keys} (expected a model state dict)")
    return sd


def _strip_prefixes(sd: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Strip wrapper prefixes (``module.``, ``encoder.vit.``...), anchored on the patch-embed key."""
    anchor = "patch_embed.proj.weight"
    prefixes = {k[: -len(anchor)] for k in sd if k.endswith(anchor)}
    if len(prefixes) == 1:
        prefix = prefixes.pop()
        rest = prefix
        while rest:
            known = next((kp for kp in KNOWN_PREFIXES if rest.startswith(kp)), None)
            if known is None:
                return sd  # an unknown wrapper: leave keys alone, the mismatch report names them
            rest = rest[len(known) :]
        if prefix:
            kept = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            if len(kept) < len(sd):
                logger.info("%s: ignoring %d keys outside '%s'", path, len(sd) - len(kept), prefix)
            return kept
        return sd
    if not prefixes:  # no patch embedding at all: strip prefixes shared by every key
        changed = True
        while changed:
            changed = False
            for kp in KNOWN_PREFIXES:
                if sd and all(k.startswith(kp) for k in sd):
                    sd = {k[len(kp) :]: v for k, v in sd.items()}
                    changed = True
    return sd


def _fit_to_model(sd: dict[str, Tensor], vit: VisionTransformer, path: Path) -> dict[str, Tensor]:
    """Drop the classifier, resample ``pos_embed`` to the model grid and adapt input channels."""
    sd = {k: v for k, v in sd.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    pos = sd.get("pos_embed")
    if pos is not None and vit.pos_embed is not None and pos.ndim == 3 and pos.shape != vit.pos_embed.shape:
        n_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        old_n = pos.shape[1] - n_prefix
        side = math.isqrt(max(old_n, 0))
        if side * side == old_n and pos.shape[2] == vit.pos_embed.shape[2]:
            logger.info("%s: resampling pos_embed from %dx%d to %s", path, side, side, vit.patch_embed.grid_size)
            sd["pos_embed"] = resample_abs_pos_embed(
                pos, new_size=list(vit.patch_embed.grid_size), old_size=[side, side], num_prefix_tokens=n_prefix
            )
    w = sd.get("patch_embed.proj.weight")
    mw = vit.patch_embed.proj.weight
    same_kernel = w is not None and w.ndim == 4 and (w.shape[0], *w.shape[2:]) == (mw.shape[0], *mw.shape[2:])
    if w is not None and same_kernel and w.shape[1] != mw.shape[1]:
        logger.info("%s: adapting patch_embed from %d to %d input channels", path, w.shape[1], mw.shape[1])
        sd["patch_embed.proj.weight"] = adapt_input_conv(mw.shape[1], w)
    return sd


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f", ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return shown + more


def load_backbone_weights(vit: VisionTransformer, path: str | Path, model_name: str = "model") -> None:
    """Load local pretrained weights into a timm ViT (with or without injected adapters), strictly.

    Wrapper prefixes are stripped, the classifier (``head.*``) is dropped, ``pos_embed`` is
    resampled when the patch grid differs and RGB patch kernels are summed for ``in_chans=1``.
    Adapter weights may be absent from the file (they keep their zero/near-identity init); every
    other key must match in name and shape.

    Raises:
        CheckpointError: naming the file, with the first missing, unexpected and shape-mismatched keys.
    """
    p = Path(path)
    sd = _fit_to_model(_strip_prefixes(read_state_dict(p), p), vit, p)
    model_sd = vit.state_dict()
    missing = [k for k in model_sd if k not in sd and not _is_adapter_key(k)]
    unexpected = [k for k in sd if k not in model_sd]
    shapes = [
        f"{k} file {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
        for k in sd
        if k in model_sd and sd[k].shape != model_sd[k].shape
    ]
    if missing or unexpected or shapes:
        lines = [
            f"{p}: weights do not fit '{model_name}' ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(shapes)} shape mismatches)"
        ]
        if missing:
            lines.append(f"  missing in file: {_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected in file: {_listing(unexpected)}")
        if shapes:
            lines.append(f"  shape mismatch: {_listing(shapes)}")
        lines.append("  check the model name, img_size/patch size and model_kwargs against the checkpoint")
        raise CheckpointError("\n".join(lines))
    vit.load_state_dict(sd, strict=False)
    n_adapter = sum(1 for k in sd if _is_adapter_key(k))
    logger.info("%s: loaded %d tensors into '%s' (%d adapter tensors)", p, len(sd), model_name, n_adapter)


class ChannelSumConv2d(nn.Conv2d):
    """A patch-embedding convolution that also takes 1-channel input, convolved with the kernel summed over channels.

    Convolving a grayscale image with ``Σ_c W_c`` equals convolving its ``C``-fold copy with ``W``, at
    ``1/C`` of the cost. Parameters keep their names (``weight``, ``bias``), so checkpoints and timm's
    own ``forward_features`` are untouched; multi-channel input takes the ordinary path.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> ChannelSumConv2d:
        """The same convolution, sharing ``conv``'s parameters."""
        if conv.padding_mode != "zeros":
            raise ConfigError(f"grayscale='sum' needs a zero-padded patch embedding, got {conv.padding_mode!r}")
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)
        return new

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1 and self.in_channels > 1:
            weight = self.weight.sum(dim=1, keepdim=True)
            return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return super().forward(x)


class ViTEncoder(nn.Module):
    """A timm ViT shared by all modalities, with per-modality adapters in every block.

    Args:
        name: timm model name (a ``VisionTransformer``); built with ``pretrained=False``, ``num_classes=0``.
        img_size: input size the position embeddings are built for (int or ``(H, W)``).
        modalities: modality names; one adapter set each.
        in_chans: channels of the patch embedding (3 for RGB-pretrained weights).
        grayscale: how a 1-channel input meets a multi-channel patch embedding: ``"sum"`` convolves
            with the kernel summed over input channels (cheaper), ``"replicate"`` repeats the channel;
            both give the same result.
        checkpoint_path: local weights file (``.pth``/``.pt``/``.bin``/``.safetensors``); never downloads.
        model_kwargs: extra ``timm.create_model`` arguments (``depth``, ``embed_dim``, ``class_token``...).
        dynamic_img_size: accept any input size (multiple of the patch size); position embeddings
            are resampled on the fly.
        adapter: ``"adaptformer"``, ``"houlsby"``, ``"lora"`` or ``"none"``.
        adapter_kwargs: options of the adapter (``bottleneck``, ``scale``, ``rank``...).
        freeze: ``"adapters"``: only adapters train (backbone, final norm included, frozen; the
            AdaptFormer recipe); ``"last_k"``: adapters + the last ``trainable_blocks`` blocks +
            final norm(s) train; ``"full"``: everything trains.
        trainable_blocks: ``k`` for ``freeze="last_k"`` (0 <= k <= depth); must be 0 otherwise.
        drop_path_rate: stochastic depth of the backbone (still active when frozen, in train mode).
        grad_checkpointing: recompute each block in the backward pass instead of keeping its activations
            (:mod:`mammopath.models.scaling`: less memory, ~1/3 more compute).
        compile: ``torch.compile`` the ViT's ``forward_features``: ``True`` or ``torch.compile`` options.

    Attributes:
        vit: the timm model (blocks possibly wrapped by adapters).
        embed_dim: token width ``C``.
        num_prefix_tokens: class + register tokens.
        patch_size: patch side in pixels.
        modalities: the modality names.
    """

    def __init__(
        self,
        name: str = "vit_tiny_patch16_224",
        img_size: int | tuple[int, int] = 224,
        modalities: Sequence[str] = ("mammo", "patho"),
        in_chans: int = 3,
        grayscale: str = "sum",
        checkpoint_path: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        dynamic_img_size: bool = False,
        adapter: str = "adaptformer",
        adapter_kwargs: dict[str, Any] | None = None,
        freeze: str = "adapters",
        trainable_blocks: int = 0,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        compile: bool | dict[str, Any] = False,
    ) -> None:
        super().__init__()
        if grayscale not in GRAYSCALE_MODES:
            raise ConfigError(f"grayscale must be one of {list(GRAYSCALE_MODES)}; got '{grayscale}'")
        if freeze not in FREEZE_POLICIES:
            raise ConfigError(f"freeze must be one of {list(FREEZE_POLICIES)}; got '{freeze}'")
        if adapter not in ADAPTER_KINDS:
            raise ConfigError(f"adapter must be one of {list(ADAPTER_KINDS)}; got '{adapter}'")
        kwargs = dict(model_kwargs or {})
        clash = sorted(
            set(kwargs) & {"pretrained", "num_classes", "img_size", "in_chans", "dynamic_img_size", "drop_path_rate"}
        )
        if clash:
            raise ConfigError(f"model_kwargs must not set {clash}; use the ViTEncoder arguments instead")
        img = tuple(img_size) if isinstance(img_size, Sequence) else img_size
        try:
            vit = timm.create_model(
                name,
                pretrained=False,
                num_classes=0,
                img_size=img,
                in_chans=in_chans,
                dynamic_img_size=dynamic_img_size,
                drop_path_rate=drop_path_rate,
                **kwargs,
            )
        except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"cannot build timm model '{name}' with {kwargs}: {exc}") from exc
        if not isinstance(vit, VisionTransformer):
            raise ConfigError(f"'{name}' is a {type(vit).__name__}; ViTEncoder needs a timm VisionTransformer")
        ps = vit.patch_embed.patch_size
        if ps[0] != ps[1]:
            raise ConfigError(f"'{name}' has non-square patches {tuple(ps)}; only square patches are supported")

        self.name = name
        self.vit = vit
        self.modalities = tuple(modalities)
        self.in_chans = in_chans
        self.grayscale = grayscale
        self.adapter_kind = adapter
        self.embed_dim = int(vit.embed_dim)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.patch_size = int(ps[0])
        if grayscale == "sum" and in_chans > 1:
            vit.patch_embed.proj = ChannelSumConv2d.from_conv(vit.patch_embed.proj)
        view = inject_adapters(vit, self.modalities, adapter, **(adapter_kwargs or {}))
        # Not registered: the adapter modules are owned by the blocks (see inject_adapters).
        self.__dict__["_adapter_view"] = view
        if checkpoint_path is not None:
            load_backbone_weights(vit, checkpoint_path, model_name=name)
        self.freeze = freeze
        self.trainable_blocks = trainable_blocks
        self.apply_freeze(freeze, trainable_blocks)
        self.set_grad_checkpointing(grad_checkpointing)
        self.compile_options = compile

    def _features(self) -> Any:
        """``vit.forward_features``, compiled when asked (built once per process, never pickled or copied).

        Not a sub-module: the compiled callable wraps the ViT's own method, so names and checkpoints are unchanged.
        """
        fn = self.__dict__.get("_compiled_features")
        if fn is None:
            fn = compiled(self.vit.forward_features, self.compile_options)
            self.__dict__["_compiled_features"] = fn
        return fn

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_compiled_features", None)
        return state

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every block, recomputed with the right adapters (:mod:`~.scaling`)."""
        set_block_checkpointing(self.vit, enable)
        self.grad_checkpointing = enable

    @property
    def blocks(self) -> nn.Sequential:
        """The timm blocks (for forward hooks; ``blocks[i].attn`` is timm's Attention)."""
        return self.vit.blocks

    @property
    def adapters(self) -> nn.ModuleDict:
        """``{modality: ModuleList(per-block adapter modules)}``; a view, owned by the blocks."""
        view = self.__dict__["_adapter_view"]
        assert isinstance(view, nn.ModuleDict)
        return view

    def adapter_parameters(self, modality: str | None = None) -> list[nn.Parameter]:
        """Parameters of one modality's adapters, or of all adapters when ``modality`` is None."""
        mods = [modality] if modality is not None else list(self.modalities)
        return [p for m in mods for p in self.adapters[m].parameters()]

    def apply_freeze(self, freeze: str, trainable_blocks: int = 0) -> None:
        """Set ``requires_grad`` by policy (see the class docstring); callable again to change policy."""
        if freeze not in FREEZE_POLICIES:
            raise ConfigError(f"freeze must be one of {list(FREEZE_POLICIES)}; got '{freeze}'")
        depth = len(self.vit.blocks)
        if freeze == "last_k" and not 0 <= trainable_blocks <= depth:
            raise ConfigError(f"trainable_blocks must be in [0, {depth}] for '{self.name}'; got {trainable_blocks}")
        if freeze != "last_k" and trainable_blocks != 0:
            raise ConfigError(f"trainable_blocks={trainable_blocks} only applies to freeze='last_k' (got '{freeze}')")
        self.vit.requires_grad_(freeze == "full")
        if freeze == "last_k":
            for blk in list(self.vit.blocks)[depth - trainable_blocks :]:
                blk.requires_grad_(True)
            for mod in (self.vit.norm, self.vit.fc_norm, self.vit.attn_pool):
                if mod is not None:
                    mod.requires_grad_(True)
        for p in self.adapter_parameters():
            p.requires_grad_(True)
        self.freeze, self.trainable_blocks = freeze, trainable_blocks
        table = ", ".join(f"{c}: {tr:,}/{tot:,}" for c, tot, tr in self.parameter_table())
        logger.info(
            "ViTEncoder %s freeze=%s: trainable %.2f%% (%s)", self.name, freeze, 100 * self.trainable_fraction(), table
        )

    def parameter_table(self) -> list[tuple[str, int, int]]:
        """Rows ``(component, total params, trainable params)``: ``backbone`` then ``adapters/<modality>``."""
        adapter_ids = {id(p) for p in self.adapter_parameters()}
        backbone = [p for p in self.vit.parameters() if id(p) not in adapter_ids]
        rows = [("backbone", sum(p.numel() for p in backbone), sum(p.numel() for p in backbone if p.requires_grad))]
        for m in self.modalities:
            ps = self.adapter_parameters(m)
            rows.append((f"adapters/{m}", sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad)))
        return rows

    def trainable_fraction(self) -> float:
        """Trainable / total parameters of the encoder (backbone + all adapters)."""
        params = list(self.parameters())
        total = sum(p.numel() for p in params)
        return sum(p.numel() for p in params if p.requires_grad) / max(total, 1)

    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ConfigError(f"unknown modality '{modality}'; this encoder has {list(self.modalities)}")

    @contextmanager
    def use_modality(self, modality: str) -> Iterator[None]:
        """Route the adapters to ``modality`` for direct calls to ``self.vit`` (e.g. ``forward_intermediates``)."""
        self._check_modality(modality)
        with use_modality(self.vit, modality):
            yield

    def _to_model_channels(self, x: Tensor) -> Tensor:
        """The input as the patch embedding takes it (grayscale ``replicate`` repeats the channel)."""
        if x.ndim != 4:
            raise ConfigError(f"ViTEncoder expects (B, C, H, W) input; got shape {tuple(x.shape)}")
        c = x.shape[1]
        if c == self.in_chans:
            return x
        if c == 1:
            # "sum": ChannelSumConv2d convolves the single channel with the summed kernel
            return x.expand(-1, self.in_chans, -1, -1) if self.grayscale == "replicate" else x
        raise ConfigError(f"input has {c} channels but the encoder expects {self.in_chans} (or 1 for grayscale)")

    def forward(self, x: Tensor, modality: str) -> dict[str, Tensor]:
        """Encode a batch of one modality through timm's public ``forward_features`` / ``forward_head``.

        Args:
            x: images ``(B, C, H, W)``; ``C`` = ``in_chans``, or 1 for grayscale mammograms.
            modality: which adapter set to use (one of ``self.modalities``).

        Returns:
            ``features`` ``(B, C)``: timm's pooled pre-logits (CLS token after the final norm, or
            the mean of patch tokens + ``fc_norm`` for models without a class token);
            ``tokens`` ``(B, h*w, C)``: patch tokens after the final norm (prefix tokens removed;
            for ``fc_norm`` models, where ``norm`` is the identity, ``fc_norm`` is applied);
            ``grid``: ``tensor([h, w])`` (int64, CPU), the patch grid of this input.
        """
        self._check_modality(modality)
        x = self._to_model_channels(x)
        vit = self.vit
        with use_modality(vit, modality):
            t = self._features()(x)
            features = vit.forward_head(t, pre_logits=True)
        h, w = vit.patch_embed.dynamic_feat_size((int(x.shape[-2]), int(x.shape[-1])))
        tokens = t[:, self.num_prefix_tokens :]
        if isinstance(vit.norm, nn.Identity) and not isinstance(vit.fc_norm, nn.Identity):
            tokens = vit.fc_norm(tokens)
        return {"features": features, "tokens": tokens, "grid": torch.tensor([h, w])}
