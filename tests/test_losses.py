"""Loss semantics cell by cell, against STUDY.md's rules written out by hand here:
the loss sees the post-activation output (raw logits for `logits` cells), targets are
shaped per task, regression and probability flatten to [batch]."""
from __future__ import annotations

import math
import statistics

import pytest
import torch
import yaml
from conftest import REPO

from misfit.core.config import CellConfig
from misfit.train.losses import CellLoss, LossRejected
from misfit.train.targets import CellTargets

CELLS = yaml.safe_load((REPO / "params.yaml").read_text())["cells"]

# STUDY.md "Tasks", digit by digit
STROKES = [2, 1, 2, 2, 6, 3, 3, 2, 4, 3]
CURVED = [1, 0, 0, 1, 0, 0, 1, 0, 1, 1]
MULTILABEL = [[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1],
              [0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1]]
N_OUTPUTS = {"regression": 1, "probability": 1, "binary": 2, "multiclass": 10, "multilabel": 4}
TRAIN_DIGITS = [0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 8, 8, 9, 9, 9]


def cell_config(cell_id: str) -> CellConfig:
    return CellConfig(**CELLS[cell_id])


def task_target(task: str, digits: list[int]) -> torch.Tensor:
    """Targets in the task's own units, as the labels stage stores them."""
    if task == "regression":
        return torch.tensor([float(STROKES[d]) for d in digits])
    if task == "probability":
        return torch.tensor([float(CURVED[d]) for d in digits])
    if task == "binary":
        return torch.tensor([CURVED[d] for d in digits])
    if task == "multiclass":
        return torch.tensor(digits)
    return torch.tensor([MULTILABEL[d] for d in digits], dtype=torch.float32)


def activation(name: str, z: torch.Tensor) -> torch.Tensor:
    return {"none": lambda: z, "relu": lambda: z.clamp_min(0), "sigmoid": lambda: 1 / (1 + torch.exp(-z)),
            "softmax": lambda: torch.exp(z) / torch.exp(z).sum(-1, keepdim=True)}[name]()


def expected_target(spec: dict, digits: list[int]) -> torch.Tensor:
    """What STUDY.md says each loss is given, in float64 (class indices stay integers)."""
    task, loss = spec["task"], spec["loss"]
    if task == "regression":
        y = torch.tensor([float(STROKES[d]) for d in digits], dtype=torch.float64)
        if spec["variant"] == "zscore":
            train = [float(STROKES[d]) for d in TRAIN_DIGITS]
            y = (y - statistics.mean(train)) / statistics.stdev(train)
        return 1 / (1 + torch.exp(-y)) if spec["activation"] == "sigmoid" else y
    if task == "probability":
        return torch.tensor([float(CURVED[d]) for d in digits], dtype=torch.float64)
    if task in ("binary", "multiclass"):
        classes = [CURVED[d] for d in digits] if task == "binary" else digits
        if loss == "ce":
            return torch.tensor(classes)
        one_hot = torch.zeros(len(digits), N_OUTPUTS[task], dtype=torch.float64)
        one_hot[range(len(digits)), classes] = 1
        return one_hot
    return torch.tensor([MULTILABEL[d] for d in digits], dtype=torch.float64)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    return x - torch.logsumexp(x, dim=-1, keepdim=True)


