"""Named pretrained encoders: one explicit registry of what each foundation model needs.

``backbone: uni`` (or any name of :data:`ENCODER_PRESETS`) builds the timm architecture the vendor
trained, with its exact extra arguments, reads its weight file in the vendor's own key layout
(:mod:`mammopath.models.layouts`), reports what was loaded, and carries the normalization the
weights were trained with into every checkpoint. A plain timm name still works as before.

Nothing is downloaded: each preset says where the user obtains the weights under their licence
and which file to point ``model.checkpoint_path`` at. Sources for every value are in
``docs/encoders.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from timm.layers import SwiGLUPacked
from torch import nn

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
#: timm's "inception" constants, used by the Google/augreg ImageNet ViTs (and by MaMA).
HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
POOLINGS = ("token", "cls_mean")


@dataclass(frozen=True)
class EncoderPreset:
    """What it takes to rebuild and load one pretrained ViT.

    Attributes:
        name: the ``backbone:`` value.
        title: human name with the architecture (``"UNI (ViT-L/16)"``).
        domain: what it was pretrained on: ``pathology``, ``mammography`` or ``natural images``.
        timm_name: the timm architecture.
        model_kwargs: the exact extra ``timm.create_model`` arguments of the vendor's model
            (a config's ``model.model_kwargs`` is merged over them, e.g. for a depth-reduced twin).
        img_size: the input size the weights were trained at (position embeddings are resampled
            to ``data.image_size`` on load).
        dynamic_img_size: the vendor's setting (any input size; position embeddings resampled on the fly).
        layouts: key layouts the vendor ships (``timm``, ``hf_vit``, ``hf_dinov2``, ``meta_dinov2``);
            a timm-layout state dict of the same architecture is always accepted too.
        files: the weight files the vendor ships, in order of preference (``checkpoint_path`` may
            name one of them or the folder holding it).
        key_prefix: keys of the encoder inside a larger checkpoint (a CLIP-style model), or ``""``.
        normalization: per-channel ``mean``/``std`` the weights were trained with.
        normalization_modalities: the modalities that normalization applies to (the preset's wins
            over the datamodule's there; see ``MammoPathModule``).
        prefix_tokens: class + register tokens in front of the patch tokens.
        register_tokens: register tokens among them.
        embed_dim: token width.
        pooling: image feature the vendor recommends: ``token`` (the class token, timm's pre-logits)
            or ``cls_mean`` (class token concatenated with the mean patch token: width ``2 * embed_dim``).
        licence: licence and access terms, in short.
        source: where the weights are published.
        obtain: how a user gets the file.
    """

    name: str
    title: str
    domain: str
    timm_name: str
    model_kwargs: MappingProxyType[str, Any]
    img_size: int
    dynamic_img_size: bool
    layouts: tuple[str, ...]
    files: tuple[str, ...]
    normalization: MappingProxyType[str, tuple[float, ...]]
    normalization_modalities: tuple[str, ...]
    prefix_tokens: int
    register_tokens: int
    embed_dim: int
    licence: str
    source: str
    obtain: str
    key_prefix: str = ""
    pooling: str = "token"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def normalization_stats(self) -> dict[str, list[float]]:
        """``{"mean": [...], "std": [...]}`` as plain lists (the form ``MammoPathModule`` takes)."""
        return {"mean": list(self.normalization["mean"]), "std": list(self.normalization["std"])}

    @property
    def default_location(self) -> str:
        """Where the shipped ``experiments/encoders/<name>.yaml`` expects the weights."""
        return f"weights/{self.name}/{self.files[0]}"

    def where_to_get(self) -> str:
        """One sentence for error messages: which file, where to put it, where to obtain it."""
        return (
            f"preset '{self.name}' ({self.title}) reads {' or '.join(self.files)}; put it at "
            f"{self.default_location} or set model.checkpoint_path. Obtain it from {self.source} "
            f"({self.obtain}; licence: {self.licence})"
        )


def _preset(**kwargs: Any) -> EncoderPreset:
    kwargs["model_kwargs"] = MappingProxyType(dict(kwargs.get("model_kwargs", {})))
    norm = kwargs["normalization"]
    kwargs["normalization"] = MappingProxyType({k: tuple(norm[k]) for k in ("mean", "std")})
    kwargs["notes"] = tuple(kwargs.get("notes", ()))
    return EncoderPreset(**kwargs)


_GATED_MAHMOOD = "gated on Hugging Face: request access with an institutional e-mail, then download"
_PRESETS = [
    _preset(
        name="uni",
        title="UNI (ViT-L/16)",
        domain="pathology",
        timm_name="vit_large_patch16_224",
        model_kwargs={"init_values": 1e-5},
        img_size=224,
        dynamic_img_size=True,
        layouts=("timm",),
        files=("pytorch_model.bin",),
        normalization=IMAGENET,
        normalization_modalities=("patho",),
        prefix_tokens=1,
        register_tokens=0,
        embed_dim=1024,
        licence="CC-BY-NC-ND-4.0, non-commercial research use",
        source="https://huggingface.co/MahmoodLab/UNI",
        obtain=_GATED_MAHMOOD,
    ),
    _preset(
        name="uni2",
        title="UNI2-h (ViT-H/14, 8 registers)",
        domain="pathology",
        timm_name="vit_giant_patch14_224",
        model_kwargs={
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "embed_dim": 1536,
            "init_values": 1e-5,
            "mlp_ratio": 2.66667 * 2,
            "mlp_layer": SwiGLUPacked,
            "act_layer": nn.SiLU,
            "reg_tokens": 8,
            "no_embed_class": True,
        },
        img_size=224,
        dynamic_img_size=True,
        layouts=("timm",),
        files=("pytorch_model.bin",),
        normalization=IMAGENET,
        normalization_modalities=("patho",),
        prefix_tokens=9,
        register_tokens=8,
        embed_dim=1536,
        licence="CC-BY-NC-ND-4.0 (UNI family terms), non-commercial research use",
        source="https://huggingface.co/MahmoodLab/UNI2-h",
        obtain=_GATED_MAHMOOD,
        notes=("timm architecture vit_giant_patch14_224 with width, depth and heads overridden (a ViT-H-sized model)",),
    ),
    _preset(
        name="phikon_v2",
        title="Phikon-v2 (ViT-L/16, DINOv2)",
        domain="pathology",
        timm_name="vit_large_patch16_224",
        model_kwargs={"init_values": 1e-5},
        img_size=224,
        dynamic_img_size=True,
        layouts=("hf_dinov2",),
        files=("model.safetensors",),
        normalization=IMAGENET,
        normalization_modalities=("patho",),
        prefix_tokens=1,
        register_tokens=0,
        embed_dim=1024,
        licence="Owkin non-commercial licence",
        source="https://huggingface.co/owkin/phikon-v2",
        obtain="public on Hugging Face: download model.safetensors (the transformers Dinov2Model weights)",
        notes=(
            "Hugging Face transformers Dinov2Model keys are remapped to timm (query/key/value fused into qkv)",
            "init_values only creates the layer-scale parameters; their values come from the file",
        ),
    ),
    _preset(
        name="virchow2",
        title="Virchow2 (ViT-H/14, 4 registers)",
        domain="pathology",
        timm_name="vit_huge_patch14_224",
        model_kwargs={
            "init_values": 1e-5,
            "mlp_ratio": 5.3375,
            "mlp_layer": SwiGLUPacked,
            "act_layer": nn.SiLU,
            "reg_tokens": 4,
        },
        img_size=224,
        dynamic_img_size=True,
        layouts=("timm",),
        files=("pytorch_model.bin", "model.safetensors"),
        normalization=IMAGENET,
        normalization_modalities=("patho",),
        prefix_tokens=5,
        register_tokens=4,
        embed_dim=1280,
        pooling="cls_mean",
        licence="CC-BY-NC-ND-4.0, non-commercial research use",
        source="https://huggingface.co/paige-ai/Virchow2",
        obtain="gated on Hugging Face: accept the terms with an institutional e-mail, then download",
        notes=("the vendor's embedding is the class token concatenated with the mean patch token (2560 wide)",),
    ),
    _preset(
        name="gigapath",
        title="Prov-GigaPath tile encoder (ViT-g/16)",
        domain="pathology",
        timm_name="vit_giant_patch14_dinov2",
        model_kwargs={
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-5,
            "mlp_ratio": 5.33334,
        },
        img_size=224,
        dynamic_img_size=False,
        layouts=("timm",),
        files=("pytorch_model.bin",),
        normalization=IMAGENET,
        normalization_modalities=("patho",),
        prefix_tokens=1,
        register_tokens=0,
        embed_dim=1536,
        licence="Apache-2.0 model card; the access form restricts use to non-commercial research",
        source="https://huggingface.co/prov-gigapath/prov-gigapath",
        obtain="gated on Hugging Face: accept the conditions, then download",
        notes=("timm architecture vit_giant_patch14_dinov2 with patch size 16 (SwiGLU MLP, layer scale)",),
    ),
    _preset(
        name="h_optimus_0",
        title="H-optimus-0 (ViT-g/14, 4 registers)",
        domain="pathology",
        timm_name="vit_giant_patch14_reg4_dinov2",
        model_kwargs={"init_values": 1e-5},
        img_size=224,
        dynamic_img_size=False,
        layouts=("timm",),
        files=("pytorch_model.bin", "model.safetensors"),
        normalization={"mean": [0.707223, 0.578729, 0.703617], "std": [0.211883, 0.230117, 0.177517]},
        normalization_modalities=("patho",),
        prefix_tokens=5,
        register_tokens=4,
        embed_dim=1536,
        licence="Apache-2.0",
        source="https://huggingface.co/bioptimus/H-optimus-0",
        obtain="gated on Hugging Face: accept the terms, then download",
    ),
    _preset(
        name="mama",
        title="MaMA mammography CLIP image encoder (DINOv2 ViT-B/14, 4 registers)",
        domain="mammography",
        timm_name="vit_base_patch14_reg4_dinov2",
        model_kwargs={},
        img_size=518,
        dynamic_img_size=True,
        layouts=("meta_dinov2",),
        files=("mama.ckpt",),
        key_prefix="img_encoder_q.model.",
        normalization=HALF,
        normalization_modalities=("mammo",),
        prefix_tokens=5,
        register_tokens=4,
        embed_dim=768,
        licence="code Apache-2.0; weights trained on EMBED and bound by the EMBED data-use terms",
        source="https://github.com/XYPB/MaMA",
        obtain=(
            "the authors paused weight sharing in April 2025 after the EMBED licence change: apply for EMBED "
            "access and pre-train with their code, or use a copy you are entitled to; their Lightning checkpoint "
            "holds the image encoder under img_encoder_q.model"
        ),
        notes=("facebookresearch/dinov2 key layout (register_tokens, mask_token) converted to timm",),
    ),
    _preset(
        name="vit_small",
        title="ViT-S/16 ImageNet-21k→1k (augreg)",
        domain="natural images",
        timm_name="vit_small_patch16_224",
        model_kwargs={},
        img_size=224,
        dynamic_img_size=False,
        layouts=("timm", "hf_vit"),
        files=("model.safetensors", "pytorch_model.bin"),
        normalization=HALF,
        normalization_modalities=("mammo", "patho"),
        prefix_tokens=1,
        register_tokens=0,
        embed_dim=384,
        licence="Apache-2.0",
        source="https://huggingface.co/timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
        obtain="public on Hugging Face: download model.safetensors",
    ),
    _preset(
        name="vit_base",
        title="ViT-B/16 ImageNet-21k→1k (augreg2)",
        domain="natural images",
        timm_name="vit_base_patch16_224",
        model_kwargs={},
        img_size=224,
        dynamic_img_size=False,
        layouts=("timm", "hf_vit"),
        files=("model.safetensors", "pytorch_model.bin"),
        normalization=HALF,
        normalization_modalities=("mammo", "patho"),
        prefix_tokens=1,
        register_tokens=0,
        embed_dim=768,
        licence="Apache-2.0",
        source="https://huggingface.co/timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
        obtain="public on Hugging Face: download model.safetensors",
    ),
    _preset(
        name="vit_large",
        title="ViT-L/16 ImageNet-21k→1k (augreg)",
        domain="natural images",
        timm_name="vit_large_patch16_224",
        model_kwargs={},
        img_size=224,
        dynamic_img_size=False,
        layouts=("timm", "hf_vit"),
        files=("model.safetensors", "pytorch_model.bin"),
        normalization=HALF,
        normalization_modalities=("mammo", "patho"),
        prefix_tokens=1,
        register_tokens=0,
        embed_dim=1024,
        licence="Apache-2.0",
        source="https://huggingface.co/timm/vit_large_patch16_224.augreg_in21k_ft_in1k",
        obtain="public on Hugging Face: download model.safetensors",
    ),
]

#: Every named encoder, by its ``backbone:`` value (the one registry; nothing else switches on names).
ENCODER_PRESETS: MappingProxyType[str, EncoderPreset] = MappingProxyType({p.name: p for p in _PRESETS})


def get_preset(name: str) -> EncoderPreset | None:
    """The preset called ``name``, or None when ``name`` is a plain timm architecture."""
    return ENCODER_PRESETS.get(name)
