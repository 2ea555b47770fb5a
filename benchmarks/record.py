"""The environment record every benchmark JSON carries: versions, CPU, threads, seed, git commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(seed: int, packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Versions (python, torch, numpy, fisherpack and ``packages``), CPU, threads, seed, git commit."""
    import fisherpack

    status = _git("status", "--porcelain", "--untracked-files=no")
    names = ("torch", "numpy", "matplotlib", *packages)
    return {
        "python": platform.python_version(),
        "fisherpack": fisherpack.__version__,
        "versions": {name: _version(name) for name in names},
        "platform": platform.platform(),
        "cpu": _cpu(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }
