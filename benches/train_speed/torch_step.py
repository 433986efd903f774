#!/usr/bin/env python3
"""One training step of fer-train's network in PyTorch (CPU), timed the way `fer-train bench-step`
times burn's: the same architecture (stages of 3×3 conv without bias + batch norm + ReLU, 2×2
max-pool between stages, global average pooling, dropout, linear), AdamW, cross-entropy, a
fixed batch of 48×48 grayscale images, the mean of `--steps` steps after 2 warm-up steps.

Prints one line of JSON: {"seconds_per_step": ..., "params": ..., "threads": ...}.
"""
import argparse
import json
import time
import tomllib

import torch
from torch import nn


def network(widths, convs_per_stage, dropout, classes):
    layers, cin = [], 1
    for i, width in enumerate(widths):
        for j in range(max(convs_per_stage, 1)):
            layers += [
                nn.Conv2d(cin if j == 0 else width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        cin = width
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="a fer-train TOML config")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="0: PyTorch's default")
    args = parser.parse_args()
    with open(args.config, "rb") as f:
        config = tomllib.load(f)
    model_cfg = config.get("model", {})
    classes = {"fer2013": 7, "ferplus": 8}[config["data"]]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(config.get("seed", 0))
    model = network(
        model_cfg.get("widths", [32, 64, 128, 256]),
        model_cfg.get("convs_per_stage", 2),
        model_cfg.get("dropout", 0.3),
        classes,
    )
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    b = config["batch_size"]
    i = torch.arange(b * 48 * 48)
    x = ((i * 31 % 255).float() / 127.5 - 1.0).reshape(b, 1, 48, 48)
    y = torch.arange(b) % classes
    times = []
    for step in range(args.steps + 2):
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.item()
        loss.backward()
        optimizer.step()
        if step >= 2:
            times.append(time.perf_counter() - t)
    print(json.dumps({
        "seconds_per_step": sum(times) / len(times),
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
