#!/usr/bin/env python3
"""VGG-11 BN on Fashion-MNIST for a few hundred steps: one Linear after global pooling (the
definition since issue 15) vs the ImageNet classifier it had (two 4096-wide Linear + ReLU +
Dropout layers), at the demo's optimizer settings. docs/BENCHMARKS.md section 3.1.

    python scripts/vgg_head_check.py {linear,imagenet-head} [--steps 120] [--batch 128] [--lr 0.1]

Same seed and batch order for both heads; lr warms up linearly over the first third of the steps.
Prints the mean training loss every 25 steps and the accuracy on the first 1,000 test images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mimicnorm_deploy.training.data import load_dataset, to_model_input  # noqa: E402
from mimicnorm_deploy.training.layers import param_groups  # noqa: E402
from mimicnorm_deploy.training.models import create_model  # noqa: E402

HIDDEN = 4096


def imagenet_head(in_features: int, num_classes: int) -> nn.Sequential:
    """The previous definition's classifier and its init (Kaiming normal hidden layers, zero bias)."""
    layers = [nn.Linear(in_features, HIDDEN), nn.ReLU(inplace=True), nn.Dropout(),
              nn.Linear(HIDDEN, HIDDEN), nn.ReLU(inplace=True), nn.Dropout()]  # fmt: skip
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers, nn.Linear(HIDDEN, num_classes))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("head", choices=["linear", "imagenet-head"])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    dataset = load_dataset("fashion-mnist", args.data_dir)
    torch.manual_seed(0)
    model = create_model("vgg11", norm="bn", num_classes=10, in_chans=1)
    if args.head == "imagenet-head":
        model.fc = imagenet_head(model.fc.in_features, 10)  # logits_norm is Identity under BN
    optimizer = torch.optim.SGD(param_groups(model, "bn", args.lr, 5e-4), lr=args.lr, momentum=0.9)
    rng = np.random.default_rng(0)
    warmup = max(1, args.steps // 3)
    losses, started = [], time.perf_counter()
    model.train()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / warmup)
        index = rng.integers(0, len(dataset.train_images), args.batch)
        images, labels = to_model_input(dataset.train_images[index]), torch.as_tensor(dataset.train_labels[index])
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 25 == 0:
            print(f"{args.head} step {step + 1}: mean loss of the last 25 steps {np.mean(losses[-25:]):.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    model.eval()
    with torch.inference_mode():
        predicted = model(to_model_input(dataset.test_images[:1000])).argmax(1).numpy()
    accuracy = float((predicted == dataset.test_labels[:1000]).mean())
    print(f"{args.head}: {100 * accuracy:.1f} % on the first 1,000 test images after {args.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