def expected_loss(loss: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PyTorch's loss modules written out (float64, mean reduction)."""
    if loss == "mse":
        return ((out - target) ** 2).mean()
    if loss == "mae":
        return (out - target).abs().mean()
    if loss == "rmse":
        return torch.sqrt(((out - target) ** 2).mean() + 1e-8)
    if loss == "bce":
        # nn.BCELoss clamps each log at -100, so an output of exactly 0 or 1 costs 100
        return -(target * torch.log(out).clamp_min(-100) + (1 - target) * torch.log(1 - out).clamp_min(-100)).mean()
    if loss == "bcelogits":
        return (torch.nn.functional.softplus(out) - target * out).mean()
    if loss == "ce":
        if target.dtype == torch.int64:  # class indices: one sample per row
            return (torch.logsumexp(out, -1) - out.gather(-1, target[:, None])[:, 0]).mean()
        # float target of the input's shape: class probabilities; a 1-D input is ONE sample
        per_sample = -(target * log_softmax(out)).sum(-1)
        return per_sample if out.dim() == 1 else per_sample.mean()
    raise AssertionError(loss)


def random_batch(cell_id: str, seed: int, n: int = 12):
    spec = CELLS[cell_id]
    generator = torch.Generator().manual_seed(seed)
    digits = torch.randint(0, 10, (n,), generator=generator).tolist()
    z = torch.randn(n, N_OUTPUTS[spec["task"]], generator=generator) * 2
    return spec, digits, z


def model_output(spec: dict, z: torch.Tensor) -> torch.Tensor:
    # what the network hands the loss: the activation applied, unless the loss eats logits
    return z if spec["loss_input"] == "logits" else activation(spec["activation"], z)


def cell_loss(cell_id: str, output: torch.Tensor, digits: list[int]) -> torch.Tensor:
    cell = cell_config(cell_id)
    targets = CellTargets(cell, task_target(cell.task, TRAIN_DIGITS))
    return CellLoss(cell)(output, targets.loss_target(task_target(cell.task, digits)))


def test_all_42_cells_are_checked():
    assert len(CELLS) == 42
    assert all(cell_config(cell_id).cell_id() == cell_id for cell_id in CELLS)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("cell_id", sorted(CELLS))
def test_loss_of_every_cell_follows_the_study(cell_id, seed):
    spec, digits, z = random_batch(cell_id, seed)
    output = model_output(spec, z)
    if cell_id == "regression-none-bce-zscore":
        with pytest.raises(LossRejected, match="between 0 and 1"):
            cell_loss(cell_id, output, digits)
        return
    got = cell_loss(cell_id, output, digits)
    out = model_output(spec, z.double())
    if spec["task"] in ("regression", "probability"):
        out = out.reshape(-1)
    want = expected_loss(spec["loss"], out, expected_target(spec, digits))
    assert got.dim() == 0 and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("cell_id", ["binary-softmax-ce", "multiclass-softmax-ce"])
def test_softmax_then_ce_applies_softmax_twice(cell_id):
    spec, digits, z = random_batch(cell_id, 7)
    classes = expected_target(spec, digits)
    got = cell_loss(cell_id, torch.softmax(z, -1), digits).double()
    twice = expected_loss("ce", torch.softmax(z.double(), -1), classes)
    once = expected_loss("ce", z.double(), classes)
    torch.testing.assert_close(got, twice, rtol=2e-6, atol=1e-6)
    assert abs(float(got - once)) > 1e-2
    # a softmax output lies in [0,1], so the second softmax cannot be confident
    assert float(got) > math.log(N_OUTPUTS[spec["task"]]) - 1 + 1 / N_OUTPUTS[spec["task"]] - 1e-6


@pytest.mark.parametrize(("cell_id", "loss"), [("binary-logits-ce", "ce"), ("multiclass-logits-ce", "ce"),
                                               ("probability-logits-bcelogits", "bcelogits"),
                                               ("multilabel-logits-bcelogits", "bcelogits")])
def test_logits_cells_feed_raw_logits(cell_id, loss):
    spec, digits, z = random_batch(cell_id, 11)
    assert cell_config(cell_id).model_activation == "none"
    got = cell_loss(cell_id, z, digits).double()
    flat = z.double().reshape(-1) if spec["task"] == "probability" else z.double()
    torch.testing.assert_close(got, expected_loss(loss, flat, expected_target(spec, digits)), rtol=2e-6, atol=1e-6)


def test_bce_on_z_scored_regression_is_rejected():
    cell = cell_config("regression-none-bce-zscore")
    targets = CellTargets(cell, task_target("regression", TRAIN_DIGITS))
    target = targets.loss_target(task_target("regression", [4, 1, 8]))
    assert target.min() < 0 < 1 < target.max()  # z-scored strokes leave [0, 1] on both sides
    with pytest.raises(LossRejected, match="between 0 and 1") as caught:
        CellLoss(cell)(torch.tensor([[-0.5], [0.2], [1.7]]), target)
    assert isinstance(caught.value.__cause__, RuntimeError)


RANGE_CASES = [  # (output, target, the word nn.BCELoss's CPU error names)
    pytest.param([[-0.5], [0.2]], [0.0, 1.0], "input", id="output-below-0"),
    pytest.param([[0.5], [1.2]], [0.0, 1.0], "input", id="output-above-1"),
    pytest.param([[math.nan], [0.2]], [0.0, 1.0], "input", id="output-nan"),
    # a fresh net's outputs can all lie in [0, 1] (seed 1 of the study does) while
    # z-scored targets do not: rejected for the target
    pytest.param([[0.01], [0.02]], [-0.6, 1.4], "target", id="target-outside"),
]


@pytest.mark.parametrize(("output", "target", "word"), RANGE_CASES)
def test_bce_range_rejections_on_cpu(output, target, word):
    with pytest.raises(LossRejected, match=f"all elements of {word} should be between 0 and 1"):
        CellLoss(cell_config("regression-none-bce-zscore"))(torch.tensor(output), torch.tensor(target))


CUDA_SNIPPET = """
import json, sys, torch
from misfit.core.config import CellConfig
from misfit.train.losses import CellLoss, LossRejected
loss = CellLoss(CellConfig(task="regression", activation="none", loss="bce", variant="zscore", loss_input="output"))
results = []
for output, target in json.loads(sys.argv[1]):
    try:
        loss(torch.tensor(output, device="cuda"), torch.tensor(target, device="cuda"))
        results.append("accepted")
    except LossRejected as error:
        results.append(str(error))
torch.cuda.synchronize()  # a device-side assert would surface here, killing the process
print(json.dumps(results))
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA path of CellLoss needs a GPU")
def test_bce_range_rejections_on_cuda_match_the_cpu():
    # in a subprocess: a device-side assert poisons the CUDA context of the whole process
    import json
    import subprocess
    import sys

    cases = [case.values for case in RANGE_CASES]
    done = subprocess.run([sys.executable, "-c", CUDA_SNIPPET, json.dumps([[o, t] for o, t, _ in cases])],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [f"all elements of {word} should be between 0 and 1" for _, _, word in cases]


def test_probability_softmax_ce_has_zero_gradient():
    assert cell_config("probability-softmax-ce").activation == "softmax"
    digits = [0, 1, 3, 4, 6, 7, 8, 2]
    z = torch.randn(len(digits), 1, generator=torch.Generator().manual_seed(3), requires_grad=True)
    output = torch.softmax(z, dim=-1)
    assert torch.equal(output, torch.ones_like(output))  # softmax over one output
    loss = cell_loss("probability-softmax-ce", output, digits)
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    # the flattened batch is one sample of 8 equal scores: -sum(t) * log(1/8)
    assert float(loss.detach()) == pytest.approx(sum(CURVED[d] for d in digits) * math.log(len(digits)), rel=1e-6)


def test_probability_softmax_bce_pays_the_clamped_log_for_every_negative():
    # softmax over one output is exactly 1: a curved-or-not 0 target costs log(0) clamped to -100
    digits = [0, 1, 2, 3]
    loss = cell_loss("probability-softmax-bce", torch.ones(4, 1), digits)
    assert float(loss) == pytest.approx(100 * sum(1 - CURVED[d] for d in digits) / 4)


def test_flattened_ce_reads_the_whole_batch_as_one_sample():
    # regression and probability flatten to [batch]: cross-entropy then spans the samples,
    # so halving a batch changes the loss, which a per-sample loss would not
    digits = [0, 3, 6, 8, 1, 2, 4, 5]
    output = torch.linspace(0.1, 0.9, 8)[:, None]
    whole = float(cell_loss("probability-softmax-ce", output, digits))
    halves = (float(cell_loss("probability-softmax-ce", output[:4], digits[:4]))
              + float(cell_loss("probability-softmax-ce", output[4:], digits[4:]))) / 2
    want = expected_loss("ce", output.double()[:, 0], torch.tensor([float(CURVED[d]) for d in digits]).double())
    assert whole == pytest.approx(float(want), rel=1e-6)
    assert abs(whole - halves) > 0.1


def test_mse_on_a_flattened_task_is_not_broadcast():
    # [batch, 1] against [batch] would broadcast to [batch, batch] without the flattening
    output = torch.tensor([[1.0], [2.0], [3.0]])
    loss = cell_loss("regression-none-mse-raw", output, [1, 0, 4])  # strokes 1, 2, 6
    assert float(loss) == pytest.approx((0 + 0 + 9) / 3)


def test_rmse_has_the_epsilon_inside_the_root():
    # at zero error the loss is sqrt(1e-8), not 0
    cell = cell_config("probability-none-rmse")
    loss = CellLoss(cell)(torch.tensor([[1.0], [0.0]]), torch.tensor([1.0, 0.0]))
    assert float(loss) == pytest.approx(1e-4)
    loss = CellLoss(cell)(torch.tensor([[0.0], [0.0]]), torch.tensor([1.0, 0.0]))
    assert float(loss) == pytest.approx(math.sqrt(0.5 + 1e-8))


def test_mae_is_l1():
    cell = cell_config("probability-sigmoid-mae")
    loss = CellLoss(cell)(torch.tensor([[0.25], [0.5], [0.875]]), torch.tensor([1.0, 0.0, 1.0]))
    assert float(loss) == pytest.approx((0.75 + 0.5 + 0.125) / 3)


# -- targets the losses are given ----------------------------------------------------

TRAIN_STROKES = torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0])  # mean 3.2, sample std sqrt(3.7)
MEAN, STD = 3.2, math.sqrt(3.7)


@pytest.mark.parametrize(("cell_id", "transform"), [
    ("regression-none-mse-zscore", lambda y: (y - MEAN) / STD),
    ("regression-relu-mse-zscore", lambda y: (y - MEAN) / STD),
    ("regression-none-mse-raw", lambda y: y),
    ("regression-relu-mse-raw", lambda y: y),
    ("regression-sigmoid-mse-raw", lambda y: 1 / (1 + math.exp(-y))),
    ("regression-sigmoid-mse-zscore", lambda y: 1 / (1 + math.exp(-(y - MEAN) / STD))),
])
def test_regression_target_transforms(cell_id, transform):
    targets = CellTargets(cell_config(cell_id), TRAIN_STROKES)
    y = torch.tensor([1.0, 2.0, 6.0])
    got = targets.loss_target(y)
    assert got.shape == (3,)
    assert got.tolist() == pytest.approx([transform(v) for v in y.tolist()], rel=1e-6)


def test_z_score_uses_the_train_targets_only():
    cell = cell_config("regression-none-mse-zscore")
    a = CellTargets(cell, TRAIN_STROKES).loss_target(torch.tensor([3.2]))
    b = CellTargets(cell, TRAIN_STROKES + 1).loss_target(torch.tensor([3.2]))
    assert float(a) == pytest.approx(0, abs=1e-6) and float(b) == pytest.approx(-1 / STD, rel=1e-6)


def test_z_score_refuses_constant_targets():
    with pytest.raises(ValueError, match="zero spread"):
        CellTargets(cell_config("regression-none-mse-zscore"), torch.full((5,), 2.0))


@pytest.mark.parametrize(("cell_id", "want"), [
    ("binary-softmax-ce", [1, 0, 1]),
    ("binary-softmax-mse", [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]),
    ("binary-sigmoid-bce", [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]),
    ("binary-softmax-bcelogits", [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]),
    ("probability-sigmoid-bce", [1.0, 0.0, 1.0]),
    ("probability-softmax-ce", [1.0, 0.0, 1.0]),
    ("multilabel-softmax-ce", [MULTILABEL[0], MULTILABEL[7], MULTILABEL[9]]),
    ("multilabel-sigmoid-mse", [MULTILABEL[0], MULTILABEL[7], MULTILABEL[9]]),
])
def test_classification_targets_per_loss(cell_id, want):
    cell = cell_config(cell_id)
    digits = [0, 7, 9]
    target = CellTargets(cell, task_target(cell.task, digits)).loss_target(task_target(cell.task, digits))
    assert target.tolist() == want
    assert target.dtype == (torch.int64 if cell.loss == "ce" and cell.task == "binary" else torch.float32)


def test_multiclass_targets_one_hot_unless_ce():
    digits = [3, 0, 9]
    ce = CellTargets(cell_config("multiclass-softmax-ce"), torch.tensor(digits)).loss_target(torch.tensor(digits))
    mse = CellTargets(cell_config("multiclass-softmax-mse"), torch.tensor(digits)).loss_target(torch.tensor(digits))
    assert ce.tolist() == digits
    assert mse.dtype == torch.float32 and mse.shape == (3, 10)
    assert mse.tolist() == [[float(c == d) for c in range(10)] for d in digits]
