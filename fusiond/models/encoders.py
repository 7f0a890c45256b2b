"""Per-modality encoders: each maps one modality's batch to features of shape [B, D]."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fusiond.align.spec import ModalitySpec

__all__ = [
    "Encoder",
    "FramesEncoder",
    "LogMelEncoder",
    "mel_filterbank",
    "SeriesEncoder",
    "TextEncoder",
    "VectorEncoder",
]


class Encoder(nn.Module):
    """Base of the encoders: ``forward`` is ``forward_features`` ([B, ...] -> [B, D])."""

    dim: int
    kinds: tuple[str, ...] = ()
    """The modality kinds this encoder reads (empty: any)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of shape [B, D]."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class FramesEncoder(Encoder):
    """Small CNN over each of N frames, averaged over time. Input uint8 [B, N, H, W, C]."""

    kinds = ("frames",)

    def __init__(self, spec: ModalitySpec, dim: int = 64, width: int = 16) -> None:
        super().__init__()
        c = spec.channels
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.proj = nn.Linear(4 * width, dim)
        self.dim = dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, H, W, C] uint8 -> [B, D]."""
        b, n, h, w, c = x.shape
        images = x.reshape(b * n, h, w, c).permute(0, 3, 1, 2).float().div_(255.0)
        feats = self.net(images).reshape(b, n, -1).mean(dim=1)
        out: torch.Tensor = self.proj(feats)
        return out


def mel_filterbank(sample_rate: float, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular mel filters, [n_mels, n_fft // 2 + 1] (HTK mel scale)."""

    def to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = to_hz(np.linspace(to_mel(np.array(0.0)), to_mel(np.array(sample_rate / 2)), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    filters: np.ndarray = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    return filters


class LogMelEncoder(Encoder):
    """Log-mel spectrogram computed in torch, then a CNN. Input float [B, S, C]."""

    kinds = ("series",)

    dft: torch.Tensor
    mel: torch.Tensor

    def __init__(
        self,
        spec: ModalitySpec,
        dim: int = 64,
        sample_rate: float = 8000.0,
        n_fft: int = 256,
        hop: int = 80,
        n_mels: int = 40,
        width: int = 16,
    ) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        # The STFT as two strided convolutions with windowed cosine and sine kernels: the
        # same numbers as torch.stft (onesided, centred, reflect-padded), in operations
        # every runtime has (ONNX has no complex STFT).
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        angle = 2 * torch.pi * k * n / n_fft
        hann = torch.hann_window(n_fft, dtype=torch.float64)
        self.register_buffer(
            "dft",
            torch.cat([torch.cos(angle) * hann, torch.sin(angle) * hann]).float().unsqueeze(1),
            persistent=False,
        )
        fb = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels))
        self.register_buffer("mel", fb, persistent=False)
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.proj = nn.Linear(4 * width, dim)
        self.dim = dim

    def logmel(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, C] -> [B, 1, n_mels, frames]."""
        mono = x.float().mean(dim=2, keepdim=True).transpose(1, 2)  # [B, 1, S]
        half = self.n_fft // 2
        padded = nn.functional.pad(mono, (half, half), mode="reflect")
        spectrum = nn.functional.conv1d(padded, self.dft, stride=self.hop)  # [B, 2F, frames]
        real, imag = spectrum.chunk(2, dim=1)
        power = real.square() + imag.square()
        mel = torch.matmul(self.mel, power)
        return torch.log(mel + 1e-6).unsqueeze(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, C] -> [B, D]."""
        out: torch.Tensor = self.proj(self.net(self.logmel(x)))
        return out


class SeriesEncoder(Encoder):
    """1D CNN over a multichannel series (IMU and other numeric sensors). Input [B, S, C]."""

    kinds = ("series",)

    def __init__(self, spec: ModalitySpec, dim: int = 64, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(spec.channels, width, 5, padding=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(width, width, 5, padding=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(width, 2 * width, 5, padding=2),
            nn.BatchNorm1d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )
        self.proj = nn.Linear(2 * width, dim)
        self.dim = dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, C] -> [B, D]."""
        out: torch.Tensor = self.proj(self.net(x.float().transpose(1, 2)))
        return out


class VectorEncoder(Encoder):
    """MLP over the flattened input, for small generic numeric inputs."""

    kinds = ("vector", "series")

    def __init__(self, spec: ModalitySpec, dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        size = math.prod(spec.shape)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.dim = dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, ...] -> [B, D]."""
        out: torch.Tensor = self.net(x.float())
        return out


class TextEncoder(Encoder):
    """Words of a ``tokens`` input ([B, L, 2] int32: id, ms into the window) -> [B, D]: an
    embedding of each word plus its time, a bidirectional GRU over the words in order,
    and the mean of its outputs over the words present (padding never counts)."""

    kinds = ("tokens",)

    def __init__(self, spec: ModalitySpec, dim: int = 64, embed: int = 48, hidden: int = 48) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(spec.vocab) + 2, embed, padding_idx=0)
        self.time = nn.Linear(1, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, dim)
        self.dim = dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, 2] int32 -> [B, D]."""
        ids = x[..., 0].long()
        present = (ids != 0).unsqueeze(-1).float()
        seconds = x[..., 1:2].float() / 1000.0
        out, _ = self.gru((self.embed(ids) + self.time(seconds)) * present)
        pooled = (out * present).sum(dim=1) / present.sum(dim=1).clamp(min=1.0)
        result: torch.Tensor = self.proj(pooled)
        return result
