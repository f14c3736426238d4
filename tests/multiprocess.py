"""Running multi-process (DDP) test scripts robustly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_script(script: Path, out_dir: Path, *args: str, timeout: float, attempts: int = 2) -> Path:
    """Run ``script OUT *args`` in a fresh output dir; return the dir of the successful run.

    Process-group start-up and shut-down (gloo rendezvous, threads at interpreter exit) can
    fail for reasons outside the code under test on a loaded machine, so a failed or hung
    launch is retried once in a new dir. A real failure fails every attempt; the last
    attempt's stderr is shown.
    """
    failures: list[str] = []
    for attempt in range(1, attempts + 1):
        out = out_dir / f"attempt{attempt}"
        out.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.run([sys.executable, str(script), str(out), *args],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            failures.append(f"attempt {attempt}: timed out after {timeout} s")
            continue
        if proc.returncode == 0:
            return out
        failures.append(f"attempt {attempt}: exit code {proc.returncode}\n{proc.stderr[-3000:]}")
    raise AssertionError("\n\n".join(failures))
