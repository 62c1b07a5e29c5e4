"""The CPU sources compile for aarch64 (x86-only code is guarded): a syntax-only cross-compile,
run where the aarch64 cross compiler is installed (apt install g++-aarch64-linux-gnu)."""

import glob
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp

REPO = Path(__file__).resolve().parents[1]
CROSS = shutil.which("aarch64-linux-gnu-g++")


@pytest.mark.skipif(CROSS is None, reason="needs aarch64-linux-gnu-g++")
@pytest.mark.parametrize("source", sorted(glob.glob(str(REPO / "csrc" / "**" / "*.cpp"), recursive=True)),
                         ids=lambda p: str(Path(p).relative_to(REPO)))
def test_cpu_sources_compile_for_aarch64(source):
    includes = [f"-I{d}" for d in cpp.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    result = subprocess.run([CROSS, "-std=c++20", "-fsyntax-only", "-fopenmp", *includes, source],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
