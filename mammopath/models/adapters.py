"""Per-modality adapters for timm Vision Transformers.

One shared ViT backbone serves mammograms and pathology; each modality gets its own small set of
adapter weights in every block, selected by an explicit *active modality* (never inferred from the
input). Three kinds are supported (algorithms.md §1):

- ``"adaptformer"`` (default): a parallel bottleneck MLP next to the block's MLP, fed the
  un-normalised residual stream, ``x_out = x' + MLP(LN2 x') + s * U relu(D x')``; ``U`` starts at
  zero so the adapted model starts exactly equal to the backbone.
- ``"houlsby"``: serial bottleneck adapters after the attention and the MLP sublayers
  (``x <- x + A(Attn(LN1 x))``, ``x <- x + A(MLP(LN2 x))``), near-identity at start.
- ``"lora"``: low-rank updates of the fused ``qkv`` projection (q and v slices by default),
  ``B`` zero-initialised so ``ΔW = 0`` at start.

For AdaptFormer and Houlsby, blocks are replaced by :class:`AdaptedBlock`, which adopts the timm
block's own sub-modules under the same names (``norm1``, ``attn``, ``ls1``, ...), so backbone
state-dict keys are unchanged, ``blk.attn`` stays reachable for attention hooks and
``blk.attn.fused_attn`` can still be toggled; for LoRA only ``blk.attn.qkv`` is replaced (by
:class:`LoRAQKV`, which keeps the Linear's keys). Adapter weights live inside the blocks
(``blocks.<i>.adapters.<modality>.*`` and ``blocks.<i>.attn.qkv.lora.<modality>.*``).

Routing: ``with use_modality(model, "mammo"): ...`` or ``set_active_modality(model, "mammo")``;
a forward through adapters with no active modality raises ``ConfigError``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from mammopath.errors import ConfigError

ADAPTER_KINDS = ("adaptformer", "houlsby", "lora", "none")


class AdaptFormerAdapter(nn.Module):
    """AdaptFormer parallel bottleneck: ``scale * up(dropout(relu(down(x))))``.

    ``down`` uses kaiming-uniform (a=√5), ``up`` and both biases start at zero, so the branch
    outputs exactly zero at initialisation and training starts from the backbone (Chen et al. 2022).
    """

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.0) -> None:
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Return the adapter branch (not added to ``x``)."""
        return self.scale * self.up(self.dropout(F.relu(self.down(x))))


class HoulsbyAdapter(nn.Module):
    """Houlsby serial bottleneck adapter: ``h + up(gelu(down(h)))``.

    Weights are drawn from a normal with std 1e-3 (truncated at 2 std, as adapter-bert) and biases
    are zero, so the adapter starts close to the identity.
    """

    def __init__(self, dim: int, bottleneck: int = 64) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        for lin in (self.down, self.up):
            nn.init.trunc_normal_(lin.weight, std=1e-3, a=-2e-3, b=2e-3)
            nn.init.zeros_(lin.bias)

    def forward(self, h: Tensor) -> Tensor:
        """Return ``h`` plus the bottleneck correction."""
        return h + self.up(F.gelu(self.down(h)))


