"""The five tasks: targets derived from the digit, and how a cell's outputs are scored.

Label maps follow STUDY.md ("Tasks"). A cell sees its task through `CellTargets`: the
target its loss is given (z-scored, sigmoid-squashed, one-hot ...) and the prediction,
in the task's own units, that its metric is computed on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from misfit.core.config import CellConfig
from misfit.core.tasks import TASKS


def activate(name: str, logits: torch.Tensor) -> torch.Tensor:
    if name == "none":
        return logits
    if name == "relu":
        return torch.relu(logits)
    if name == "sigmoid":
        return torch.sigmoid(logits)
    if name == "softmax":
        return torch.softmax(logits, dim=-1)
    raise ValueError(f"unknown activation {name!r}")


class CellTargets:
    """One cell's view of its task.

    `loss_target` turns task targets into what the cell's loss is given; `predict`
    turns the cell's outputs (post-activation, the last dim being the outputs) into
    predictions in the task's units; `per_sample_score` is what the metric averages.
    """

    def __init__(self, cell: CellConfig, train_target: torch.Tensor):
        self.cell = cell
        self.spec = TASKS[cell.task]
        self.mean, self.std = 0.0, 1.0
        if cell.task == "regression" and cell.variant == "zscore":
            self.mean = float(train_target.double().mean())
            self.std = float(train_target.double().std())
            if not self.std > 0:
                raise ValueError("cannot z-score regression targets with zero spread")

    def loss_target(self, y: torch.Tensor) -> torch.Tensor:
        task, cell = self.cell.task, self.cell
        if task == "regression":
            z = (y - self.mean) / self.std
            return torch.sigmoid(z) if cell.activation == "sigmoid" else z
        if task in ("binary", "multiclass") and cell.loss != "ce":
            return F.one_hot(y, self.spec.n_outputs).float()
        return y

    def prediction_space(self, output: torch.Tensor) -> torch.Tensor:
        """Model output in the space predictions are read from (activations applied)."""
        if self.cell.loss_input == "logits":
            return activate(self.cell.activation, output)
        return output

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        out = self.prediction_space(output)
        task = self.cell.task
        if task == "regression":
            value = out[..., 0]
            if self.cell.activation == "sigmoid":
                value = torch.logit(value)  # an output of exactly 0 or 1 gives -inf / inf
            return value * self.std + self.mean
        if task == "probability":
            return torch.round(out[..., 0])
        if task in ("binary", "multiclass"):
            return out.argmax(dim=-1)
        return torch.round(out)

    def per_sample_score(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Squared error (regression) or share correct, one value per sample."""
        pred = self.predict(output)
        if self.cell.task == "regression":
            return (pred.double() - y.double()) ** 2
        correct = (pred == y).double()
        return correct.mean(dim=-1) if self.cell.task == "multilabel" else correct

    def diagnostics(self, output: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-seed statistics of the outputs that explain how a cell learns.

        `output` is [..., samples, outputs]; each value returned has the leading dims.
        """
        out = self.prediction_space(output).double()
        if self.cell.task == "regression":
            pred = self.predict(output).double()
            finite = torch.where(torch.isfinite(pred), pred, torch.nan)
            found = {
                "diag_pred_std": _nanstd(finite),
                "diag_pred_mean": finite.nanmean(dim=-1),
                "diag_target_std": y.double().std().expand(out.shape[:-2]),
            }
            if self.cell.activation == "relu":  # a ReLU output of 0 passes no gradient back
                found["diag_live_share"] = (out[..., 0] > 0).double().mean(dim=-1)
            return found
        saturated = ((out < 0.01) | (out > 0.99)).double().mean(dim=(-2, -1))
        top_prediction, top_share = self._most_frequent_prediction(output)
        return {
            "diag_prob_sum": out.sum(dim=-1).mean(dim=-1),
            "diag_saturated_share": saturated,
            "diag_entropy": self._entropy(out).mean(dim=-1),
            "diag_top_prediction": top_prediction,
            "diag_top_share": top_share,
        }

    def _most_frequent_prediction(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prediction made most often and its share, per leading index: a share of 1 is
        a constant model. A multilabel prediction is coded as the number its bits spell
        (output i is bit i); an unbounded output predicts what round() gives, -1 or 2 say."""
        pred = self.predict(output).double()
        if self.cell.task == "multilabel":
            pred = (pred * 2.0 ** torch.arange(pred.shape[-1], dtype=torch.float64, device=pred.device)).sum(dim=-1)
        rows = pred.reshape(-1, pred.shape[-1])
        values, shares = [], []
        for row in rows:
            unique, counts = torch.unique(row, return_counts=True)
            top = int(counts.argmax())
            values.append(float(unique[top]))
            shares.append(float(counts[top]) / len(row))
        shape = pred.shape[:-1]
        return (torch.tensor(values, dtype=torch.float64, device=pred.device).reshape(shape),
                torch.tensor(shares, dtype=torch.float64, device=pred.device).reshape(shape))

    def _entropy(self, out: torch.Tensor) -> torch.Tensor:
        # exclusive classes: entropy of the distribution the outputs imply; independent
        # outputs: mean binary entropy of each output (both in nats)
        if self.cell.task in ("binary", "multiclass"):
            q = out.clamp_min(0)
            q = q / q.sum(dim=-1, keepdim=True).clamp_min(1e-12)
            return torch.special.entr(q).sum(dim=-1)
        p = out.clamp(0, 1)
        return (torch.special.entr(p) + torch.special.entr(1 - p)).mean(dim=-1)


def _nanstd(values: torch.Tensor) -> torch.Tensor:
    mean = values.nanmean(dim=-1, keepdim=True)
    return ((values - mean) ** 2).nanmean(dim=-1).sqrt()
