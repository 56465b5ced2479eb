"""Shared ViT encoder with per-modality adapters, local weights and grayscale input.

:class:`ViTEncoder` wraps a timm ``VisionTransformer`` (any size; tiny variants in tests), built from
a timm name or a named preset of a pretrained foundation model (:mod:`mammopath.models.presets`),
loads pretrained weights only from a local file (:mod:`mammopath.models.weights`: timm, Hugging Face
``transformers`` ViT/DINOv2 and facebookresearch DINOv2 layouts), injects one adapter set per
modality into every block (``mammopath.models.adapters``) and freezes the backbone by policy.
``forward(x, modality)`` routes through that modality's adapters and returns
``{"features", "tokens", "grid"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from mammopath.errors import ConfigError
from mammopath.models.adapters import ADAPTER_KINDS, inject_adapters, use_modality
from mammopath.models.presets import POOLINGS, get_preset
from mammopath.models.scaling import compiled, set_block_checkpointing
from mammopath.models.weights import LoadReport, load_backbone_weights

logger = logging.getLogger(__name__)

FREEZE_POLICIES = ("adapters", "last_k", "full")
GRAYSCALE_MODES = ("sum", "replicate")


def unknown_backbone(name: str) -> str:
    """The error for a ``model.backbone`` that is neither a preset nor a timm model: the presets, the nearest name."""
    import difflib

    from mammopath.models.presets import ENCODER_PRESETS

    vits = [m for m in timm.list_models() if m.startswith(("vit_", "deit", "eva", "beit"))]
    close = difflib.get_close_matches(name, [*ENCODER_PRESETS, *vits], n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return (
        f"model.backbone '{name}' is neither an encoder preset nor a timm model: {hint}"
        f"presets: {', '.join(ENCODER_PRESETS)} (`mammopath encoders`), or a timm ViT (timm.list_models('vit_*'))"
    )


def check_pretrained(backbone: str, freeze: str, checkpoint_path: str | None) -> None:
    """Refuse a frozen (or partly frozen) encoder that has no pretrained weights to keep frozen.

    With ``freeze`` other than ``full`` only the adapters (and perhaps the last blocks) train; without
    ``checkpoint_path`` the rest is a random network, and the run would quietly learn from random features.

    Raises:
        ConfigError: naming ``model.freeze`` / ``model.checkpoint_path`` and the two ways out.
    """
    if freeze == "full" or checkpoint_path:
        return
    preset = get_preset(backbone)
    encoder = f"--config experiments/encoders/{backbone}.yaml" if preset is not None else "an encoder preset"
    raise ConfigError(
        f"model.freeze={freeze} keeps '{backbone}' frozen but model.checkpoint_path is not set, so it would stay "
        f"randomly initialised: give its weights ({encoder} or --model.checkpoint_path=FILE; `mammopath encoders` "
        "lists the presets and where each file goes) or train the whole encoder with --model.freeze=full"
    )


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
        name: a preset name (:data:`~mammopath.models.presets.ENCODER_PRESETS`: ``uni``, ``virchow2``...,
            which fixes the timm architecture and its arguments) or a timm model name (a
            ``VisionTransformer``); built with ``pretrained=False``, ``num_classes=0``.
        img_size: input size the position embeddings are built for (int or ``(H, W)``).
        modalities: modality names; one adapter set each.
        in_chans: channels of the patch embedding (3 for RGB-pretrained weights).
        grayscale: how a 1-channel input meets a multi-channel patch embedding: ``"sum"`` convolves
            with the kernel summed over input channels (cheaper), ``"replicate"`` repeats the channel;
            both give the same result.
        checkpoint_path: local weights file (``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors``, or the
            folder holding a preset's file) in timm's or the preset vendor's key layout; never downloads.
        model_kwargs: extra ``timm.create_model`` arguments (``depth``, ``embed_dim``, ``class_token``...);
            merged over a preset's own arguments (a depth-reduced twin of a preset for tests).
        dynamic_img_size: accept any input size (multiple of the patch size); position embeddings
            are resampled on the fly. None: the preset's setting (False for a timm name).
        pooling: the image feature: ``"token"`` (timm's pooled pre-logits: the class token after the
            final norm, or the mean patch token for models without one) or ``"cls_mean"`` (the class
            token concatenated with the mean patch token, ``2 * embed_dim`` wide: Virchow's embedding).
            None: the preset's recommendation (``"token"`` for a timm name).
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
        preset: the :class:`~mammopath.models.presets.EncoderPreset` built, or None for a timm name.
        timm_name: the timm architecture.
        embed_dim: token width ``C``.
        feature_dim: width of ``features`` (``C``, or ``2C`` with ``pooling="cls_mean"``).
        load_report: what was loaded from ``checkpoint_path`` (None without one).
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
        dynamic_img_size: bool | None = None,
        pooling: str | None = None,
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
        user_kwargs = dict(model_kwargs or {})
        clash = sorted(
            set(user_kwargs)
            & {"pretrained", "num_classes", "img_size", "in_chans", "dynamic_img_size", "drop_path_rate"}
        )
        if clash:
            raise ConfigError(f"model_kwargs must not set {clash}; use the ViTEncoder arguments instead")
        preset = get_preset(name)
        if preset is None and not timm.is_model(name):
            raise ConfigError(unknown_backbone(name))
        timm_name = preset.timm_name if preset is not None else name
        kwargs = {**(preset.model_kwargs if preset is not None else {}), **user_kwargs}
        if dynamic_img_size is None:
            dynamic_img_size = preset.dynamic_img_size if preset is not None else False
        if pooling is None:
            pooling = preset.pooling if preset is not None else "token"
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {list(POOLINGS)}; got '{pooling}'")
        img = tuple(img_size) if isinstance(img_size, Sequence) else img_size
        what = f"preset '{name}' (timm '{timm_name}')" if preset is not None else f"timm model '{name}'"
        try:
            vit = timm.create_model(
                timm_name,
                pretrained=False,
                num_classes=0,
                img_size=img,
                in_chans=in_chans,
                dynamic_img_size=dynamic_img_size,
                drop_path_rate=drop_path_rate,
                **kwargs,
            )
        except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"cannot build {what} with {user_kwargs}: {exc}") from exc
        if not isinstance(vit, VisionTransformer):
            raise ConfigError(f"'{name}' is a {type(vit).__name__}; ViTEncoder needs a timm VisionTransformer")
        if pooling == "cls_mean" and vit.cls_token is None:
            raise ConfigError(f"pooling='cls_mean' needs a class token; {what} has none")
        ps = vit.patch_embed.patch_size
        if ps[0] != ps[1]:
            raise ConfigError(f"'{name}' has non-square patches {tuple(ps)}; only square patches are supported")

        self.name = name
        self.preset = preset
        self.timm_name = timm_name
        self.pooling = pooling
        self.vit = vit
        self.modalities = tuple(modalities)
        self.in_chans = in_chans
        self.grayscale = grayscale
        self.adapter_kind = adapter
        self.embed_dim = int(vit.embed_dim)
        self.feature_dim = self.embed_dim * (2 if pooling == "cls_mean" else 1)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.patch_size = int(ps[0])
        self.active_modality: str | None = None
        if grayscale == "sum" and in_chans > 1:
            vit.patch_embed.proj = ChannelSumConv2d.from_conv(vit.patch_embed.proj)
        view = inject_adapters(vit, self.modalities, adapter, **(adapter_kwargs or {}))
        # Not registered: the adapter modules are owned by the blocks (see inject_adapters).
        self.__dict__["_adapter_view"] = view
        self.load_report: LoadReport | None = None
        if checkpoint_path is not None:
            self.load_report = load_backbone_weights(vit, checkpoint_path, model_name=timm_name, preset=preset)
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
        set_block_checkpointing(self.vit, enable, owner=self)
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
            ``features`` ``(B, feature_dim)``: with ``pooling="token"`` timm's pooled pre-logits (CLS
            token after the final norm, or the mean of patch tokens + ``fc_norm`` for models without a
            class token); with ``"cls_mean"`` the CLS token and the mean patch token, concatenated;
            ``tokens`` ``(B, h*w, C)``: patch tokens after the final norm (prefix tokens removed;
            for ``fc_norm`` models, where ``norm`` is the identity, ``fc_norm`` is applied);
            ``grid``: ``tensor([h, w])`` (int64, CPU), the patch grid of this input.
        """
        self._check_modality(modality)
        x = self._to_model_channels(x)
        vit = self.vit
        self.active_modality = modality  # read by forward hooks on the blocks (MixStyle, style bank)
        try:
            with use_modality(vit, modality):
                t = self._features()(x)
        finally:
            self.active_modality = None
        grid = vit.patch_embed.dynamic_feat_size((int(x.shape[-2]), int(x.shape[-1])))
        return self._outputs(t, modality, grid)

    def _outputs(self, t: Tensor, modality: str, grid: tuple[int, int]) -> dict[str, Tensor]:
        vit = self.vit
        with use_modality(vit, modality):
            features = vit.forward_head(t, pre_logits=True)
        tokens = t[:, self.num_prefix_tokens :]
        if isinstance(vit.norm, nn.Identity) and not isinstance(vit.fc_norm, nn.Identity):
            tokens = vit.fc_norm(tokens)
        if self.pooling == "cls_mean":  # register tokens are neither the class token nor patches
            features = torch.cat([t[:, 0], tokens.mean(dim=1)], dim=-1)
        return {"features": features, "tokens": tokens, "grid": torch.tensor(grid)}

    def forward_from(self, tokens: Tensor, modality: str, layer: int, grid: tuple[int, int]) -> dict[str, Tensor]:
        """Finish a forward pass from the output of block ``layer`` (all tokens, prefix included).

        Runs only ``blocks[layer + 1:]``, the final norm and the pooling: what a test-time intervention on
        the tokens after ``layer`` needs (:class:`~mammopath.callbacks.tta.CausalTTA`). With the tokens a
        normal forward produced at ``layer``, the result equals that forward (tested).
        """
        self._check_modality(modality)
        vit = self.vit
        with use_modality(vit, modality):
            t = tokens
            for block in list(vit.blocks)[layer + 1 :]:
                t = block(t)
            t = vit.norm(t)
        return self._outputs(t, modality, grid)
