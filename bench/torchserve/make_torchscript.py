#!/usr/bin/env python3
"""Writes the benchmark's TorchScript model and a request body for it (bench/run.sh, figure B).

Usage: make_torchscript.py MODEL_PT BODY_JSON --dims 1024,4096,4096,1024 [--seed 42] [--batch 1]

The model is a dense stack (Linear + ReLU between layers, none after the last), FP32, weights
drawn from N(0, 1/in) with the seed, scripted with torch.jit.script and saved with `save`, so
maas-backend (platform "torchscript", tch::CModule) and TorchServe load the very same file.
BODY_JSON is one Open Inference Protocol v2 infer request, JSON encoding, input "input" of
`batch` random rows: both servers get the same bytes.
"""
import argparse
import json
import random

import torch


class Dense(torch.nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i != last:
                x = torch.relu(x)
        return x


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_pt")
    p.add_argument("body_json")
    p.add_argument("--dims", default="1024,4096,4096,1024")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch", type=int, default=1)
    a = p.parse_args()
    dims = [int(d) for d in a.dims.split(",")]
    torch.manual_seed(a.seed)
    model = Dense(dims)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.normal_(0.0, 1.0 / layer.in_features ** 0.5)
            layer.bias.zero_()
    torch.jit.script(model.eval()).save(a.model_pt)
    rng = random.Random(a.seed)
    data = [round(rng.uniform(-1.0, 1.0), 6) for _ in range(a.batch * dims[0])]
    body = {"inputs": [{"name": "input", "shape": [a.batch, dims[0]], "datatype": "FP32", "data": data}]}
    with open(a.body_json, "w") as f:
        json.dump(body, f)


if __name__ == "__main__":
    main()
