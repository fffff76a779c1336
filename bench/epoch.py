"""Seconds per model-epoch: the reference training loop against the project's.

    python bench/epoch.py            # 2 rounds of 4 epochs each way
    python bench/epoch.py --quick    # under a minute; the last line is JSON
    python bench/epoch.py --vmap     # also the vmap way of batching seeds
    python bench/epoch.py --compile  # also the project's loop with torch.compile (an experiment)

One model-epoch = one pass over the 2,000 training images in batches of 32 plus the
valid metric on the 3,000 valid images, for one seed. The reference is the way the
seeds trained: a torch Dataset applying ToTensor + Normalize per sample and DataLoaders
of batch 32 for train and valid. The project's way is `CellTrainer` with several seeds
trained as one batched model. Each side runs in its own fresh process (so neither
inherits the other's allocator or thread state), alternating A B A B, on the same
images; the figure per side is the median over epochs after the first (warm-up).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN, N_VALID = 2000, 3000


def load_images() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """The pipeline's split if it exists, else random digits of the same shape."""
    split = ROOT / "data" / "split"
    if (split / "train.npz").exists():
        with np.load(split / "train.npz") as train, np.load(split / "valid.npz") as valid:
            if len(train["labels"]) >= N_TRAIN and len(valid["labels"]) >= N_VALID:
                return (train["images"][:N_TRAIN], train["labels"][:N_TRAIN].astype(np.int64),
                        valid["images"][:N_VALID], valid["labels"][:N_VALID].astype(np.int64), "data/split")
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8), rng.integers(0, 10, N_TRAIN),
            rng.integers(0, 256, (N_VALID, 28, 28), dtype=np.uint8), rng.integers(0, 10, N_VALID),
            "random pixels")


def reference_epochs(epochs: int) -> list[float]:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from misfit.train.model import CNN

    class Digits(Dataset):
        def __init__(self, images, labels):
            self.images, self.labels = images, labels
            self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.transform(self.images[i]), int(self.labels[i])

    xt, yt, xv, yv, _ = load_images()
    torch.manual_seed(0)
    train = DataLoader(Digits(xt, yt), batch_size=32, shuffle=True)
    valid = DataLoader(Digits(xv, yv), batch_size=32)
    model = CNN(10, "softmax")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        for x, y in train:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in valid:
                correct += int((model(x).argmax(1) == y).sum())
        times.append(time.perf_counter() - started)
    return times


def project_trainer(epochs: int, seeds: int):
    """The project's CellTrainer on the bench's images, and a callback stamping each epoch's end."""
    import torch

    from misfit.core.config import CellConfig, ProtocolConfig
    from misfit.data.load import CellData, Split
    from misfit.train.loop import CellTrainer
    from misfit.train.runtime import configure

    protocol = ProtocolConfig(lr=1e-3, weight_decay=0.01, batch_size=32, patience=epochs + 1,
                              max_epochs=epochs, eval_batch_size=250, normalize_mean=0.5,
                              normalize_std=0.5, device="auto", threads=0)
    device = configure(protocol)
    xt, yt, xv, yv, _ = load_images()

    def split(images, labels):
        x = torch.from_numpy(images).float().div_(255).sub_(0.5).div_(0.5).unsqueeze(1)
        return Split(x.to(device), torch.from_numpy(labels).to(device))

    data = CellData(split(xt, yt), split(xv, yv))
    cell = CellConfig(task="multiclass", activation="softmax", loss="ce", variant=None, loss_input="output")
    return CellTrainer.one_draw(cell, protocol, list(range(seeds)), data, device)


def timed_run(trainer, seeds: int) -> list[float]:
    """Seconds per model-epoch of each epoch (the first stamp lands after the epoch-0 valid pass)."""
    stamps = []
    trainer.run(lambda epoch, outcomes: stamps.append(time.perf_counter()))
    return [(b - a) / seeds for a, b in zip(stamps, stamps[1:])]


def project_epochs(epochs: int, seeds: int) -> list[float]:
    return timed_run(project_trainer(epochs, seeds), seeds)


def compiled_epochs(epochs: int, seeds: int) -> dict:
    """What torch.compile (inductor, CPU) would give the project's loop: its forward compiled.

    An experiment, not a path of the pipeline: it swaps misfit.train.loop's forward for the
    compiled one in this worker process only. The first epoch holds the compile. Trained
    again eagerly in the same process, the largest difference of any parameter after the
    same epochs says whether it keeps the numbers (the pipeline's runs are bit-identical).
    """
    import torch

    from misfit.train import loop as training
    from misfit.train import model

    training.fast_forward = torch.compile(model.fast_forward, dynamic=False)
    compiled = project_trainer(epochs, seeds)
    times = timed_run(compiled, seeds)
    training.fast_forward = model.fast_forward
    eager = project_trainer(epochs, seeds)
    eager.run()
    difference = max(float((a[name].detach() - b[name].detach()).abs().max())
                     for a, b in ((c.params, e.params) for c, e in zip(compiled.runs, eager.runs)) for name in a)
    return {"times": times, "max_abs_param_difference": difference}


