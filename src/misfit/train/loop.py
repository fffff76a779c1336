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


@dataclass
class Run:
    """One run's state through training: its parameters, its own shuffle order and early
    stopping, and what it has come to so far."""
    index: int  # its row in the cell's per-run sums
    member: Member
    params: dict[str, torch.Tensor]
    shuffler: torch.Generator
    stopper: EarlyStopping
    outcome: SeedOutcome

    @property
    def draw(self) -> int:
        return self.member.subset_seed


class CellTrainer:
    """Trains the runs of one cell together; see the module docstring."""

    def __init__(self, cell: CellConfig, protocol: ProtocolConfig, members: list[Member],
                 draws: dict[int, CellData], device: torch.device):
        self.cell, self.protocol, self.device, self.draws = cell, protocol, device, draws
        self.targets = {d: CellTargets(cell, data.train.y) for d, data in draws.items()}
        self.loss_fn = CellLoss(cell)
        self.train_loss_target = {d: self.targets[d].loss_target(data.train.y) for d, data in draws.items()}
        self.valid_loss_target = {d: self.targets[d].loss_target(data.valid.y) for d, data in draws.items()}
        higher = TASKS[cell.task].higher_is_better
        states = initial_states(cell, [m.seed for m in members])
        self.runs = [Run(i, m, to_device(state, device), torch.Generator().manual_seed(m.seed),
                         EarlyStopping(protocol.patience, higher), SeedOutcome(m.seed, m.subset_seed))
                     for i, (m, state) in enumerate(zip(members, states))]
        self.optimizer = torch.optim.AdamW(
            [tensor for run in self.runs for tensor in run.params.values()],
            lr=protocol.lr, weight_decay=protocol.weight_decay, fused=True,
        )

    @classmethod
    def one_draw(cls, cell: CellConfig, protocol: ProtocolConfig, seeds: list[int], data: CellData,
                 device: torch.device, subset_seed: int = 0) -> CellTrainer:
        return cls(cell, protocol, [Member(subset_seed, s) for s in seeds], {subset_seed: data}, device)

    @property
    def outcomes(self) -> list[SeedOutcome]:
        return [run.outcome for run in self.runs]

    def run(self, on_epoch: Callable[[int, list[SeedOutcome]], None] | None = None) -> list[SeedOutcome]:
        self._record_initial()
        if on_epoch:
            on_epoch(0, self.outcomes)
        for epoch in range(1, self.protocol.max_epochs + 1):
            active = [run for run in self.runs if run.outcome.running]
            if not active:
                break
            self._epoch(epoch, active)
            if on_epoch:
                on_epoch(epoch, [run.outcome for run in active])
        for run in self.runs:
            if run.outcome.running:  # reached max_epochs
                self._finish(run)
        return self.outcomes

    def _epoch(self, epoch: int, active: list[Run]) -> None:
        started = time.perf_counter()
        loss_sums, grad_norms = self._train_epoch(epoch, active)
        active = [run for run in active if run.outcome.running]
        if not active:
            return
        valid = self._valid_pass(active)
        n_train = len(self.draws[self.runs[0].draw].train.x)
        n_steps = math.ceil(n_train / self.protocol.batch_size)
        train_losses = (loss_sums / n_train).tolist()
        mean_grad_norms = (grad_norms / n_steps).tolist()
        seconds = time.perf_counter() - started
        for run in active:
            values = valid[run.index]
            output = values.pop("output")
            record = {
                "epoch": epoch,
                "train_loss": train_losses[run.index],
                "valid_loss": self._valid_loss(run, output),
                **values,
                "grad_norm_fc_final": mean_grad_norms[0][run.index],
                "grad_norm_conv1": mean_grad_norms[1][run.index],
                "seconds": seconds,
            }
            self._keep(run, epoch, record)

    def _train_epoch(self, epoch: int, active: list[Run]) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over the training data: per batch, each active run's forward on its own
        batch of its own draw, one backward through the sum of their losses, one AdamW step."""
        n, batch = len(self.draws[self.runs[0].draw].train.x), self.protocol.batch_size
        orders = {run.index: torch.randperm(n, generator=run.shuffler).to(self.device) for run in active}
        loss_sums = torch.zeros(len(self.runs), dtype=torch.float64, device=self.device)
        grad_norms = torch.zeros(2, len(self.runs), dtype=torch.float64, device=self.device)
        for start in range(0, n, batch):
            losses = []
            for run in active:
                if not run.outcome.running:
                    continue
                rows = orders[run.index][start : start + batch]
                output = fast_forward(run.params, self.draws[run.draw].train.x[rows], self.cell.model_activation)
                try:
                    loss = self.loss_fn(output, self.train_loss_target[run.draw][rows])
                except LossRejected as error:
                    self._reject(run, error, f"epoch {epoch} training")
                    continue
                losses.append(loss)
                loss_sums[run.index] += loss.detach().double() * len(rows)
            if not losses:
                break
            self.optimizer.zero_grad(set_to_none=True)
            torch.stack(losses).sum().backward()
            grad_norms += torch.stack([_grad_norms(run.params) for run in self.runs], dim=1).double()
            self.optimizer.step()
        return loss_sums, grad_norms

    def _valid_pass(self, active: list[Run]) -> dict[int, dict]:
        """Per run index: valid outputs, metric and diagnostics, one batched pass per draw."""
        found = {}
        for draw in sorted({run.draw for run in active}):
            rows = [run for run in active if run.draw == draw]
            data, targets = self.draws[draw], self.targets[draw]
            outputs = batched_outputs([run.params for run in rows], data.valid.x,
                                      self.cell.model_activation, self.protocol.eval_batch_size)
            scores = targets.per_sample_score(outputs, data.valid.y).mean(dim=-1).tolist()
            diagnostics = {k: v.tolist() for k, v in targets.diagnostics(outputs, data.valid.y).items()}
            for row, run in enumerate(rows):
                found[run.index] = {"output": outputs[row], "valid_metric": scores[row],
                                    **{name: values[row] for name, values in diagnostics.items()}}
        return found

    # -- bookkeeping ------------------------------------------------------------------

    def _record_initial(self) -> None:
        """The valid scores before any update: a ReLU that starts dead shows here."""
        for index, values in self._valid_pass(self.runs).items():
            run = self.runs[index]
            output = values.pop("output")
            try:
                valid_loss = loss_in_batches(self.loss_fn, output, self.valid_loss_target[run.draw],
                                             self.protocol.batch_size)
            except LossRejected:
                valid_loss = math.nan  # the run fails on its first training batch, with the reason
            run.outcome.initial = {"epoch": 0, "valid_loss": valid_loss, **values}

    def _keep(self, run: Run, epoch: int, record: dict) -> None:
        """An epoch's record into the run's history; its best state kept; stop it if it is done."""
        outcome = run.outcome
        record["improved"] = run.stopper.update(epoch, record["valid_metric"])
        outcome.history.append(record)
        if record["improved"]:
            outcome.best_epoch, outcome.best_valid = epoch, record["valid_metric"]
            outcome.best_state = {k: v.detach().contiguous().cpu().clone() for k, v in run.params.items()}
        if not math.isfinite(record["train_loss"]):
            outcome.fail(f"the training loss became {record['train_loss']} in epoch {epoch}")
        elif run.stopper.should_stop:
            self._finish(run)

    def _finish(self, run: Run) -> None:
        if run.stopper.best is None:
            run.outcome.fail(f"the valid {TASKS[self.cell.task].metric} was never finite "
                             f"in {len(run.outcome.history)} epochs")
        else:
            run.outcome.status = "ok"

    def _valid_loss(self, run: Run, output: torch.Tensor) -> float:
        try:
            return loss_in_batches(self.loss_fn, output, self.valid_loss_target[run.draw], self.protocol.batch_size)
        except LossRejected as error:
            self._reject(run, error, "validation")
            return math.nan

    def _reject(self, run: Run, error: LossRejected, where: str) -> None:
        run.outcome.fail(f"nn.{self.loss_fn.module.__class__.__name__} rejected the {where} batch: {error}")


def test_outputs(cell: CellConfig, states: list[dict[str, torch.Tensor]], x: torch.Tensor,
                 device: torch.device, chunk: int) -> torch.Tensor:
    """Outputs of best checkpoints on a split: [len(states), n, outputs]."""
    return batched_outputs([to_device(state, device) for state in states], x, cell.model_activation, chunk)
