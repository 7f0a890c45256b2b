"""Image encoders that start from pretrained weights in a local file.

``encoder = "resnet18"`` (or ``resnet34``) in a recipe's ``[inputs.<modality>]``, with
``encoder_args = { weights = "resnet18.pth", freeze = true }``. The network is the ResNet
of He et al. (2016) with the parameter names torchvision and timm use, so the state
dict either library saves loads as it is (its classifier, ``fc.*``, is left out). A
recipe may also say ``"timm:resnet18"`` or ``"torchvision:resnet18"``: the same encoder.

Nothing is downloaded, ever: the weights are read from ``weights`` (a path relative to
the recipe) when training starts, and then live in the trained checkpoint like every
other parameter. docs/models.md shows how to fetch a file once where there is internet.
Without ``weights`` the encoder trains from scratch. ``freeze = true`` keeps the
pretrained backbone as it is (batch-norm statistics included) and trains only the
projection to the fusion's width.

The architecture is defined here rather than taken from timm or torchvision so that the
encoder has no dependency beyond torch (torchvision must match the torch build exactly,
and timm needs torchvision).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusiond.align.spec import ModalitySpec
from fusiond.errors import ModelError
from fusiond.models.encoders import Encoder

__all__ = ["BasicBlock", "read_weights", "ResNet", "ResNet18Encoder", "ResNet34Encoder", "ResNetEncoder"]

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (torchvision's names: conv1, bn1, conv2, bn2, downsample)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu(out + short)
        return result


class ResNet(nn.Module):
    """The ResNet trunk without its classifier: images [N, 3, H, W] -> features [N, 512]."""

    def __init__(self, blocks: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (64, 128, 256, 512)
        cin = 64
        for i, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(cin, width, stride)]
            layers += [BasicBlock(width, width, 1) for _ in range(count - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            cin = width
        self.features = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        pooled: torch.Tensor = x.mean(dim=(2, 3))
        return pooled


class ResNetEncoder(Encoder):
    """Frames [B, N, H, W, C] uint8 -> [B, D]: each frame through a ResNet trunk (grey
    frames are repeated to three channels, all normalised as ImageNet was), averaged over
    the N frames, then projected to D."""

    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    kinds = ("frames",)

    def __init__(self, spec: ModalitySpec, dim: int = 64, weights: str = "", freeze: bool = False) -> None:
        super().__init__()
        if spec.kind not in self.kinds:
            msg = f"a ResNet encoder reads frames, not {spec.kind}"
            raise ModelError(msg)
        self.backbone = ResNet(self.blocks)
        self.proj = nn.Linear(self.backbone.features, dim)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.weights = weights
        self.frozen = freeze
        self.dim = dim
        if freeze:
            self.backbone.requires_grad_(False)

    def load_pretrained(self) -> None:
        """Read ``weights`` into the backbone (called when training starts, never when a
        trained checkpoint is loaded: its own parameters hold the result)."""
        if not self.weights:
            return
        state = read_weights(Path(self.weights))
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head.", "classifier."))}
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            arch = type(self).__name__.removesuffix("Encoder").lower()
            msg = f"{self.weights} is not a {arch} state dict: missing {missing[:4]}, extra {unexpected[:4]}"
            raise ModelError(msg)

    def train(self, mode: bool = True) -> ResNetEncoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # frozen means the batch-norm statistics too
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h, w, c = x.shape
        images = x.reshape(b * n, h, w, c).permute(0, 3, 1, 2).float().div(255.0)
        if c == 1:
            images = images.expand(-1, 3, -1, -1)
        feats = self.backbone((images - self.mean) / self.std).reshape(b, n, -1).mean(dim=1)
        out: torch.Tensor = self.proj(feats)
        return out


class ResNet18Encoder(ResNetEncoder):
    """ResNet-18 (11.2 M parameters in the trunk)."""

    blocks = (2, 2, 2, 2)


class ResNet34Encoder(ResNetEncoder):
    """ResNet-34 (21.3 M parameters in the trunk)."""

    blocks = (3, 4, 6, 3)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt`` file (tensors only: no code is run) or a
    ``.safetensors`` file (needs the safetensors package)."""
    if not path.is_file():
        msg = f"no such weights file: {path} (weights are never downloaded; see docs/models.md)"
        raise ModelError(msg)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            msg = f"{path}: reading .safetensors needs the safetensors package (pip install safetensors)"
            raise ModelError(msg) from None
        loaded: dict[str, torch.Tensor] = load_file(str(path))
        return loaded
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = f"{path} is not a torch state dict ({type(exc).__name__})"
        raise ModelError(msg) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not (isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values())):
        msg = f"{path} holds no state dict of tensors"
        raise ModelError(msg)
    return data
