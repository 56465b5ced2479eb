"""Task heads on encoder outputs: classification, weak localisation and ordinal grading.

- :class:`ClassificationHead`: binary malignancy logit plus optional extra multi-class outputs
  (e.g. BACH 4-class).
- :class:`LocalizationHead`: a score per patch token (``s_n = wᵀ LN(t_n)``), a heatmap and an
  image logit by top-k mean or attention-MIL pooling (algorithms.md §7); trained by masks where a
  sample has one and by its image label otherwise (:func:`localization_loss`).
- :class:`GradingHead`: ordinal CORAL/CORN outputs, one set per grade scheme (BI-RADS, BACH,
  CAMELYON17 pN...), with :func:`grading_loss`, :func:`predict_grade`, :func:`grade_probabilities`.

Missing labels are masked out, never imputed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from mammopath.errors import ConfigError

ORDINAL_METHODS = ("corn", "coral")
POOLINGS = ("topk", "attention")


def _zero_with_grad(*tensors: Tensor) -> Tensor:
    """A scalar 0 connected to the graph of ``tensors`` (so ``backward()`` works and DDP sees the params)."""
    return sum((t.sum() * 0.0 for t in tensors), start=torch.zeros((), device=tensors[0].device))


def _check_key(name: str, what: str) -> None:
    if not name.isidentifier():
        raise ConfigError(f"{what} name '{name}' must be an identifier (letters, digits, underscores)")


class ClassificationHead(nn.Module):
    """Linear binary malignancy logit plus optional extra multi-class outputs.

    Args:
        in_dim: feature width.
        extra_outputs: ``{name: number of classes}``, e.g. ``{"bach4": 4}``.
        dropout: dropout on the features before every output.
    """

    def __init__(self, in_dim: int, extra_outputs: dict[str, int] | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        extra = dict(extra_outputs or {})
        for name, k in extra.items():
            _check_key(name, "extra output")
            if name == "logit" or k < 2:
                raise ConfigError(f"extra output '{name}' needs a name other than 'logit' and >= 2 classes; got {k}")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, 1)
        self.extra = nn.ModuleDict({name: nn.Linear(in_dim, k) for name, k in extra.items()})

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Return ``{"logit": (B,), <name>: (B, K) for each extra output}``."""
        h = self.dropout(features)
        out = {"logit": self.fc(h).squeeze(-1)}
        for name, lin in self.extra.items():
            out[name] = lin(h)
        return out


def _grid_hw(grid: Tensor | Sequence[int]) -> tuple[int, int]:
    vals = grid.tolist() if isinstance(grid, Tensor) else list(grid)
    if len(vals) != 2:
        raise ConfigError(f"grid must be (h, w); got {vals}")
    return int(vals[0]), int(vals[1])


