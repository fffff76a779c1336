"""Training of one cell: all its runs as one batched model, each with its own fate.

A run is a (data draw, seed) pair: the main draw's seeds, and for some cells a few seeds
on further draws. The runs train in one loop: one forward per run on its own batch of
its own draw, one backward through the sum of their losses, and one fused AdamW step
over every run's parameters. Each run keeps its own initialisation, shuffle order,
optimizer state and early stopping, and once it stops it is no longer run. Runs share no
tensor, so every run follows bit for bit the trajectory it follows when trained alone
(tests/test_determinism.py).

Measured here (bench/epoch.py): vmap over stacked parameters lowers the convolutions to
oneDNN grouped convolutions, 1.5-3x slower than issuing one convolution per seed, and
a stacked AdamW rounds the tails of its vector loops differently from a lone seed's.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from misfit.core.config import CellConfig, ProtocolConfig
from misfit.core.tasks import TASKS
from misfit.data.load import CellData
from misfit.train.losses import CellLoss, LossRejected
from misfit.train.model import CNN, fast_forward
from misfit.train.targets import CellTargets


@dataclass(frozen=True)
class Member:
    """One run of a cell: the data draw (data.subset_seed) and the seed."""
    subset_seed: int
    seed: int


@dataclass
class SeedOutcome:
    seed: int
    subset_seed: int = 0
    status: str = "running"  # running -> ok | failed
    error: str | None = None
    best_epoch: int | None = None
    best_valid: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    initial: dict = field(default_factory=dict)  # valid scores and diagnostics before any update
    history: list[dict] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.status == "running"

    def fail(self, message: str) -> None:
        self.status, self.error = "failed", message


class EarlyStopping:
    """Stop after `patience` epochs without a strict improvement of a finite value."""

    def __init__(self, patience: int, higher_is_better: bool):
        self.patience = patience
        self.higher_is_better = higher_is_better
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.epochs_since_best = 0

    def update(self, epoch: int, value: float) -> bool:
        better = self.best is None or (
            value > self.best if self.higher_is_better else value < self.best
        )
        if math.isfinite(value) and better:
            self.best, self.best_epoch, self.epochs_since_best = value, epoch, 0
            return True
        self.epochs_since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.epochs_since_best >= self.patience


def to_device(state: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Trainable copies of a state dict; conv weights channels_last, the layout oneDNN wants."""
    params = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to(device)
        if tensor.dim() == 4:  # .contiguous() would keep NCHW strides when channels == 1
            tensor = torch.empty_like(tensor, memory_format=torch.channels_last).copy_(tensor)
        params[name] = tensor.clone(memory_format=torch.preserve_format).requires_grad_()
    return params


def initial_states(cell: CellConfig, seeds: list[int]) -> list[dict[str, torch.Tensor]]:
    states = []
    for seed in seeds:
        torch.manual_seed(seed)
        states.append(CNN(cell.n_outputs, cell.model_activation).state_dict())
    return states


@torch.no_grad()
def batched_outputs(seeds: list[dict[str, torch.Tensor]], x: torch.Tensor, activation: str,
                    chunk: int) -> torch.Tensor:
    """Model outputs of each seed's parameters on all of x: [len(seeds), n, outputs]."""
    per_seed = []
    for params in seeds:
        parts = [fast_forward(params, x[i : i + chunk], activation) for i in range(0, len(x), chunk)]
        per_seed.append(torch.cat(parts))
    return torch.stack(per_seed)


def loss_in_batches(loss_fn: CellLoss, output: torch.Tensor, target: torch.Tensor, batch_size: int) -> float:
    """Mean loss over batches of the training batch size, as a DataLoader would give it.

    Batch-wise matters: rmse and the flattened `ce` are not means over samples.
    """
    total = 0.0
    for i in range(0, len(output), batch_size):
        total += float(loss_fn(output[i : i + batch_size], target[i : i + batch_size])) * len(
            output[i : i + batch_size]
        )
    return total / len(output)


