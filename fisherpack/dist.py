"""Running under torch.distributed (torchrun): one process or many, the same file.

fisherpack starts no process group of its own (only :func:`init_from_env`, which the CLI calls).
Every function here asks ``torch.distributed.is_available() and is_initialized()``; without a
group, or with a group of one, it does nothing, so a single-process run is unchanged bit for bit.
With a group of N ranks (the default group, ranks 0..N-1):

- data: every rank draws the same seeded permutation of each epoch and keeps positions
  ``rank, rank + N, rank + 2N, ...`` of each global mini-batch (:func:`shard`, the scheme of torch's
  DistributedSampler without padding): the shards are disjoint and together make the global batch;
- training: the model is wrapped in DistributedDataParallel (:func:`wrap`), which averages
  gradients over ranks during backward (train.py scales the loss so that this average is the mean
  gradient of the global batch), so every rank holds the same weights and the same Adam state;
- Fisher: float64 per-sample square sums and sample counts are summed over ranks
  (:func:`all_reduce_sums`) before dividing, so every rank holds the mean over all ranks' samples;
- agreement: :func:`agree` all-gathers a SHA-256 digest (of masks, Adam state or file bytes) and
  raises RanksDisagreeError on every rank if any rank differs;
- files: :func:`save` encodes on every rank, checks that the bytes agree, writes on rank 0 only
  (atomically) while the others wait to hear how the write went (:func:`from_rank0`).

Every collective runs under the process group's timeout (``init_process_group(timeout=...)``;
``init_from_env(timeout)``): a rank that died, hung or took another path makes the others stop
with a one-line DistributedError after at most that long instead of waiting forever. Collectives
use CPU tensors (gloo); init_from_env adds NCCL for CUDA tensors on machines with GPUs.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import ConfigError, DistributedError, FisherpackError, RanksDisagreeError
from .fpk import container as format
from .fpk.fileio import atomic_write_bytes
from .fpk.tensors import Compressed

__all__ = ["DEFAULT_TIMEOUT", "active", "rank", "world_size", "init_from_env", "shutdown", "shard", "wrap"]
__all__ += ["unwrap", "all_reduce_sums", "digest", "agree", "from_rank0", "save"]

DEFAULT_TIMEOUT = 600.0  # seconds a collective may wait for the other ranks


def active() -> bool:
    """True when a torch.distributed process group is initialised (of any size)."""
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return tdist.get_rank() if active() else 0


def world_size() -> int:
    """Number of ranks in the default group (1 without one)."""
    return tdist.get_world_size() if active() else 1


def _who() -> str:
    return f"rank {rank()} of {world_size()}"


@contextlib.contextmanager
def _comm(what: str) -> Iterator[None]:
    """gloo and NCCL report a timeout or a dead peer as RuntimeError with a multi-line text; a user
    needs one line saying which step failed and why."""
    try:
        yield
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines() or [exc.__class__.__name__]
        reason = re.sub(r"^\[[^\]]*\]\s*", "", lines[0])[:200]  # drop gloo's "[source.cc:78]" prefix
        raise DistributedError(
            f"{_who()}: {what} failed ({reason}); another rank died, hung or diverged: see its output "
            "(raise --timeout if a step legitimately takes longer)"
        ) from None


def _device() -> torch.device:
    # a pure NCCL group cannot move CPU tensors; every other group here has gloo for them
    return torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")


def init_from_env(timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT, LOCAL_RANK); True if the run has several processes.

    Backend gloo; with CUDA available also NCCL for CUDA tensors (``"cpu:gloo,cuda:nccl"``, device
    LOCAL_RANK). ``timeout`` seconds bound the rendezvous and every collective. With WORLD_SIZE unset
    or 1 nothing happens (False); with a group already initialised it is used as it is.
    """
    if active():
        return world_size() > 1
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise DistributedError("WORLD_SIZE and LOCAL_RANK must be integers; launch with torchrun") from None
    if size <= 1:
        return False
    if not tdist.is_available():
        raise DistributedError("this torch build has no torch.distributed; run on one process or install another torch")
    if not timeout > 0:
        raise ConfigError(f"the distributed timeout must be > 0 seconds, got {timeout}")
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    try:
        tdist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or ["unknown reason"])[0][:200]
        raise DistributedError(f"cannot join the process group ({reason}); launch with torchrun") from None
    return True


def shutdown() -> None:
    """Leave the process group, if one is initialised."""
    if active():
        # a DDP wrapper left in a reference cycle keeps the group alive past destroy, and gloo then
        # aborts the process at exit now and then ("terminate called without an active exception")
        gc.collect()
        tdist.destroy_process_group()


def shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's share of a global batch: positions rank, rank + N, ... (all of ``t`` on one process)."""
    n = world_size()
    return t if n == 1 else t[rank() :: n]


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in DistributedDataParallel under a group of several ranks, else ``model`` itself.

    DDP broadcasts rank 0's parameters and buffers to all ranks when it wraps. Wrap once, after
    loading any state; train the wrapper; the optimizer keeps the inner model's parameters.
    """
    if world_size() == 1 or isinstance(model, DistributedDataParallel):
        return model
    with _comm("wrapping the model in DistributedDataParallel"):
        return DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def all_reduce_sums(sums: dict[str, torch.Tensor], count: int) -> tuple[dict[str, torch.Tensor], int]:
    """``sums`` and ``count`` summed over all ranks, in float64 (one all_reduce); as given on one process."""
    if world_size() == 1:
        return sums, count
    names = list(sums)
    flat = torch.cat([sums[n].reshape(-1).double().to(_device()) for n in names])
    flat = torch.cat([flat, torch.tensor([float(count)], dtype=torch.float64, device=flat.device)])  # exact < 2**53
    with _comm("summing the Fisher accumulators over ranks"):
        tdist.all_reduce(flat)
    out, start = {}, 0
    for n in names:
        out[n] = flat[start : start + sums[n].numel()].view(sums[n].shape).to(sums[n].device)
        start += sums[n].numel()
    return out, int(flat[-1].item())


def digest(tensors: dict[str, torch.Tensor]) -> bytes:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors``, in key order."""
    h = hashlib.sha256()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


def agree(value: bytes, what: str) -> list[str]:
    """Every rank's 32-byte ``value`` (a SHA-256 digest) in rank order, as hex; all ranks must call it.

    Raises RanksDisagreeError on every rank if any rank's value differs from rank 0's.
    """
    if len(value) != 32:
        raise ValueError(f"agree() compares 32-byte digests, got {len(value)} bytes")
    if world_size() == 1:
        return [value.hex()]
    mine = torch.frombuffer(bytearray(value), dtype=torch.uint8).to(_device())
    gathered = [torch.empty_like(mine) for _ in range(world_size())]
    with _comm(f"comparing {what} across ranks"):
        tdist.all_gather(gathered, mine)
    hexes = [bytes(g.cpu().tolist()).hex() for g in gathered]
    odd = [r for r, h in enumerate(hexes) if h != hexes[0]]
    if odd:
        raise RanksDisagreeError(
            f"ranks disagree on {what}: rank {odd[0]} has SHA-256 {hexes[odd[0]][:12]}..., rank 0 has "
            f"{hexes[0][:12]}... (stopping {_who()}); every rank must run the same code on the same data and settings"
        )
    return hexes


def _broadcast(t: torch.Tensor, what: str) -> torch.Tensor:
    t = t.to(_device())
    with _comm(what):
        tdist.broadcast(t, src=0)
    return t.cpu()


def from_rank0(fn: Callable[[], bytes | None], what: str) -> bytes | None:
    """Run ``fn`` (file I/O) on rank 0 only and give its result to every rank; all ranks must call it.

    If ``fn`` raises a FisherpackError or OSError, rank 0 re-raises it and every other rank raises
    DistributedError with its message, so no rank waits for a rank that gave up. It also acts as a
    barrier: no rank returns before rank 0 is done. One process: just ``fn()``.
    """
    if world_size() == 1:
        return fn()
    result, error, payload = None, None, b""
    if rank() == 0:
        try:
            result = fn()
        except (FisherpackError, OSError) as exc:
            error = exc
        payload = str(error).encode() if error is not None else result or b""
    kind = -2 if error is not None else -1 if result is None else 0  # error / None / bytes
    head = _broadcast(torch.tensor([kind, len(payload)], dtype=torch.int64), what)  # (2,) rank 0's values
    kind, size = (int(v) for v in head)
    body = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else torch.empty(size, dtype=torch.uint8)
    if size:
        body = _broadcast(body, what)
    if error is not None:
        raise error
    if kind == -2:
        message = bytes(body.numpy()).decode(errors="replace")
        raise DistributedError(f"{_who()}: stopped because rank 0 failed {what}: {message}")
    return result if rank() == 0 else None if kind == -1 else bytes(body.numpy())


def save(compressed: Compressed, path: str | os.PathLike, entropy: bool | None = None) -> tuple[int, list[str]]:
    """Write ``compressed`` as one .fpk file from a run of any number of ranks; all ranks must call it.

    Every rank encodes it and the SHA-256 of the bytes is compared across ranks (RanksDisagreeError
    on every rank, and nothing written, if any differ); rank 0 writes the file atomically and the
    others wait until it has. Returns (bytes written, every rank's SHA-256 hex in rank order). On
    one process this is ``format.save`` plus the digest: the same bytes.
    """
    data = format.encode(compressed, entropy=entropy)
    digests = agree(hashlib.sha256(data).digest(), f"the bytes of {Path(path).name}")
    from_rank0(lambda: atomic_write_bytes(path, data), f"writing {path}")
    return len(data), digests