class LocalizationHead(nn.Module):
    """Patch-token scores → heatmap and image logit (MIL).

    Each patch token gets a logit ``s_n = wᵀ LN(t_n) + b``. The image logit pools them: ``"topk"``
    is the mean of the ``k = max(1, ceil(topk_ratio * N))`` largest (GMIC); ``"attention"`` is
    ``Σ a_n s_n`` with gated attention ``a = softmax_n(vᵀ(tanh(V h_n) ⊙ σ(U h_n)))`` on
    ``h_n = LN(t_n)`` (Ilse et al. 2018), so the image logit stays on the patch-logit scale.

    Args:
        in_dim: token width.
        pooling: ``"topk"`` or ``"attention"``.
        topk_ratio: fraction of patches averaged by top-k pooling.
        hidden: width of the attention-MIL gate.
    """

    def __init__(self, in_dim: int, pooling: str = "topk", topk_ratio: float = 0.1, hidden: int = 64) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {list(POOLINGS)}; got '{pooling}'")
        if not 0.0 < topk_ratio <= 1.0:
            raise ConfigError(f"topk_ratio must be in (0, 1]; got {topk_ratio}")
        self.pooling = pooling
        self.topk_ratio = topk_ratio
        self.norm = nn.LayerNorm(in_dim)
        self.score = nn.Linear(in_dim, 1)
        if pooling == "attention":
            self.attn_v = nn.Linear(in_dim, hidden)
            self.attn_u = nn.Linear(in_dim, hidden)
            self.attn_w = nn.Linear(hidden, 1)

    def forward(
        self, tokens: Tensor, grid: Tensor | Sequence[int], image_size: Tensor | Sequence[int]
    ) -> dict[str, Tensor]:
        """Score patch tokens.

        Args:
            tokens: patch tokens ``(B, N, C)`` (no prefix tokens), ``N = h * w``.
            grid: the patch grid ``(h, w)``.
            image_size: ``(H, W)`` of the heatmap (the input image size).

        Returns:
            ``patch_logits`` ``(B, h, w)``; ``heatmap`` ``(B, H, W)``: sigmoid of the patch logits,
            bilinearly upsampled; ``image_logit`` ``(B,)``; with attention pooling also
            ``attention`` ``(B, h, w)``, the MIL weights.
        """
        b, n, _ = tokens.shape
        h, w = _grid_hw(grid)
        big_h, big_w = _grid_hw(image_size)
        if h * w != n:
            raise ConfigError(f"grid {h}x{w} does not match {n} patch tokens")
        z = self.norm(tokens)
        s = self.score(z).squeeze(-1)  # (B, N)
        out: dict[str, Tensor] = {"patch_logits": s.view(b, h, w)}
        probs = torch.sigmoid(s).view(b, 1, h, w)
        out["heatmap"] = F.interpolate(probs, size=(big_h, big_w), mode="bilinear", align_corners=False)[:, 0]
        if self.pooling == "topk":
            k = max(1, math.ceil(self.topk_ratio * n))
            out["image_logit"] = s.topk(k, dim=1).values.mean(dim=1)
        else:
            gate = torch.tanh(self.attn_v(z)) * torch.sigmoid(self.attn_u(z))
            a = torch.softmax(self.attn_w(gate).squeeze(-1), dim=1)
            out["attention"] = a.view(b, h, w)
            out["image_logit"] = (a * s).sum(dim=1)
        return out

    @staticmethod
    def localization_loss(out: dict[str, Tensor], mask: Tensor | None, has_mask: Tensor, label: Tensor) -> Tensor:
        """See :func:`localization_loss`."""
        return localization_loss(out, mask, has_mask, label)

    @staticmethod
    def box_from_heatmap(heatmap: Tensor, threshold_ratio: float = 0.5) -> Tensor:
        """See :func:`box_from_heatmap`."""
        return box_from_heatmap(heatmap, threshold_ratio)


def localization_loss(out: dict[str, Tensor], mask: Tensor | None, has_mask: Tensor, label: Tensor) -> Tensor:
    """Mask-supervised where a mask exists, MIL-supervised by the image label otherwise.

    Per contributing sample the loss is either the mean pixel BCE between the patch logits and the
    mask area-averaged onto the patch grid (``has_mask``), or the BCE of ``image_logit`` against the
    binary image label (no mask, label present). The result is the mean over contributing samples;
    samples with neither are ignored. Returns a graph-connected 0 when nothing contributes.

    Args:
        out: :class:`LocalizationHead` output (``patch_logits`` ``(B, h, w)``, ``image_logit`` ``(B,)``).
        mask: ``(B, H, W)`` (or ``(B, 1, H, W)``) in [0, 1], or None when no sample has one.
        has_mask: ``(B,)`` bool.
        label: ``(B,)`` float in {0, 1}; NaN or negative = missing.
    """
    logits = out["patch_logits"]
    image_logit = out["image_logit"]
    b, h, w = logits.shape
    has_mask = has_mask.to(device=logits.device, dtype=torch.bool).view(-1)
    label = label.to(device=logits.device, dtype=logits.dtype).view(-1)
    if has_mask.numel() != b or label.numel() != b:
        raise ConfigError(f"has_mask and label need {b} entries; got {has_mask.numel()} and {label.numel()}")
    terms: list[Tensor] = []
    if bool(has_mask.any()):
        if mask is None:
            raise ConfigError("has_mask is True for some samples but mask is None")
        m = mask.to(device=logits.device, dtype=logits.dtype)
        if m.ndim == 3:
            m = m.unsqueeze(1)
        if m.ndim != 4 or m.shape[0] != b or m.shape[1] != 1:
            raise ConfigError(f"mask must be (B, H, W) with B={b}; got {tuple(mask.shape)}")
        target = F.adaptive_avg_pool2d(m[has_mask], (h, w))[:, 0]  # area average per patch
        pix = F.binary_cross_entropy_with_logits(logits[has_mask], target.clamp(0.0, 1.0), reduction="none")
        terms.append(pix.flatten(1).mean(dim=1))
    weak = ~has_mask & torch.isfinite(label) & (label >= 0)
    if bool(weak.any()):
        terms.append(F.binary_cross_entropy_with_logits(image_logit[weak], label[weak], reduction="none"))
    if not terms:
        return _zero_with_grad(logits, image_logit)
    return torch.cat(terms).mean()


