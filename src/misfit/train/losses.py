"""The losses, applied exactly the way the seeds' experiments applied them.

Each loss is PyTorch's own module, fed the model's post-activation output (or raw
logits for the `logits` cells). Regression and probability flatten output and target
to [batch]; with `ce` PyTorch then reads the whole batch as one sample's class scores,
which is what the source did. `ce` after a softmax applies softmax twice, also as the
source did.
"""
from __future__ import annotations

import torch
from torch import nn

from misfit.core.config import CellConfig


class RMSELoss(nn.Module):
    """sqrt(MSE + 1e-8): the epsilon keeps the gradient finite at zero error."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.mse = nn.MSELoss()
        self.eps = eps

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.mse(input, target) + self.eps)


LOSS_MODULES: dict[str, type[nn.Module]] = {
    "mse": nn.MSELoss,
    "mae": nn.L1Loss,
    "rmse": RMSELoss,
    "bce": nn.BCELoss,
    "bcelogits": nn.BCEWithLogitsLoss,
    "ce": nn.CrossEntropyLoss,
}

FLATTENED_TASKS = ("regression", "probability")


class LossRejected(RuntimeError):
    """The loss module refused its input: for this study, a result rather than a bug."""


class CellLoss:
    def __init__(self, cell: CellConfig):
        self.module = LOSS_MODULES[cell.loss]()
        self.flatten = cell.task in FLATTENED_TASKS
        self.check_range_first = cell.loss == "bce"

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.flatten:
            output, target = output.reshape(-1), target.reshape(-1)
        if self.check_range_first and output.is_cuda:
            # on CUDA nn.BCELoss's range checks (input, then target; NaN fails them) are
            # device-side asserts that kill the process: check on the host, as the CPU does
            for name, values in (("input", output), ("target", target)):
                if not bool(((values >= 0) & (values <= 1)).all()):
                    raise LossRejected(f"all elements of {name} should be between 0 and 1")
        try:
            return self.module(output, target)
        except (RuntimeError, ValueError) as error:
            raise LossRejected(str(error)) from error
