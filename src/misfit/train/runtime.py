"""Process settings for training and evaluation: device, threads, allocator."""
from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

from misfit.core.config import ProtocolConfig

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Stop glibc from handing freed activations back to the OS after every step.

    Without this each training step's large tensors are fresh mmaps that page-fault
    on first touch; measured here that made max-pooling 3x slower (bench/epoch.py).
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        one_gib = 1 << 30
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, one_gib)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, one_gib))
    except (OSError, AttributeError):
        return False


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("protocol.device is 'cuda' but torch sees no CUDA device")
    return torch.device(choice)


def make_cuda_repeatable() -> None:
    """Bit-identical runs on a GPU, as on the CPU.

    By default cuDNN and cuBLAS may pick algorithms that accumulate in a different order
    each call (measured on an H200: two identical 4-epoch trainings ended up to 0.074
    apart in a parameter), and convolutions round their inputs to TF32.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read at cuBLAS's first use
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.use_deterministic_algorithms(True)


def configure(protocol: ProtocolConfig) -> torch.device:
    keep_freed_memory()
    if protocol.threads:
        torch.set_num_threads(protocol.threads)
    device = pick_device(protocol.device)
    if device.type == "cuda":
        make_cuda_repeatable()
    return device