def box_from_heatmap(heatmap: Tensor, threshold_ratio: float = 0.5) -> Tensor:
    """Box around the largest connected region of ``heatmap >= threshold_ratio * max``.

    Regions are 8-connected (``scipy.ndimage.label``); ties in area go to the region with the
    larger heatmap mass.

    Args:
        heatmap: ``(H, W)`` non-negative scores (e.g. :class:`LocalizationHead` ``heatmap[i]``).
        threshold_ratio: threshold as a fraction of the heatmap maximum.

    Returns:
        ``(4,)`` float ``[x0, y0, x1, y1]`` in pixel-edge coordinates (``x1``/``y1`` exclusive:
        a region covering columns 3..5 gives ``x0=3, x1=6``), on the heatmap's device.
    """
    if heatmap.ndim != 2:
        raise ConfigError(f"box_from_heatmap expects an (H, W) heatmap; got shape {tuple(heatmap.shape)}")
    hm = heatmap.detach().float().cpu().numpy()
    above = hm >= threshold_ratio * hm.max()
    labels, n = ndimage.label(above, structure=np.ones((3, 3), dtype=int))
    idx = np.arange(1, n + 1)
    areas = ndimage.sum_labels(np.ones_like(hm), labels, idx)
    mass = ndimage.sum_labels(hm, labels, idx)
    best = int(idx[np.lexsort((mass, areas))[-1]])
    ys, xs = np.nonzero(labels == best)
    box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return torch.tensor(box, dtype=torch.float32, device=heatmap.device)