class LoRAUpdate(nn.Module):
    """Low-rank factors of one modality for the targeted slices of a fused ``qkv`` projection.

    ``lora_A[t]`` (r x C_in) is kaiming-uniform, ``lora_B[t]`` (C x r) is zero, so the update
    ``(alpha / r) * B A`` is zero at start (Hu et al. 2022).
    """

    def __init__(self, in_features: int, slice_features: int, n_targets: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(n_targets, rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(n_targets, slice_features, rank))
        for t in range(n_targets):
            nn.init.kaiming_uniform_(self.lora_A.data[t], a=math.sqrt(5))

    def delta_weight(self) -> Tensor:
        """Return the per-target weight updates ``(T, C, C_in)``."""
        return self.scaling * torch.matmul(self.lora_B, self.lora_A)


class LoRAQKV(nn.Module):
    """A timm fused ``qkv`` Linear with per-modality LoRA updates on chosen slices.

    The original ``weight``/``bias`` Parameters are adopted under the same names, so state-dict keys
    (``...attn.qkv.weight``) stay those of timm. The active modality's update is added to the
    ``targets`` slices (any of ``"q"``, ``"k"``, ``"v"``); with no active modality set, forward
    raises instead of silently using the bare backbone.

    Args:
        qkv: the fused projection (``Linear(C, 3C)``) to wrap.
        modalities: one LoRA update per modality.
        rank: rank ``r`` of the update.
        alpha: scaling numerator; the update is multiplied by ``alpha / r``.
        targets: which of q, k, v get an update.
        dropout: dropout on the input of the low-rank path.
    """

    def __init__(
        self,
        qkv: nn.Linear,
        modalities: Sequence[str],
        rank: int = 8,
        alpha: float = 16.0,
        targets: Sequence[str] = ("q", "v"),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(qkv, nn.Linear) or qkv.out_features != 3 * qkv.in_features:
            raise ConfigError(f"LoRA needs a fused qkv nn.Linear(C, 3C); got {qkv!r}")
        bad = [t for t in targets if t not in ("q", "k", "v")]
        if bad or not targets:
            raise ConfigError(f"LoRA targets must be a non-empty subset of ('q', 'k', 'v'); got {list(targets)}")
        if rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1; got {rank}")
        self.in_features = qkv.in_features
        self.out_features = qkv.out_features
        self.weight = qkv.weight
        self.bias = qkv.bias
        self.target_index = tuple("qkv".index(t) for t in targets)
        self.rank = rank
        self.alpha = alpha
        self.lora_dropout = nn.Dropout(dropout)
        self.lora = nn.ModuleDict(
            {m: LoRAUpdate(self.in_features, self.in_features, len(self.target_index), rank, alpha) for m in modalities}
        )
        self.modalities = tuple(modalities)
        self.active_modality: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Apply ``W x + b`` plus the active modality's low-rank update on the targeted slices."""
        out = F.linear(x, self.weight, self.bias)
        upd = self.lora[_require_modality(self)]
        assert isinstance(upd, LoRAUpdate)
        h = self.lora_dropout(x)
        c = self.in_features
        pieces: list[Tensor] = [out.new_zeros(()).expand(*out.shape[:-1], c)] * 3
        for t, idx in enumerate(self.target_index):
            pieces[idx] = upd.scaling * F.linear(F.linear(h, upd.lora_A[t]), upd.lora_B[t])
        return out + torch.cat(pieces, dim=-1)

    def extra_repr(self) -> str:
        targets = "".join("qkv"[i] for i in self.target_index)
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}, {targets=}"


class AdaptedBlock(nn.Module):
    """A timm pre-LN ``Block`` with one adapter set per modality (AdaptFormer or Houlsby).

    The wrapped block's children are adopted under their own names, so the backbone's state-dict
    keys, ``blk.attn`` (hooks, ``fused_attn``), layer scale and drop path behave as in timm. The
    forward follows timm's ``Block.forward`` plus the adapter placement of ``kind``:

    - adaptformer: ``x' = x + dp1(ls1(attn(norm1 x)))``;
      ``x_out = x' + dp2(ls2(mlp(norm2 x'))) + adapter(x')`` (the adapter is not drop-pathed,
      as in the AdaptFormer code);
    - houlsby: ``x <- x + dp1(ls1(A_attn(attn(norm1 x))))``; ``x <- x + dp2(ls2(A_mlp(mlp(norm2 x))))``
      (the adapter follows the sublayer's output projection, before layer scale).
    """

    # Adopted from the timm block (declared for type checkers).
    norm1: nn.Module
    attn: nn.Module
    ls1: nn.Module
    drop_path1: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    ls2: nn.Module
    drop_path2: nn.Module

    def __init__(self, block: Block, kind: str, adapters: nn.ModuleDict) -> None:
        super().__init__()
        if kind not in ("adaptformer", "houlsby"):
            raise ConfigError(f"AdaptedBlock supports 'adaptformer' and 'houlsby' adapters; got '{kind}'")
        for name, child in block.named_children():
            self.add_module(name, child)
        self.kind = kind
        self.adapters = adapters
        self.modalities = tuple(adapters.keys())
        self.active_modality: str | None = None

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """Run the block with the active modality's adapters."""
        adapter = self.adapters[_require_modality(self)]
        h = self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)
        if self.kind == "houlsby":
            assert isinstance(adapter, nn.ModuleDict)
            h = adapter["attn"](h)
        x = x + self.drop_path1(self.ls1(h))
        m = self.mlp(self.norm2(x))
        if self.kind == "houlsby":
            assert isinstance(adapter, nn.ModuleDict)
            m = adapter["mlp"](m)
        out = x + self.drop_path2(self.ls2(m))
        if self.kind == "adaptformer":
            out = out + adapter(x)
        return out


