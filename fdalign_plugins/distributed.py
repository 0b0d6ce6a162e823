"""Data-parallel plumbing on ``torch.distributed``, for runs launched with ``torchrun``.

Nothing here is a scheduler of its own: ``torchrun`` starts one process per device and
sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``;
:func:`init_from_env` turns that into a process group, and the trainer and the feature
cache ask :func:`rank` / :func:`world_size` what their share of the work is. Without a
process group every helper degrades to the single-process answer (rank 0 of 1, no
communication), so library code calls them unconditionally.

Backend: with CUDA the group is ``cpu:gloo,cuda:nccl`` -- gradients (CUDA tensors) go
through NCCL, while small bookkeeping collectives and feature gathers (CPU tensors) go
through gloo, so callers never have to move a float to the GPU just to sum it. Without
CUDA it is plain ``gloo``.
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

#: Environment variable that overrides the backend chosen by :func:`init_from_env`.
BACKEND_ENV = "FDALIGN_DIST_BACKEND"


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset or not an integer)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def local_rank() -> int:
    """``LOCAL_RANK`` from the environment (the device index on this node), 0 when unset."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def default_backend() -> str:
    """``cpu:gloo,cuda:nccl`` when CUDA is available, else ``gloo`` (or ``$FDALIGN_DIST_BACKEND``)."""
    if os.environ.get(BACKEND_ENV):
        return os.environ[BACKEND_ENV]
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_from_env(backend: Optional[str] = None, timeout_s: Optional[float] = None) -> bool:
    """Initialise the default process group from ``torchrun``'s environment.

    Does nothing when ``WORLD_SIZE`` is absent or 1, or when a group already exists.
    With CUDA, binds this process to ``cuda:LOCAL_RANK`` first, so ``"cuda"`` means the
    process's own device everywhere afterwards.

    Args:
        backend: ``torch.distributed`` backend string (default: :func:`default_backend`).
        timeout_s: collective timeout in seconds (default: torch's).

    Returns:
        ``True`` when this call created the process group.
    """
    if env_world_size() <= 1 or is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    kwargs = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    dist.init_process_group(backend=backend or default_backend(), **kwargs)
    atexit.register(destroy)
    return True


def destroy() -> None:
    """Tear the default process group down (no-op without one)."""
    if is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, the only rank that writes files and logs."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world_size() > 1:
        dist.barrier()


def _comm_device() -> torch.device:
    """Where tensors for bookkeeping collectives must live for the group's backend."""
    backend = str(dist.get_backend()).lower()
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def shard_range(n: int, rank_: int, world: int) -> Tuple[int, int]:
    """The contiguous slice ``[lo, hi)`` of ``n`` items that ``rank_`` of ``world`` owns.

    Slices are balanced (sizes differ by at most one, earlier ranks get the extra item),
    cover ``range(n)`` in order, and may be empty when ``n < world``.
    """
    base, extra = divmod(int(n), int(world))
    lo = rank_ * base + min(rank_, extra)
    return lo, lo + base + (1 if rank_ < extra else 0)


def all_reduce_floats(values: Sequence[float], op: str = "sum") -> List[float]:
    """Sum (or ``"max"`` / ``"min"``) a few Python floats over all ranks.

    Reduced in float64, so integer counts below 2**53 stay exact.

    Args:
        values: this rank's numbers.
        op: ``"sum"``, ``"max"`` or ``"min"``.

    Returns:
        The reduced numbers, identical on every rank.
    """
    if world_size() <= 1:
        return [float(v) for v in values]
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())  # [len(values)]
    dist.all_reduce(t, op=ops[op])
    return t.cpu().tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (picklable objects made by this program only)."""
    if world_size() <= 1:
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensor(tensor: Optional[torch.Tensor], src: int = 0) -> torch.Tensor:
    """Rank ``src``'s tensor on every rank; other ranks may pass ``None``.

    The shape and dtype travel first, so receivers need not know them.
    """
    if world_size() <= 1:
        assert tensor is not None
        return tensor
    meta = broadcast_object(None if tensor is None else (tuple(tensor.shape), str(tensor.dtype)), src)
    shape, dtype_name = meta
    dtype = getattr(torch, dtype_name.replace("torch.", ""))
    dev = _comm_device()
    buf = tensor.to(dev).contiguous() if rank() == src else torch.empty(shape, dtype=dtype, device=dev)
    dist.broadcast(buf, src=src)
    return buf.cpu()


@torch.no_grad()
def broadcast_module_(module: torch.nn.Module, src: int = 0) -> torch.nn.Module:
    """Overwrite ``module``'s parameters and buffers with rank ``src``'s, in place."""
    if world_size() > 1:
        for t in module.state_dict(keep_vars=True).values():
            dist.broadcast(t.data, src=src)
    return module


def all_gather_varlen(tensor: torch.Tensor) -> List[torch.Tensor]:
    """Every rank's tensor, in rank order, on every rank; first dimensions may differ.

    Shapes are exchanged first and shorter pieces padded to the longest, since
    ``all_gather`` needs equal shapes. A rank with nothing to contribute may pass any
    empty tensor (e.g. ``torch.zeros(0)``): it receives, and is given back, an empty
    piece shaped like the others'.

    Args:
        tensor: this rank's ``[n_r, ...]`` piece.

    Returns:
        ``world_size()`` tensors ``[n_r, ...]`` on the CPU.
    """
    if world_size() <= 1:
        return [tensor.cpu()]
    metas: List[Any] = [None] * world_size()
    dist.all_gather_object(metas, (tuple(tensor.shape), str(tensor.dtype)))
    filled = [m for m in metas if m[0] and m[0][0] > 0]
    if not filled:
        return [tensor.cpu() for _ in range(world_size())]
    trailing, dtype_name = filled[0][0][1:], filled[0][1]
    dtype = getattr(torch, dtype_name.replace("torch.", ""))
    lengths = [m[0][0] if m[0] and m[0][0] > 0 else 0 for m in metas]
    dev = _comm_device()
    padded = torch.zeros((max(lengths),) + tuple(trailing), dtype=dtype, device=dev)  # [max n_r, ...]
    if lengths[rank()]:
        padded[: lengths[rank()]] = tensor.to(dev)
    pieces = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(pieces, padded)
    return [p[:n].cpu() for p, n in zip(pieces, lengths)]