class CoralLayer(nn.Module):
    """CORAL output: one shared weight vector and ``K-1`` biases, initialised descending ``(K-1..1)/(K-1)``."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, 1, bias=False)
        self.bias = nn.Parameter(torch.arange(num_classes - 1, 0, -1, dtype=torch.float32) / (num_classes - 1))

    def forward(self, x: Tensor) -> Tensor:
        """Return the ``(B, K-1)`` level logits."""
        return self.fc(x) + self.bias


def _levels(y: Tensor, k_minus_1: int) -> Tensor:
    """Ordinal level targets ``y_k = 1[y > k]``, ``(B, K-1)``."""
    return (y.unsqueeze(1) > torch.arange(k_minus_1, device=y.device).unsqueeze(0)).float()


def grading_loss(
    logits_by_scheme: dict[str, Tensor], grade: Tensor, scheme_idx: Sequence[str], method: str = "corn"
) -> Tensor:
    """Ordinal loss over all schemes, masking samples with no grade.

    CORAL: ``-Σ_k [y_k log σ(g_k) + (1 - y_k) log(1 - σ(g_k))]`` with ``y_k = 1[y > k]``, averaged
    over graded samples (coral-pytorch ``coral_loss``). CORN: task ``k`` is trained only on samples
    with ``y > k - 1`` (target ``1[y > k]``), the summed BCE divided by the number of
    (sample, task) pairs used (coral-pytorch ``corn_loss``). Pooled over schemes with the same
    normalisation.

    Args:
        logits_by_scheme: :class:`GradingHead` output; each ``(B, K-1)``.
        grade: ``(B,)`` long, 0-based grade within the sample's scheme; ``-1`` = missing.
        scheme_idx: scheme name per sample (``""`` = none).
        method: ``"corn"`` or ``"coral"``.

    Returns:
        Scalar loss; a graph-connected 0 when no sample has a grade.

    Raises:
        ConfigError: unknown scheme name, a grade outside ``[0, K-1]``, or length mismatch.
    """
    if method not in ORDINAL_METHODS:
        raise ConfigError(f"method must be one of {list(ORDINAL_METHODS)}; got '{method}'")
    if not logits_by_scheme:
        raise ConfigError("grading_loss got no logits")
    grade = grade.view(-1)
    if len(scheme_idx) != grade.numel():
        raise ConfigError(f"scheme_idx has {len(scheme_idx)} entries but grade has {grade.numel()}")
    unknown = sorted({s for s in scheme_idx if s and s not in logits_by_scheme})
    if unknown:
        raise ConfigError(f"unknown grade scheme(s) {unknown}; the head has {sorted(logits_by_scheme)}")
    total: Tensor | None = None
    count = 0
    for name, logits in logits_by_scheme.items():
        sel = torch.tensor([s == name for s in scheme_idx], dtype=torch.bool, device=logits.device)
        sel &= grade.to(logits.device) >= 0
        if not bool(sel.any()):
            continue
        y = grade.to(logits.device)[sel].long()
        g = logits[sel]
        km1 = g.shape[1]
        if bool((y > km1).any()):
            raise ConfigError(f"grade scheme '{name}' has {km1 + 1} grades but got grade {int(y.max())}")
        levels = _levels(y, km1)
        bce = F.binary_cross_entropy_with_logits(g, levels, reduction="none")
        if method == "coral":
            part, n = bce.sum(), int(y.numel())
        else:
            # task k sees samples with y > k - 1, i.e. y >= k
            used = (y.unsqueeze(1) >= torch.arange(km1, device=y.device).unsqueeze(0)).float()
            part, n = (bce * used).sum(), int(used.sum().item())
        total = part if total is None else total + part
        count += n
    if total is None or count == 0:
        return _zero_with_grad(*logits_by_scheme.values())
    return total / count


def grade_probabilities(logits: Tensor, method: str = "corn") -> Tensor:
    """Class probabilities ``(B, K)`` from ``(B, K-1)`` level logits.

    ``P(y > k)`` is ``σ(g_k)`` (CORAL) or ``Π_{j<=k} σ(g_j)`` (CORN); ``P(y = k) = P(y > k-1) - P(y > k)``.
    CORAL differences are clamped at 0 and renormalised in case the biases are not (yet) ordered.
    """
    if method not in ORDINAL_METHODS:
        raise ConfigError(f"method must be one of {list(ORDINAL_METHODS)}; got '{method}'")
    p = torch.sigmoid(logits)
    if method == "corn":
        p = torch.cumprod(p, dim=1)
    ones = torch.ones_like(p[:, :1])
    zeros = torch.zeros_like(p[:, :1])
    greater = torch.cat([ones, p, zeros], dim=1)  # P(y > k) for k = -1..K-1
    probs = (greater[:, :-1] - greater[:, 1:]).clamp_min(0.0)
    return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)


def predict_grade(logits: Tensor, method: str = "corn") -> Tensor:
    """Predicted 0-based grade ``(B,)``: CORN counts ``cumprod(σ(g)) > 0.5``, CORAL counts ``σ(g) > 0.5``."""
    if method not in ORDINAL_METHODS:
        raise ConfigError(f"method must be one of {list(ORDINAL_METHODS)}; got '{method}'")
    p = torch.sigmoid(logits)
    if method == "corn":
        p = torch.cumprod(p, dim=1)
    return (p > 0.5).sum(dim=1).long()


class GradingHead(nn.Module):
    """Ordinal grading outputs, one CORAL or CORN set per grade scheme.

    Args:
        in_dim: feature width.
        schemes: ``{scheme name: number of grades K}`` (e.g. ``{"birads": 6, "bach": 4}``).
        method: ``"corn"`` (unconstrained ``K-1`` logits, conditional training) or ``"coral"``
            (shared weights, rank-consistent).
    """

    def __init__(self, in_dim: int, schemes: dict[str, int], method: str = "corn") -> None:
        super().__init__()
        if method not in ORDINAL_METHODS:
            raise ConfigError(f"method must be one of {list(ORDINAL_METHODS)}; got '{method}'")
        if not schemes:
            raise ConfigError("GradingHead needs at least one grade scheme")
        for name, k in schemes.items():
            _check_key(name, "grade scheme")
            if k < 2:
                raise ConfigError(f"grade scheme '{name}' needs >= 2 grades; got {k}")
        self.method = method
        self.schemes = dict(schemes)
        layers: dict[str, nn.Module] = {}
        for name, k in schemes.items():
            layers[name] = CoralLayer(in_dim, k) if method == "coral" else nn.Linear(in_dim, k - 1)
        self.outputs = nn.ModuleDict(layers)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Return ``{scheme: (B, K-1) level logits}`` for every scheme."""
        return {name: layer(features) for name, layer in self.outputs.items()}

    # The module-level functions, also reachable from the head (``GradingHead.grading_loss(...)``).
    grading_loss = staticmethod(grading_loss)
    predict_grade = staticmethod(predict_grade)
    grade_probabilities = staticmethod(grade_probabilities)