def _require_modality(module: AdaptedBlock | LoRAQKV) -> str:
    mod = module.active_modality
    if mod is None:
        raise ConfigError(
            "no active modality is set for the adapters; wrap the call in "
            "`use_modality(model, '<modality>')` or call `set_active_modality` first"
        )
    if mod not in module.modalities:
        raise ConfigError(f"unknown modality '{mod}'; adapters exist for {list(module.modalities)}")
    return mod


def _routed_modules(module: nn.Module) -> Iterator[AdaptedBlock | LoRAQKV]:
    for m in module.modules():
        if isinstance(m, AdaptedBlock | LoRAQKV):
            yield m


def adapter_modalities(module: nn.Module) -> list[str]:
    """Return the modalities that have adapters anywhere inside ``module`` (sorted)."""
    names: set[str] = set()
    for m in _routed_modules(module):
        names.update(m.modalities)
    return sorted(names)


def get_active_modality(module: nn.Module) -> str | None:
    """Return the active modality of the first adapter-aware module inside ``module`` (or None)."""
    for m in _routed_modules(module):
        return m.active_modality
    return None


def set_active_modality(module: nn.Module, modality: str | None) -> None:
    """Route every adapter inside ``module`` (a timm ViT, a ``ViTEncoder``, a LightningModule...) to ``modality``.

    ``None`` clears the routing; the next forward through an adapted module then raises. A model
    without adapters (kind ``"none"``) has nothing to route and this is a no-op.

    Raises:
        ConfigError: if some adapter-aware module has no adapters for ``modality``.
    """
    routed = list(_routed_modules(module))
    if modality is not None:
        for m in routed:
            if modality not in m.modalities:
                raise ConfigError(f"unknown modality '{modality}'; adapters exist for {list(m.modalities)}")
    for m in routed:
        m.active_modality = modality


@contextmanager
def use_modality(module: nn.Module, modality: str) -> Iterator[None]:
    """Context manager: route the adapters inside ``module`` to ``modality``, then restore the previous routing."""
    previous = get_active_modality(module)
    set_active_modality(module, modality)
    try:
        yield
    finally:
        set_active_modality(module, previous)