def _grad_norms(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """L2 norm of the gradient reaching fc_final and conv1; zeros for a seed not run."""
    grads = [params[name].grad for name in ("fc_final.weight", "conv1.weight")]
    if grads[0] is None:
        return torch.zeros(2, device=params["conv1.weight"].device)
    return torch.stack([grad.norm() for grad in grads])


class CellTrainer:
    """Trains the runs of one cell together; see the module docstring."""

    def __init__(self, cell: CellConfig, protocol: ProtocolConfig, members: list[Member],
                 draws: dict[int, CellData], device: torch.device):
        self.cell, self.protocol, self.members, self.device = cell, protocol, members, device
        self.draws = draws
        self.targets = {d: CellTargets(cell, data.train.y) for d, data in draws.items()}
        self.loss_fn = CellLoss(cell)
        self.train_loss_target = {d: self.targets[d].loss_target(data.train.y) for d, data in draws.items()}
        self.valid_loss_target = {d: self.targets[d].loss_target(data.valid.y) for d, data in draws.items()}
        self.params = [to_device(state, device) for state in initial_states(cell, [m.seed for m in members])]
        self.optimizer = torch.optim.AdamW(
            [tensor for params in self.params for tensor in params.values()],
            lr=protocol.lr, weight_decay=protocol.weight_decay, fused=True,
        )
        self.shufflers = [torch.Generator().manual_seed(m.seed) for m in members]
        self.outcomes = [SeedOutcome(m.seed, m.subset_seed) for m in members]
        higher = TASKS[cell.task].higher_is_better
        self.stoppers = [EarlyStopping(protocol.patience, higher) for _ in members]

    @classmethod
    def one_draw(cls, cell: CellConfig, protocol: ProtocolConfig, seeds: list[int], data: CellData,
                 device: torch.device, subset_seed: int = 0) -> CellTrainer:
        return cls(cell, protocol, [Member(subset_seed, s) for s in seeds], {subset_seed: data}, device)

    def run(self, on_epoch: Callable[[int, list[SeedOutcome]], None] | None = None) -> list[SeedOutcome]:
        self._record_initial()
        if on_epoch:
            on_epoch(0, self.outcomes)
        for epoch in range(1, self.protocol.max_epochs + 1):
            active = [i for i, outcome in enumerate(self.outcomes) if outcome.running]
            if not active:
                break
            self._epoch(epoch, active)
            if on_epoch:
                on_epoch(epoch, [self.outcomes[i] for i in active])
        for outcome, stopper in zip(self.outcomes, self.stoppers):
            if outcome.running:  # reached max_epochs
                self._finish(outcome, stopper)
        return self.outcomes

    def _valid_pass(self, active: list[int]) -> dict[int, dict]:
        """Per run index: valid outputs, metric and diagnostics, one batched pass per draw."""
        found = {}
        for draw in sorted({self.members[i].subset_seed for i in active}):
            rows = [i for i in active if self.members[i].subset_seed == draw]
            data, targets = self.draws[draw], self.targets[draw]
            outputs = batched_outputs([self.params[i] for i in rows], data.valid.x,
                                      self.cell.model_activation, self.protocol.eval_batch_size)
            scores = targets.per_sample_score(outputs, data.valid.y).mean(dim=-1).tolist()
            diagnostics = {k: v.tolist() for k, v in targets.diagnostics(outputs, data.valid.y).items()}
            for row, i in enumerate(rows):
                found[i] = {"output": outputs[row], "valid_metric": scores[row],
                            **{name: values[row] for name, values in diagnostics.items()}}
        return found

    def _record_initial(self) -> None:
        """The valid scores before any update: a ReLU that starts dead shows here."""
        everyone = list(range(len(self.members)))
        for i, values in self._valid_pass(everyone).items():
            output = values.pop("output")
            draw = self.members[i].subset_seed
            try:
                valid_loss = loss_in_batches(self.loss_fn, output, self.valid_loss_target[draw],
                                             self.protocol.batch_size)
            except LossRejected:
                valid_loss = math.nan  # the run fails on its first training batch, with the reason
            self.outcomes[i].initial = {"epoch": 0, "valid_loss": valid_loss, **values}

    def _epoch(self, epoch: int, active: list[int]) -> None:
        started = time.perf_counter()
        loss_sums, grad_norms = self._train_epoch(epoch, active)
        active = [i for i in active if self.outcomes[i].running]
        if not active:
            return
        valid = self._valid_pass(active)
        n_train = len(self.draws[self.members[0].subset_seed].train.x)
        n_steps = math.ceil(n_train / self.protocol.batch_size)
        train_losses = (loss_sums / n_train).tolist()
        mean_grad_norms = (grad_norms / n_steps).tolist()
        seconds = time.perf_counter() - started
        for i in active:
            outcome, stopper = self.outcomes[i], self.stoppers[i]
            values = valid[i]
            output, score = values.pop("output"), values["valid_metric"]
            record = {
                "epoch": epoch,
                "train_loss": train_losses[i],
                "valid_loss": self._valid_loss(outcome, output, self.members[i].subset_seed),
                **values,
                "grad_norm_fc_final": mean_grad_norms[0][i],
                "grad_norm_conv1": mean_grad_norms[1][i],
                "seconds": seconds,
            }
            record["improved"] = stopper.update(epoch, score)
            outcome.history.append(record)
            if record["improved"]:
                outcome.best_epoch, outcome.best_valid = epoch, score
                outcome.best_state = {k: v.detach().contiguous().cpu().clone() for k, v in self.params[i].items()}
            if not math.isfinite(train_losses[i]):
                outcome.fail(f"the training loss became {train_losses[i]} in epoch {epoch}")
            elif stopper.should_stop:
                self._finish(outcome, stopper)

    def _finish(self, outcome: SeedOutcome, stopper: EarlyStopping) -> None:
        if stopper.best is None:
            outcome.fail(f"the valid {TASKS[self.cell.task].metric} was never finite "
                         f"in {len(outcome.history)} epochs")
        else:
            outcome.status = "ok"

    def _valid_loss(self, outcome: SeedOutcome, output: torch.Tensor, draw: int) -> float:
        try:
            return loss_in_batches(self.loss_fn, output, self.valid_loss_target[draw], self.protocol.batch_size)
        except LossRejected as error:
            self._reject(outcome, error, "validation")
            return math.nan

    def _reject(self, outcome: SeedOutcome, error: LossRejected, where: str) -> None:
        outcome.fail(f"nn.{self.loss_fn.module.__class__.__name__} rejected the {where} batch: {error}")

    def _train_epoch(self, epoch: int, active: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        n, batch = len(self.draws[self.members[0].subset_seed].train.x), self.protocol.batch_size
        orders = {i: torch.randperm(n, generator=self.shufflers[i]).to(self.device) for i in active}
        loss_sums = torch.zeros(len(self.members), dtype=torch.float64, device=self.device)
        grad_norms = torch.zeros(2, len(self.members), dtype=torch.float64, device=self.device)
        for start in range(0, n, batch):
            losses = []
            for i in active:
                if not self.outcomes[i].running:
                    continue
                draw = self.members[i].subset_seed
                rows = orders[i][start : start + batch]
                output = fast_forward(self.params[i], self.draws[draw].train.x[rows], self.cell.model_activation)
                try:
                    loss = self.loss_fn(output, self.train_loss_target[draw][rows])
                except LossRejected as error:
                    self._reject(self.outcomes[i], error, f"epoch {epoch} training")
                    continue
                losses.append(loss)
                loss_sums[i] += loss.detach().double() * len(rows)
            if not losses:
                break
            self.optimizer.zero_grad(set_to_none=True)
            torch.stack(losses).sum().backward()
            grad_norms += torch.stack([_grad_norms(params) for params in self.params], dim=1).double()
            self.optimizer.step()
        return loss_sums, grad_norms


def test_outputs(cell: CellConfig, states: list[dict[str, torch.Tensor]], x: torch.Tensor,
                 device: torch.device, chunk: int) -> torch.Tensor:
    """Outputs of best checkpoints on a split: [len(states), n, outputs]."""
    return batched_outputs([to_device(state, device) for state in states], x, cell.model_activation, chunk)
