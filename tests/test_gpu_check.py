"""The GPU check's machinery on the CPU: gpu_check.sh in its CPU mode (every step, so it cannot rot), the
per-file test runner with its crash report and bisection, and the offline builds (in place and the
editable install under an older pip)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_mode_runs_every_step_and_writes_its_records(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run([str(REPO / "tools" / "gpu_check.sh"), "--cpu", str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr + (tmp_path / "gpu_check.log").read_text()
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == ["summary", "implicit_cpu", "crosscheck-and-minkunet", "conv_cpu", "kmap_cpu",
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
    assert len(steps) == 7 and all(s["skipped"] and s["exit"] is None for s in steps)


CRASHING_FILE = '''
import ctypes


def test_before():
    pass


def test_segfaults[SUFFIX]():
    ctypes.string_at(0)  # a native crash, as a segfault inside an op


def test_after():
    pass
'''


def run_test_files(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "run_test_files.py"), "--cwd", str(cwd), *args],
                          capture_output=True, text=True, timeout=300)


def test_a_crashing_test_costs_its_file_only_and_is_named_with_its_test_id(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_crashes.py").write_text(CRASHING_FILE.replace("[SUFFIX]", ""))
    (suite / "test_fine.py").write_text("def test_one():\n    pass\n\n\ndef test_two():\n    assert 1 + 1 == 3\n")
    result = run_test_files(suite, "--out", str(tmp_path / "out"), "test_crashes.py", "test_fine.py")
    assert result.returncode == 1, result.stdout + result.stderr
    record = json.loads((tmp_path / "out" / "tests.json").read_text())
    assert record["crashes"]["test_crashes.py"]["test"] == "test_crashes.py::test_segfaults"
    assert record["crashes"]["test_crashes.py"]["exit_code"] != 0
    fine, = [f for f in record["files"] if f["file"] == "test_fine.py"]
    assert fine["counts"] == {"tests": 2, "failures": 1, "errors": 0, "skipped": 0} and fine["crashed_in"] is None
    assert "CRASHED" in result.stdout and "test_crashes.py::test_segfaults" in result.stdout


def test_bisection_names_the_earlier_test_whose_state_makes_a_test_crash(tmp_path):
    # test_poison leaves state behind; test_victim crashes only after it (as the CUDA segfault did
    # only in the full run), whatever runs in between.
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_a.py").write_text("import os\n\n\ndef test_harmless():\n    pass\n\n\n"
                                     "def test_poison():\n    os.environ['POISONED'] = '1'\n\n\n"
                                     "def test_also_harmless():\n    pass\n")
    (suite / "test_b.py").write_text("import ctypes\nimport os\n\n\ndef test_bystander():\n    pass\n\n\n"
                                     "def test_victim():\n    if os.environ.get('POISONED'):\n"
                                     "        ctypes.string_at(0)\n")
    result = run_test_files(suite, "--bisect", "test_b.py::test_victim", "--out", str(tmp_path / "out"),
                            "test_a.py", "test_b.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "crashes after test_a.py::test_poison" in result.stdout
    assert (tmp_path / "out" / "bisect_alone.log").exists()


def test_a_checkout_built_in_place_imports_models_and_datasets_without_an_install(tmp_path):
    # What `tools/build_offline.sh --inplace` leaves: the checkout with the built module in it.
    checkout = tmp_path / "checkout"
    for folder in ("pointsparse", "models", "datasets"):
        shutil.copytree(REPO / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.py", checkout)
    assert list((checkout / "pointsparse").glob("_C*.so")), "the extension is not built in place in the repository"
    probe = ("import pointsparse, pointsparse.models, pointsparse.datasets, pointsparse.bench.minkunet; "
             "print(pointsparse.__file__, pointsparse.models.__file__, pointsparse.datasets.__file__)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=checkout, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(checkout / f / "__init__.py") for f in ("pointsparse", "models", "datasets")]


@pytest.mark.slow
def test_offline_build_works_where_pip_would_fall_back_to_setup_py_develop(tmp_path):
    """The GPU machine's situation: pip 24.0 (for a project without pyproject.toml it falls back to
    `setup.py develop`), setuptools >= 80 (whose `develop` runs an isolated pip install that
    downloads setuptools), torch preinstalled, no index. The old command fails there; the GPU
    check's build command works, and the install imports with models and datasets."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    tools = subprocess.run([python, "-m", "pip", "install", "-q", "pip==24.0", "setuptools>=80", "wheel", "ninja"],
                           capture_output=True, text=True)
    if tools.returncode != 0:
        pytest.skip(f"no package index to set up pip 24.0 and setuptools >= 80: {tools.stderr[-300:]}")
    # This environment's torch, numpy, ... stand for the machine's preinstalled ones (after the
    # venv's own pip and setuptools on sys.path).
    purelib = subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                      text=True).strip()
    outer = [p for p in sys.path if p.endswith("site-packages")]
    Path(purelib, "preinstalled.pth").write_text("\n".join(outer) + "\n")
    checkout = tmp_path / "checkout"
    for folder in ("pointsparse", "models", "datasets", "csrc", "tools"):
        shutil.copytree(REPO / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(REPO / "setup.py", checkout)
    env = dict(os.environ, PYTHON=python, PIP_NO_INDEX="1", POINTSPARSE_CPU_ONLY="1", MAX_JOBS="2")
    old = subprocess.run([python, "-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-deps", "-e", "."],
                         cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
    assert old.returncode != 0 and "setup.py develop" in old.stdout + old.stderr  # the reproduction holds
    new = subprocess.run(["bash", "tools/build_offline.sh"], cwd=checkout, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert new.returncode == 0, new.stdout[-3000:] + new.stderr[-3000:]
    probe = ("import torch, pointsparse, pointsparse.models, pointsparse.datasets, pointsparse.bench.minkunet; "
             "print(pointsparse.__file__, pointsparse.models.__file__, hasattr(torch.ops.pointsparse, 'build_kmap_hash'))")
    result = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(checkout / "pointsparse" / "__init__.py"),
                                     str(checkout / "models" / "__init__.py"), "True"]
