"""The Slurm launcher, through submitit: ``run --launcher submitit`` (``docs/scale-out.md``).

    python run_bench.py run --suite gpu --launcher submitit --slurm-partition gpu --max-jobs 32
    python run_bench.py run --suite smoke --launcher submitit --submitit-local --max-jobs 2

``launch`` groups the cases into at most ``max_jobs`` jobs of whole (variant, device) groups,
records every job in ``run.json`` as soon as it is submitted, waits, and merges the shards into
``results.jsonl``. Each job runs ``run_shard``: the local sweep of its cases into its own shard
(``shards/<job>/results.jsonl``) with its own node's ceilings. A failed or pre-empted job's
finished cases stay in its shard; ``--resume`` merges them and submits only the missing cases.
``--submitit-local`` takes the same code path in local job processes.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any

from attnbench.bench import results
from attnbench.bench.plan import balance, groups_of, plan
from attnbench.bench.provenance import start_info
from attnbench.bench.runner import execute
from attnbench.bench.suite import Suite, from_dict

SHARDS = "shards"


def run_shard(
    suite_dict: dict, case_ids: list[str], run_dir: str, shard: str, plugins: list[str]
) -> dict[str, Any]:
    """A job's body: measure ``case_ids`` of the suite into ``shards/<shard>/``."""
    from attnbench.registry import load_plugin

    for path in plugins:
        load_plugin(path)
    suite = from_dict(suite_dict)
    wanted = set(case_ids)
    shard_dir = Path(run_dir) / SHARDS / shard
    writer = results.ResultWriter(shard_dir)
    todo = [c for c in plan(suite) if c.case_id in wanted and c.case_id not in writer.done]
    info = {
        "run_id": Path(run_dir).name,
        "shard": shard,
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if suite.quality is not None:
        from attnbench.quality.cases import corpus_for

        info["datasets"] = {suite.quality.dataset: corpus_for(suite.quality).info()}
    execute(todo, suite, shard_dir, writer, info, plugins=plugins, progress=False)
    info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    results.write_run_json(shard_dir, info)
    return {"host": platform.node(), "cases": len(todo)}


def merge_shards(run_dir: Path) -> int:
    """Append every shard row not yet in results.jsonl; returns how many were added."""
    writer = results.ResultWriter(run_dir)
    added = 0
    for shard in sorted((run_dir / SHARDS).glob("*/")):
        for row in results.read_rows(shard):
            if row.get("case_id") and row["case_id"] not in writer.done:
                writer.write(row)
                added += 1
    return added


def launch(
    suite: Suite,
    run_dir: Path,
    *,
    plugins=(),
    command=None,
    resume=False,
    force=False,
    local=False,
    max_jobs: int = 32,
    partition: str | None = None,
    gpus_per_job: int = 0,
    cpus_per_job: int | None = None,
    timeout_min: int = 240,
    progress: bool = True,
    slurm_args: dict[str, Any] | None = None,
    cases: list | None = None,
) -> Path:
    """Submit the missing cases of ``suite`` as jobs, wait for them, merge their shards."""
    import submitit

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / SHARDS).exists():  # what an earlier, interrupted submission finished
        merge_shards(run_dir)
    cases = plan(suite) if cases is None else cases
    done = results.ResultWriter(run_dir).done
    todo = [c for c in cases if c.case_id not in done]
    info = start_info(suite, run_dir, cases, todo, plugins, command, resume, force)
    attempt = len(info.get("launcher", {}).get("submissions", []))
    jobs_cases = balance(groups_of(todo), max(1, max_jobs))
    executor = submitit.AutoExecutor(
        folder=run_dir / "submitit", cluster="local" if local else None
    )
    params: dict[str, Any] = {"timeout_min": timeout_min, "name": f"attnbench-{suite.name}"}
    if not local:
        params.update(
            slurm_partition=partition,
            slurm_array_parallelism=max_jobs,
            gpus_per_node=gpus_per_job or None,
            cpus_per_task=cpus_per_job,
            **(slurm_args or {}),
        )
    elif cpus_per_job:
        params["cpus_per_task"] = cpus_per_job
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    shards = [f"s{attempt}-{i:03d}" for i in range(len(jobs_cases))]
    suite_dict = suite.to_dict()
    jobs = []
    with executor.batch():
        for shard, group in zip(shards, jobs_cases):
            jobs.append(
                executor.submit(
                    run_shard,
                    suite_dict,
                    [c.case_id for c in group],
                    str(run_dir),
                    shard,
                    list(plugins),
                )
            )
    submission = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "local": local,
        "jobs": [
            {
                "job_id": str(j.job_id),
                "shard": shard,
                "cases": len(group),
                "variants": sorted({c.variant for c in group}),
                "stdout": str(j.paths.stdout),
                "stderr": str(j.paths.stderr),
            }
            for j, shard, group in zip(jobs, shards, jobs_cases)
        ],
    }
    # the launching host's environment; each job's own node, environment and ceilings are in
    # its record below
    info.setdefault("environment", results.environment(suite.resolved_device()))
    launcher = info.setdefault("launcher", {"kind": "submitit", "submissions": []})
    launcher["kind"] = "submitit"
    launcher.setdefault("submissions", []).append(submission)
    results.write_run_json(run_dir, info)
    print(f"attnbench: {len(todo)} cases in {len(jobs)} jobs -> {run_dir}", file=sys.stderr)
    _wait(jobs, progress)
    for record, job in zip(submission["jobs"], jobs):
        record["state"] = job.state
        try:
            out = job.result()
            record["node"] = out["host"]
        except Exception as e:  # a failed or cancelled job: its finished cases are in its shard
            record["error"] = (
                f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            )[:500]
        shard_info = run_dir / SHARDS / record["shard"] / results.RUN_FILE
        if shard_info.exists():
            shard = results.read_run_json(shard_info.parent)
            record["node"] = shard.get("host", record.get("node"))
            # every job's own node, environment and ceilings: its rows divide by those (each
            # row also carries its host and the ceiling it was divided by)
            record["ceilings"] = shard.get("ceilings")
            record["environment"] = shard.get("environment")
    added = merge_shards(run_dir)
    missing = len(cases) - len(results.ResultWriter(run_dir).done)
    submission["merged_rows"] = added
    submission["missing_cases"] = missing
    if not missing:
        info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    results.write_run_json(run_dir, info)
    if missing:
        print(
            f"attnbench: {missing} cases missing (failed or cancelled jobs); "
            f"--resume {run_dir} --launcher submitit submits only those",
            file=sys.stderr,
        )
    return run_dir


def _wait(jobs, progress: bool) -> None:
    start = time.time()
    last = -1
    while True:
        finished = sum(j.done() for j in jobs)
        if progress and finished != last:
            print(
                f"[jobs] {finished}/{len(jobs)} finished after {time.time() - start:.0f} s",
                file=sys.stderr,
            )
            last = finished
        if finished == len(jobs):
            return
        time.sleep(1.0)
