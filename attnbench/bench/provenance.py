"""What run.json says about a run when it starts or resumes: the suite, the command, the plan's
size, the corpus's provenance; and the resume policy (a resume with another suite or another
commit is refused unless forced, and then recorded). Beside ``results``, which stores it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from attnbench.bench import results
from attnbench.bench.suite import Suite
from attnbench.quality.cases import corpus_for


def _suite_json(suite: Suite) -> str:
    return json.dumps(suite.to_dict(), sort_keys=True, default=str)


def start_info(
    suite: Suite, run_dir: Path, cases, todo, plugins, command, resume, force: bool = False
) -> dict[str, Any]:
    """run.json's content at the start (or on resume, with the resume recorded); the corpus is
    loaded here, so a missing one fails at once. A resume with another suite or another commit
    is refused unless ``force``, and then recorded."""
    if resume and (run_dir / results.RUN_FILE).exists():
        info = results.read_run_json(run_dir)
        changes = []
        if json.loads(_suite_json(suite)) != json.loads(
            json.dumps(info.get("suite"), sort_keys=True, default=str)
        ):
            changes.append("the suite differs from the run's")
        env = info.get("environment") or {}
        was, was_dirty = env.get("git_commit"), env.get("git_dirty")
        now = results.git_state()
        if (
            was
            and now["git_commit"]
            and (was != now["git_commit"] or (now["git_dirty"] and not was_dirty))
        ):
            changes.append(
                f"the code differs: the run was measured at commit {was[:12]}"
                + (" with uncommitted changes" if was_dirty else "")
                + f", this is "
                f"{now['git_commit'][:12]}"
                + (" with uncommitted changes" if now["git_dirty"] else "")
            )
        if changes and not force:
            raise ValueError(
                f"--resume {run_dir}: "
                + "; ".join(changes)
                + ". Its rows would mix settings; resume with the same suite and "
                "commit, or pass --force (recorded in run.json)"
            )
        info.setdefault("resumed", []).append(
            {
                "command": command or sys.argv,
                "time": time.time(),
                "cases_left": len(todo),
                "forced": bool(changes),
                "changes": changes,
                **now,
            }
        )
    else:
        info = {
            "run_id": run_dir.name,
            "command": command or sys.argv,
            "suite": suite.to_dict(),
            "plugins": list(plugins),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "cases_planned": len(cases),
        }
    if suite.quality is not None:
        info.setdefault("datasets", {})[suite.quality.dataset] = _corpus_info(suite)
    return info


def _corpus_info(suite: Suite) -> dict[str, Any]:
    """The quality corpus's provenance. A corpus that cannot be had (offline, no data folder)
    stops a quality-only suite at once; in a suite with other sections it is recorded as
    unavailable, the quality cases become ``error`` rows with the reason, and the rest runs (the
    ``gpu`` suite on a machine without the network still measures its kernels)."""
    from attnbench.quality.data import CorpusError

    try:
        return corpus_for(suite.quality).info()
    except CorpusError as e:
        if all(getattr(suite, s) is None for s in ("op", "model", "recall")):
            raise
        print(f"attnbench: warning: {e}; its quality cases will be error rows", file=sys.stderr)
        return {"unavailable": str(e)}
