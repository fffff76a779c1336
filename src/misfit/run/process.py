"""What a process inherits from its parent besides its memory, and the parent-death signal.

Standard library only: misfit.run.cell_task, shipped to Dask workers by value, imports it.
"""
from __future__ import annotations

import ctypes
import os
import resource
import signal
from pathlib import Path

PR_SET_PDEATHSIG = 1

# /proc/self/status lines a child inherits and that change what it may do or compute:
# umask, ids, capabilities, privilege and syscall filters, blocked and ignored signals,
# and the CPUs and memory nodes it may run on (torch sizes its thread pool from the CPUs)
STATUS_FIELDS = ("Umask", "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                 "NoNewPrivs", "Seccomp", "Seccomp_filters", "SigBlk", "SigIgn",
                 "Cpus_allowed_list", "Mems_allowed_list")


def arm_parent_death_signal(signum: int = signal.SIGTERM) -> None:
    """`signum` to this process when the thread that forked it ends (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:  # not Linux, or hidden by the kernel's settings: the same for both sides
        return None


def _status_fields() -> dict[str, str]:
    fields = {}
    for line in (_read("/proc/self/status") or "").splitlines():
        name, _, value = line.partition(":")
        if name in STATUS_FIELDS:
            fields[name] = " ".join(value.split())
    return fields


def _namespaces() -> dict[str, str]:
    links = {}
    with_ns = Path("/proc/self/ns")
    if with_ns.is_dir():
        for link in sorted(with_ns.iterdir()):
            try:
                links[link.name] = os.readlink(link)
            except OSError:
                links[link.name] = None
    return links


def _umask() -> int:
    # /proc/self/status has it since Linux 4.7; elsewhere set it and put it back (one thread here)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def inherited_attributes() -> dict:
    """Everything a forked child would take from this process, other than memory, that a
    fresh process started here would take too: a worker serves a stage only when the two
    agree, so the stage's child computes and may do what the stage's own process would."""
    return {
        "status": _status_fields(),
        "umask": _umask(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "rlimits": {name: resource.getrlimit(getattr(resource, name))
                    for name in sorted(dir(resource)) if name.startswith("RLIMIT_")},
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "scheduler": os.sched_getscheduler(0),
        "ids": [os.getresuid(), os.getresgid(), sorted(os.getgroups())],
        "namespaces": _namespaces(),
        "cgroup": _read("/proc/self/cgroup"),
        "security_label": _read("/proc/self/attr/current"),  # AppArmor / SELinux
        "oom_score_adj": _read("/proc/self/oom_score_adj"),
    }