def vmap_epochs(epochs: int, seeds: int) -> list[float]:
    """The textbook way to batch seeds: stacked parameters, torch.func.vmap(functional_call)."""
    import torch
    from torch import nn
    from torch.func import functional_call, stack_module_state, vmap

    from misfit.train.model import CNN
    from misfit.train.runtime import keep_freed_memory

    keep_freed_memory()
    xt, yt, xv, _, _ = load_images()
    x_train = torch.from_numpy(xt).float().div_(255).sub_(0.5).div_(0.5).unsqueeze(1)
    y_train = torch.from_numpy(yt)
    x_valid = torch.from_numpy(xv).float().div_(255).sub_(0.5).div_(0.5).unsqueeze(1)
    models = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        models.append(CNN(10, "softmax"))
    params, _ = stack_module_state(models)
    params = {name: tensor.detach().clone().requires_grad_() for name, tensor in params.items()}
    base = CNN(10, "softmax").to("meta")

    def forward(p, x):
        return functional_call(base, p, (x,))

    per_seed_batch, shared_input = vmap(forward), vmap(forward, in_dims=(0, None))
    optimizer = torch.optim.AdamW(params.values(), lr=1e-3, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    generators = [torch.Generator().manual_seed(seed) for seed in range(seeds)]
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        orders = torch.stack([torch.randperm(N_TRAIN, generator=g) for g in generators])
        for start in range(0, N_TRAIN, 32):
            rows = orders[:, start : start + 32]
            out = per_seed_batch(params, x_train[rows])
            loss = sum(loss_fn(out[s], y_train[rows[s]]) for s in range(seeds))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            for start in range(0, N_VALID, 250):
                shared_input(params, x_valid[start : start + 250])
        times.append((time.perf_counter() - started) / seeds)
    return times


def run_worker(kind: str, epochs: int, seeds: int):
    command = [sys.executable, __file__, "--worker", kind, "--epochs", str(epochs), "--seeds", str(seeds)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 epochs each way")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3, help="seeds batched in the project's run")
    parser.add_argument("--vmap", action="store_true",
                        help="also time seeds batched with torch.func.vmap over stacked parameters")
    parser.add_argument("--compile", action="store_true",
                        help="also time the project's loop with its forward under torch.compile (an experiment)")
    parser.add_argument("--worker", choices=["reference", "project", "vmap", "compile"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        workers = {"reference": lambda: reference_epochs(args.epochs),
                   "project": lambda: project_epochs(args.epochs, args.seeds),
                   "vmap": lambda: vmap_epochs(args.epochs, args.seeds),
                   "compile": lambda: compiled_epochs(args.epochs, args.seeds)}
        print(json.dumps(workers[args.worker]()))
        return
    rounds, epochs = (1, 3) if args.quick else (args.rounds, args.epochs)
    source = load_images()[-1]
    print(f"data: {source}; {rounds} round(s) of {epochs} epochs each way; project batches {args.seeds} seeds")
    reference, project, vmapped, compiled, differences = [], [], [], [], []
    for round_no in range(rounds):
        ref = run_worker("reference", epochs, args.seeds)
        ours = run_worker("project", epochs, args.seeds)
        print(f"round {round_no + 1}: reference {' '.join(f'{t:.3f}' for t in ref)} s | "
              f"project {' '.join(f'{t:.3f}' for t in ours)} s per model-epoch")
        reference += ref[1:]
        project += ours[1:]
        if args.vmap:
            batched = run_worker("vmap", epochs, args.seeds)
            print(f"         vmap over stacked parameters {' '.join(f'{t:.3f}' for t in batched)} s")
            vmapped += batched[1:]
        if args.compile:
            found = run_worker("compile", epochs, args.seeds)
            print(f"         torch.compile'd forward {' '.join(f'{t:.3f}' for t in found['times'])} s "
                  f"(the first with the compile); largest parameter difference from eager after "
                  f"{epochs} epochs: {found['max_abs_param_difference']:.3g}")
            compiled += found["times"][1:]
            differences.append(found["max_abs_param_difference"])
    ref_s, ours_s = statistics.median(reference), statistics.median(project)
    print(f"reference: {ref_s:.3f} s per model-epoch (median of {len(reference)})")
    print(f"project:   {ours_s:.3f} s per model-epoch (median of {len(project)}, {args.seeds} seeds batched)")
    print(f"ratio reference/project: {ref_s / ours_s:.2f}")
    if vmapped:
        print(f"vmap:      {statistics.median(vmapped):.3f} s per model-epoch ({args.seeds} seeds, "
              f"ratio reference/vmap {ref_s / statistics.median(vmapped):.2f})")
    if compiled:
        print(f"compiled:  {statistics.median(compiled):.3f} s per model-epoch ({args.seeds} seeds, "
              f"ratio reference/compiled {ref_s / statistics.median(compiled):.2f}; "
              f"parameters differ from eager by up to {max(differences):.3g})")
    print(json.dumps({"reference_s": round(ref_s, 4), "project_s": round(ours_s, 4),
                      "ratio": round(ref_s / ours_s, 3), "seeds": args.seeds}))


if __name__ == "__main__":
    main()
