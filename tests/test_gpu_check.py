"""tools/gpu_check.sh in its CPU mode: every step of the GPU check runs here, so it cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_mode_runs_every_step_and_writes_its_records(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run([str(REPO / "tools" / "gpu_check.sh"), "--cpu", str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr + (tmp_path / "gpu_check.log").read_text()
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == ["implicit_cpu", "crosscheck-and-minkunet", "conv_cpu", "kmap_cpu",
                                          "grouping_cpu", "profile"]
    assert not any(s.get("skipped") for s in steps)
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {"commit", "torch", "cuda", "device"} <= set(record["environment"])
    assert record["crosscheck"]["checks"] > 80 and record["crosscheck"]["failed"] == 0
    assert set(record["minkunet18_step"]) == {"float32", "amp"}
    for suite in ("kmap_cpu.json", "conv_cpu.json", "grouping_cpu.json", "implicit_cpu.json"):
        assert json.loads((tmp_path / suite).read_text())["results"]
    assert json.loads((tmp_path / "profile_cpu" / "report.json").read_text())["layers"]


def test_gpu_check_skips_the_steps_that_no_longer_fit_its_budget(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run([str(REPO / "tools" / "gpu_check.sh"), "--cpu", "--budget", "5", str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "some steps FAILED" in result.stdout
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 6 and all(s["skipped"] and s["exit"] is None for s in steps)
