"""Multi-process training with torchrun: `torchrun --nproc_per_node=N -m transferlab run ...`.

torch.distributed does the work (gloo on CPU, nccl on GPU); this module only starts and ends the process
group from torchrun's environment and answers "which rank am I". Rank 0 alone writes files (records,
checkpoints, feature chunks) and draws progress bars.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env() -> None:
    """Join the process group torchrun describes; share the CPU cores fairly between local ranks."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ranks))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # gloo for CPU tensors, nccl for CUDA ones: a run on CPU on a GPU host still works.
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait until every rank is here (e.g. until rank 0 has written what the others will read)."""
    if dist.is_initialized():
        dist.barrier()


def merged_across_ranks(part: dict) -> dict:
    """Every rank's dict merged, on every rank (e.g. the features each rank encoded for its share)."""
    if world_size() == 1:
        return part
    parts: list[dict] = [{} for _ in range(world_size())]
    dist.all_gather_object(parts, part)
    return {key: value for one in parts for key, value in one.items()}


def broadcast_from_main(obj=None):
    """Rank 0's `obj` on every rank (what the others pass is ignored); `obj` itself without torchrun."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
