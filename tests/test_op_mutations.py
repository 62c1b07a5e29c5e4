"""Every op with one argument at a time made wrong (tests/op_mutations.py): Python exceptions, never
a crash. The sweep runs in a subprocess, so a crash fails this test and names the call."""

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import DEVICES

SWEEP = Path(__file__).parent / "op_mutations.py"


@pytest.mark.parametrize("device", DEVICES)
def test_wrong_arguments_raise_python_exceptions_and_never_crash_the_interpreter(device, tmp_path):
    log = tmp_path / "calls.log"
    command = [sys.executable, str(SWEEP), "--device", device, "--log", str(log)]
    if device != "cpu":
        command.append("--host-checked-only")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    last = log.read_text().splitlines()[-1:] if log.exists() else []
    output = result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0, f"exit {result.returncode}, last call {last}:\n{output}"
    calls = int(result.stdout.split()[0])
    assert calls > (1000 if device == "cpu" else 100)
