"""Data-parallel quality training under ``torchrun`` (gloo on the CPU, NCCL on GPUs).

    torchrun --nproc_per_node 2 run_bench.py quality --variants fused.sdpa,linear.elu.chunked ...

Every process runs the same cases in the same order: each trains on its share of every global
batch (``batch`` is split over the processes, gradients are averaged by DDP), so the optimisation
is the one-process optimisation up to float rounding. Process 0 alone scores the held-out split,
writes the checkpoints, the rows and ``run.json``; the others wait for it between cases.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from attnbench.bench import results, rows
from attnbench.bench.provenance import start_info
from attnbench.quality.cases import plan_quality, run_quality_case


def launched_by_torchrun(environ=None) -> bool:
    """Whether ``torchrun`` (torch.distributed.run) started this process, with any number of
    processes: one process under torchrun still trains through its process group (NCCL on a GPU),
    which is what the GPU check tests."""
    env = os.environ if environ is None else environ
    return "TORCHELASTIC_RUN_ID" in env or all(
        k in env for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR")
    )


def _broadcast(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def init(use_cuda: bool) -> tuple[int, int, str, str]:
    """(rank, world, device, backend): the process's GPU is set *before* the process group is
    created (NCCL binds its communicator to the current device), and NCCL is told which one."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        dist.init_process_group("nccl", device_id=torch.device(device))
        backend = "nccl"
    else:
        device, backend = "cpu", "gloo"
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device, backend


def run_quality(
    suite,
    run_dir: Path,
    *,
    resume: bool = False,
    force: bool = False,
    plugins=(),
    command: list[str] | None = None,
) -> Path | None:
    """Train and evaluate the suite's quality cases data-parallel into process 0's ``run_dir``
    (each process proposes one; process 0's is broadcast); process 0 returns the run folder
    (the others None). run.json is started or resumed as by every launcher
    (``provenance.start_info``)."""
    use_cuda = torch.cuda.is_available() and suite.device != "cpu"
    rank, world, device, backend = init(use_cuda)
    try:
        q = suite.quality
        run_dir = Path(_broadcast(str(run_dir)))
        cases = plan_quality(q, "cuda" if use_cuda else "cpu")
        writer = results.ResultWriter(run_dir) if rank == 0 else None
        done = _broadcast(sorted(writer.done) if writer else None)
        todo = [c for c in cases if c.case_id not in done]
        if rank == 0:
            info = start_info(suite, run_dir, cases, todo, plugins, command, resume, force)
            info["environment"] = results.environment(device)
            info["distributed"] = {"world_size": world, "backend": backend, "launcher": "torchrun"}
            info["launcher"] = {"kind": "torchrun", "workers": world}
            results.write_run_json(run_dir, info)
            print(
                f"attnbench: {len(todo)} quality cases on {world} processes "
                f"({backend}) -> {run_dir}",
                file=sys.stderr,
            )
        for case in todo:
            case = case.replace(device=device)
            if case.pass_ == "train" or rank == 0:
                t0 = time.time()
                out = run_quality_case(case, q, run_dir, rank=rank, world=world)
                if rank == 0:
                    sub_rows = out.pop("rows", [])
                    row = {**case.row(), **out, "world_size": world, "backend": backend}
                    rows.finish(row, run_id=run_dir.name, threads=torch.get_num_threads())
                    row["wall_s"] = round(time.time() - t0, 3)
                    stamp = rows.stamp(run_dir.name, torch.get_num_threads())
                    writer.write_case(
                        row, [dict(sub, **stamp, world_size=world) for sub in sub_rows]
                    )
            dist.barrier()
        if rank == 0:
            info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            results.write_run_json(run_dir, info)
            return run_dir
    finally:
        dist.destroy_process_group()
    return None
