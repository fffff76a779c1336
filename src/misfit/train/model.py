"""The study's CNN (STUDY.md, "Model"), and a fast functional forward of the same net.

`CNN` is the reference definition: its torchinfo summary goes into every run's record,
checkpoints are its state_dicts, and evaluation runs it as is. Training runs
`fast_forward` on the same parameters; it pools before the ReLU. Max-pooling and ReLU
commute exactly (both only compare and select), so outputs and gradients are
bit-identical (tests/test_model.py checks this) while the ReLU and its backward touch
4x fewer values.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from misfit.train.targets import activate

INPUT_SHAPE = (1, 28, 28)
SUMMARY_BATCH = 32


class FinalActivation(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activate(self.name, x)

    def extra_repr(self) -> str:
        return self.name


class CNN(nn.Module):
    def __init__(self, n_outputs: int, activation: str = "none"):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.relu3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(1024, 64)
        self.sigmoid = nn.Sigmoid()
        self.fc_final = nn.Linear(64, n_outputs)
        self.final_activation = FinalActivation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(self.relu3(self.conv3(x)))
        x = self.sigmoid(self.fc1(x))
        return self.final_activation(self.fc_final(x))


def fast_forward(params: dict[str, torch.Tensor], x: torch.Tensor, activation: str) -> torch.Tensor:
    """CNN.forward on explicit parameters, pooling before each ReLU (same result)."""
    x = F.relu(F.max_pool2d(F.conv2d(x, params["conv1.weight"], params["conv1.bias"], padding=1), 2))
    x = F.relu(F.max_pool2d(F.conv2d(x, params["conv2.weight"], params["conv2.bias"]), 2))
    x = F.relu(F.conv2d(x, params["conv3.weight"], params["conv3.bias"])).flatten(1)
    x = torch.sigmoid(F.linear(x, params["fc1.weight"], params["fc1.bias"]))
    return activate(activation, F.linear(x, params["fc_final.weight"], params["fc_final.bias"]))


def model_summary(n_outputs: int, activation: str) -> str:
    """torchinfo's summary for input (32, 1, 28, 28), leaving the global RNG untouched."""
    from torchinfo import summary  # slow to import; only the train stage needs it

    with torch.random.fork_rng(devices=[]):
        model = CNN(n_outputs, activation)
        stats = summary(model, input_size=(SUMMARY_BATCH, *INPUT_SHAPE), verbose=0, device="cpu")
    return str(stats)
