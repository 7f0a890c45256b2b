"""Fusion strategies: combine per-modality features under a presence mask.

Every strategy takes ``features`` [B, M, D] (modalities in the model's order) and
``mask`` [B, M] (True where the modality is present) and returns [B, K]: class logits
for a classifier, the K target values for a regressor. A masked modality never
influences the output. A strategy that reads its outputs as class distributions says
so with ``tasks = ("classification",)``; the model refuses it for a regressor.

=============  ==============================================================
``early``      feature-level concatenation (``concat`` is the same strategy)
``late``       decision-level: a head per modality, learned modality weights
``intermediate``  layer-wise: modality streams exchange a shared context at every layer
``gated``      per-sample gates score each modality's reliability
``agreement``  a head per modality, weighted by how much each agrees with the others
``consensus``  a head per modality; the posterior given that any sensor may be lying
``attention``  cross-modal transformer over modality tokens, key-padding mask
=============  ==============================================================
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "AgreementFusion",
    "AttentionFusion",
    "ConcatFusion",
    "ConsensusFusion",
    "GatedFusion",
    "IntermediateFusion",
    "LateFusion",
]


class ConcatFusion(nn.Module):
    """Feature-level (early) fusion: zero the missing features, concatenate with the mask."""

    def __init__(self, modalities: int, dim: int, classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(modalities * (dim + 1), hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(hidden, classes),
        )

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(features.dtype)
        joined = torch.cat([features * m, m], dim=-1).flatten(1)
        out: torch.Tensor = self.mlp(joined)
        return out


class LateFusion(nn.Module):
    """Decision-level fusion: a head per modality, averaged with learned modality weights."""

    def __init__(self, modalities: int, dim: int, classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, classes) for _ in range(modalities))
        self.weight_logits = nn.Parameter(torch.zeros(modalities))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([head(features[:, i]) for i, head in enumerate(self.heads)], dim=1)
        weights = self.weight_logits.expand_as(mask).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(weights, dim=1).nan_to_num(0.0)
        return (logits * weights.unsqueeze(-1)).sum(dim=1)


class AgreementFusion(nn.Module):
    """Decision-level fusion weighted by agreement: a head per modality, and each present
    modality's weight grows with how much its class distribution agrees with the other
    present modalities' (the mean probability that it and another one name the same
    class). One sensor that is confidently wrong is outvoted by the others that agree;
    a learned bias per modality and a learned gain set how much agreement counts.
    """

    tasks = ("classification",)

    def __init__(self, modalities: int, dim: int, classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, classes) for _ in range(modalities))
        self.bias = nn.Parameter(torch.zeros(modalities))
        self.gain = nn.Parameter(torch.tensor(4.0))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([head(features[:, i]) for i, head in enumerate(self.heads)], dim=1)
        p = torch.softmax(logits, dim=-1)
        here = mask.to(p.dtype)
        present = p * here.unsqueeze(-1)
        others = present.sum(dim=1, keepdim=True) - present  # the other present modalities' sum
        count = here.sum(dim=1, keepdim=True)
        agree = (p * others).sum(dim=-1) / (count - here).clamp(min=1.0)
        agree = agree * (count > 1).to(p.dtype)  # a modality alone has nobody to agree with
        score = (self.bias + self.gain * agree).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(score, dim=1).nan_to_num(0.0)
        return (logits * weights.unsqueeze(-1)).sum(dim=1)


class ConsensusFusion(nn.Module):
    """Decision-level fusion that assumes any sensor may be lying.

    A head per modality gives ``q_m``, its class distribution (with a learned temperature
    per modality). Each present modality is taken to be sound with probability
    ``1 - r_m`` and, with probability ``r_m`` (its learned unreliability), to show a
    window of some other class. Its likelihood of class ``c`` is then the mixture
    ``(1 - r_m) K q_m(c) + r_m K (1 - q_m(c)) / (K - 1)``, and the output is the log
    product of the present modalities' likelihoods: the posterior under a uniform prior.

    Unlike a weighted average, a lone modality that names a class the others rule out
    cannot carry it: under the "lying" branch its confidence counts *against* that
    class. Two sensors that agree outvote a third that is sure of something else, unless
    they are themselves unsure. With one modality present it is that modality's head.

    The temperatures and unreliabilities are learned in training, where windows are
    swapped, corrupted and dropped, and kept as learned. Refitting them afterwards on
    clean validation windows (by likelihood) sharpened every head and shrank every
    unreliability, and the model did worse in every column of the robustness table,
    clean and on a real voice included (docs/models.md).
    """

    tasks = ("classification",)

    def __init__(self, modalities: int, dim: int, classes: int, unreliability: float = 0.1) -> None:
        super().__init__()
        if isinstance(unreliability, bool) or not isinstance(unreliability, int | float):
            msg = f"unreliability must be a number in (0, 1), got {unreliability!r}"
            raise ValueError(msg)
        if not 0.0 < unreliability < 1.0:
            msg = f"unreliability must lie in (0, 1), got {unreliability!r}"
            raise ValueError(msg)
        if classes < 2:
            msg = f"consensus fusion needs at least two classes, got {classes}"
            raise ValueError(msg)
        self.heads = nn.ModuleList(nn.Linear(dim, classes) for _ in range(modalities))
        self.log_temperature = nn.Parameter(torch.zeros(modalities))
        start = torch.logit(torch.tensor(unreliability))
        self.unreliability_logit = nn.Parameter(torch.full((modalities,), float(start)))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([head(features[:, i]) for i, head in enumerate(self.heads)], dim=1)
        k = logits.shape[-1]
        log_q = torch.log_softmax(logits / self.log_temperature.exp().view(1, -1, 1), dim=-1)
        log_not_q = torch.log1p(-log_q.exp().clamp(max=1.0 - 1e-6))  # log(1 - q), finite
        r = torch.sigmoid(self.unreliability_logit).view(1, -1, 1)
        sound = torch.log1p(-r) + log_q
        lying = torch.log(r) + log_not_q - math.log(k - 1)
        # [B, M, K], log of the mixture / K (logsumexp: ONNX has no logaddexp)
        per_modality = torch.logsumexp(torch.stack([sound, lying]), dim=0)
        out: torch.Tensor = (per_modality * mask.unsqueeze(-1).to(logits.dtype)).sum(dim=1)
        return out


class GatedFusion(nn.Module):
    """Gated modality weighting: each feature scores its own reliability per sample."""

    def __init__(self, modalities: int, dim: int, classes: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, 1)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, classes))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.gate(features).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0)
        out: torch.Tensor = self.head((features * weights.unsqueeze(-1)).sum(dim=1))
        return out


class IntermediateFusion(nn.Module):
    """Layer-wise fusion: each modality keeps its own stream of layers, and before every
    layer it is given the masked mean of all present streams (the shared context).

    Modalities thus shape each other at every depth, not only at the input (early) or at
    the decision (late). The output reads the masked mean of the last layer.
    """

    def __init__(self, modalities: int, dim: int, classes: int, layers: int = 2) -> None:
        super().__init__()
        self.own = nn.ModuleList(
            nn.ModuleList(nn.Linear(dim, dim) for _ in range(modalities)) for _ in range(layers)
        )
        self.shared = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.head = nn.Linear(dim, classes)

    @staticmethod
    def _pool(h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(features.dtype)
        h = features * m
        for own, shared, norm in zip(self.own, self.shared, self.norms, strict=True):
            context = shared(self._pool(h, m)).unsqueeze(1)
            mixed = torch.stack([layer(h[:, i]) for i, layer in enumerate(own)], dim=1)  # type: ignore[arg-type,var-annotated]
            h = (h + torch.relu(norm(mixed + context))) * m
        out: torch.Tensor = self.head(self._pool(h, m))
        return out


class AttentionFusion(nn.Module):
    """Modality tokens plus a summary token through a transformer encoder.

    Missing modalities are removed with the key-padding mask, so attention (cross-modal,
    every token attends to every present token) only reads what is there.
    """

    def __init__(self, modalities: int, dim: int, classes: int, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.modality_embedding = nn.Parameter(torch.randn(modalities, dim) * 0.02)
        self.summary = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = features.shape[0]
        tokens = torch.cat([self.summary.expand(b, -1, -1), features + self.modality_embedding], 1)
        keep = torch.cat([mask.new_ones(b, 1), mask], dim=1)
        out = self.encoder(tokens, src_key_padding_mask=~keep)
        logits: torch.Tensor = self.head(self.norm(out[:, 0]))
        return logits
