"""A digit model in plain PyTorch, outside fusiond's encoders, served by fusiond from ONNX.

    python examples/own-model/train.py [--data .cache/data/train] [--val .cache/data/val]
                                       [--files 200] [--epochs 20]

A 2-D CNN reads the camera's four frames (stacked as channels), a 1-D CNN the IMU's
second of accelerometer z, and a linear layer scores the ten digits from both. The
windows come from fusiond's own window code (``load_windows``), cut as ``card.toml``
says, so that training sees what the daemon will feed. The script writes
``model.onnx`` beside it with ``torch.onnx.export``; ``card.toml`` tells fusiond the rest.
The training data are made as docs/models.md says ("Reproduce it").
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import torch
from torch import nn

from fusiond.align import InputSpec, WindowConfig
from fusiond.plugin import load_plugins
from fusiond.training.train import data_items, load_windows

HERE = Path(__file__).resolve().parent


class Digits(nn.Module):
    """Camera and IMU in, ten logits out; no mask: a missing input is all zeros."""

    def __init__(self, imu_mean: float, imu_std: float, classes: int = 10) -> None:
        super().__init__()
        self.video = nn.Sequential(
            nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.imu = nn.Sequential(
            nn.Conv1d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(16, 32, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(64, classes)
        self.register_buffer("imu_mean", torch.tensor(imu_mean))
        self.register_buffer("imu_std", torch.tensor(imu_std))

    def forward(self, video: torch.Tensor, imu: torch.Tensor) -> torch.Tensor:
        frames = video.squeeze(-1).float() / 255.0  # [B, 4, 32, 32]
        motion = ((imu - self.imu_mean) / self.imu_std).transpose(1, 2)  # [B, 1, 100]
        return self.head(torch.cat([self.video(frames), self.imu(motion)], dim=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / ".cache/data/train")
    parser.add_argument("--val", type=Path, default=HERE.parent.parent / ".cache/data/val")
    parser.add_argument("--files", type=int, default=200, help="recordings to train on (of the folder's)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=HERE / "model.onnx")
    args = parser.parse_args()

    card = tomllib.loads((HERE / "card.toml").read_text())
    spec = InputSpec.from_dict(card["inputs"])
    ms = 1_000_000
    window = WindowConfig(int(card["window_ms"] * ms), int(card["hop_ms"] * ms), lateness_ns=300 * ms)
    items = data_items(sorted(args.data.glob("*.mcap"))[: args.files])
    data, classes = load_windows(items, spec, window, load_plugins(), card["classes"])
    video = torch.from_numpy(data.inputs["video"])
    imu = torch.from_numpy(data.inputs["imu"])
    present = torch.from_numpy(data.mask)
    labels = torch.from_numpy(data.targets)
    print(f"{len(labels)} windows from {len(items)} recordings")

    torch.manual_seed(0)
    model = Digits(float(imu.mean()), float(imu.std()) or 1.0, len(classes))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(args.epochs):
        order = torch.randperm(len(labels))
        total = 0.0
        for batch in order.split(64):
            v, i = video[batch].clone(), imu[batch].clone()
            # Drop one modality now and then (and what the data already lacks): the model
            # learns to score from either, as fusiond feeds zeros for a missing one.
            drop = torch.rand(len(batch)) < 0.3
            which = torch.rand(len(batch)) < 0.5
            v[(drop & which) | ~present[batch, 0]] = 0
            i[(drop & ~which) | ~present[batch, 1]] = 0
            loss = nn.functional.cross_entropy(model(v, i), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss) * len(batch)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(labels):.4f}")

    model.eval()
    held_out, _ = load_windows(data_items([args.val]), spec, window, load_plugins(), classes)
    with torch.inference_mode():
        for name, part in (("training", data), ("validation", held_out)):
            scores = model(torch.from_numpy(part.inputs["video"]), torch.from_numpy(part.inputs["imu"]))
            right = (scores.argmax(1) == torch.from_numpy(part.targets)).float().mean()
            print(f"{name} accuracy {float(right):.3f} ({len(part)} windows)")
    torch.onnx.export(
        model,
        (video[:2], imu[:2]),
        str(args.out),
        input_names=["video", "imu"],
        output_names=["logits"],
        dynamic_axes={"video": {0: "batch"}, "imu": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
