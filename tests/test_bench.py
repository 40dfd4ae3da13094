"""The benchmark runs and writes its results (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def test_tiny_benchmark_runs_and_writes_results(tmp_path, cartoonify_home):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "cartoonify.bench", "tiny", "--warmup", "1", "--steps", "2", "--repeats", "1",
         "--rounds", "1", "--profile", "--only", "default", "--work", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "tiny.json").read_text())
    row = results["training"][0]
    assert row["variant"] == "default" and "error" not in row, row
    assert row["steps_per_s"] > 0 and row["peak_memory_bytes"] > 0 and len(row["steps_per_s_repeats"]) == 1
    assert len(row["step_seconds"]) == 2 and row["steps_per_s"] == pytest.approx(2 / sum(row["step_seconds"]))
    assert results["environment"]["versions"]["torch"] and results["settings"]["train_batch_size"] == 4
    md = (out / "tiny.md").read_text()
    assert "| default |" in md
    # the profile splits a step into the trainer's regions, and names the operators
    regions = {r["region"]: r["cpu_ms"] for r in results["profile"]["regions"]}
    assert {"unet_forward", "backward", "optimizer_step", "other"} <= set(regions)
    assert regions["backward"] > 0 and results["profile"]["top_ops"]
    assert "| backward |" in md
