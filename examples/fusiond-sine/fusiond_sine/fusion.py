"""``maxpool``: a fusion strategy from a plugin. Imported only when a model names it."""

from __future__ import annotations

import torch
from torch import nn


class MaxPoolFusion(nn.Module):
    """The element-wise maximum of the present modalities' features, then a small head.

    Symmetric in its modalities, and a missing one cannot win the maximum: its features
    are set to minus infinity before pooling.
    """

    def __init__(self, modalities: int, dim: int, outputs: int, hidden: int = 64) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, outputs))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = features.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        out: torch.Tensor = self.head(torch.nan_to_num(hidden, neginf=0.0))
        return out