def inject_adapters(
    vit: nn.Module, modalities: Sequence[str], kind: str = "adaptformer", **kwargs: Any
) -> nn.ModuleDict:
    """Insert one adapter set per modality into every block of a timm ``VisionTransformer``, in place.

    For ``"adaptformer"``/``"houlsby"`` every ``vit.blocks[i]`` is replaced by an :class:`AdaptedBlock`;
    for ``"lora"`` every ``blk.attn.qkv`` is replaced by :class:`LoRAQKV`; ``"none"`` changes nothing.
    Backbone state-dict keys are unchanged, so timm checkpoints load before or after injection.

    Args:
        vit: a timm ``VisionTransformer`` whose blocks are timm ``Block`` (pre-LN).
        modalities: modality names (valid Python identifiers, e.g. ``("mammo", "patho")``).
        kind: ``"adaptformer"``, ``"houlsby"``, ``"lora"`` or ``"none"``.
        **kwargs: passed to the adapter: ``bottleneck``, ``scale``, ``dropout`` (adaptformer);
            ``bottleneck`` (houlsby); ``rank``, ``alpha``, ``targets``, ``dropout`` (lora).

    Returns:
        A *view* ``{modality: ModuleList(per-block adapter modules)}`` (empty lists for ``"none"``).
        The modules are owned by the blocks; do not register the view as a sub-module of a model
        that also holds ``vit`` (its parameters would appear twice in the state dict).

    Raises:
        ConfigError: unknown kind, bad modality names, a model without timm ``Block`` blocks,
            adapters already injected, or unknown adapter options.
    """
    if kind not in ADAPTER_KINDS:
        raise ConfigError(f"unknown adapter kind '{kind}'; choose one of {list(ADAPTER_KINDS)}")
    modalities = list(modalities)
    if not modalities or len(set(modalities)) != len(modalities):
        raise ConfigError(f"modalities must be non-empty and distinct; got {modalities}")
    bad = [m for m in modalities if not m.isidentifier()]
    if bad:
        raise ConfigError(f"modality names must be identifiers (no dots or spaces); got {bad}")
    blocks = getattr(vit, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
        raise ConfigError(f"inject_adapters needs a timm VisionTransformer with `blocks`; got {type(vit).__name__}")
    if any(True for _ in _routed_modules(blocks)):
        raise ConfigError("adapters are already injected into this model")
    not_block = sorted({type(b).__name__ for b in blocks if not isinstance(b, Block)})
    if not_block:
        raise ConfigError(f"adapters support timm pre-LN `Block` only; this model has blocks of type {not_block}")
    allowed = {
        "adaptformer": {"bottleneck", "scale", "dropout"},
        "houlsby": {"bottleneck"},
        "lora": {"rank", "alpha", "targets", "dropout"},
        "none": set(),
    }[kind]
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigError(f"unknown options {unknown} for adapter kind '{kind}'; allowed: {sorted(allowed)}")

    view: dict[str, list[nn.Module]] = {m: [] for m in modalities}
    dim = getattr(vit, "embed_dim", None)
    if not isinstance(dim, int):
        raise ConfigError(f"cannot tell the token width of {type(vit).__name__} (no integer `embed_dim`)")
    for i, blk in enumerate(list(blocks)):
        assert isinstance(blk, Block)
        per_mod: dict[str, nn.Module] = {}
        if kind == "adaptformer":
            per_mod = {m: AdaptFormerAdapter(dim, **kwargs) for m in modalities}
        elif kind == "houlsby":
            per_mod = {
                m: nn.ModuleDict({"attn": HoulsbyAdapter(dim, **kwargs), "mlp": HoulsbyAdapter(dim, **kwargs)})
                for m in modalities
            }
        elif kind == "lora":
            base = blk.attn.qkv
            if not isinstance(base, nn.Linear):
                raise ConfigError(f"LoRA needs a fused qkv nn.Linear in block {i}; got {type(base).__name__}")
            qkv = LoRAQKV(base, modalities, **kwargs)
            blk.attn.qkv = qkv
            per_mod = {m: qkv.lora[m] for m in modalities}
        if kind in ("adaptformer", "houlsby"):
            blocks[i] = AdaptedBlock(blk, kind, nn.ModuleDict(per_mod))
        for m, mod in per_mod.items():
            view[m].append(mod)
    return nn.ModuleDict({m: nn.ModuleList(mods) for m, mods in view.items()})
