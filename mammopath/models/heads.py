"""Task heads on encoder outputs: classification, weak localisation and ordinal grading.

- :class:`ClassificationHead`: binary malignancy logit plus optional extra multi-class outputs
  (e.g. BACH 4-class).
- :class:`LocalizationHead`: a score per patch token (``s_n = wᵀ LN(t_n)``), a heatmap and an
  image logit by top-k mean or attention-MIL pooling (algorithms.md §7), and :func:`box_from_heatmap`.
- :class:`GradingHead`: ordinal CORAL/CORN outputs, one set per grade scheme (BI-RADS, BACH,
  CAMELYON17 pN...), with :func:`predict_grade` and :func:`grade_probabilities`.

Heads produce outputs; the losses that score them live in :mod:`mammopath.losses`.
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
from mammopath.losses.task import ORDINAL_METHODS

POOLINGS = ("topk", "attention")


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
    def box_from_heatmap(heatmap: Tensor, threshold_ratio: float = 0.5) -> Tensor:
        """See :func:`box_from_heatmap`."""
        return box_from_heatmap(heatmap, threshold_ratio)


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

    # The module-level functions, also reachable from the head (``GradingHead.predict_grade(...)``).
    predict_grade = staticmethod(predict_grade)
    grade_probabilities = staticmethod(grade_probabilities)
