"""Runs each test file in a process of its own, so that a crash (a segfault in an op, an abort) costs
that file only, is reported with the test id it died in, and the other files still run.

    python tools/run_test_files.py --out DIR [--jobs N] [FILES ...] -- [PYTEST ARGS]
    python tools/run_test_files.py --bisect TEST_ID --out DIR [FILES ...] -- [PYTEST ARGS]

The first form writes ``DIR/<file>.log`` and ``DIR/<file>.xml`` per file and ``DIR/tests.json``
(counts per file and in all, crashes with their test ids) and exits 1 when a test failed or a file
crashed. FILES default to every ``tests/test_*.py``.

``--bisect`` answers "does this crash need an earlier test's state, and whose?": it runs TEST_ID
alone in a fresh process, and if it survives, finds by halving the shortest prefix of the tests
that ran before it (in FILES, with the same pytest arguments) after which it crashes, and names
that prefix's last test. Each run is a fresh process under ``cuda-gdb`` or ``gdb`` where one is
installed, so the logs in DIR hold native backtraces.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
# pytest's exit codes: 0 passed, 1 some failed, 5 nothing collected. Anything else (a negative
# signal number, 134 from an abort through a shell) means the process did not finish its run.
FINISHED = (0, 1, 5)
# With -v, pytest writes a test's id before running it and its outcome after (ids may hold spaces);
# a crash's "Fatal Python error" from faulthandler follows the id on the same line.
OUTCOME = r"PASSED|FAILED|SKIPPED|XFAIL|XPASS|ERROR"
TEST_LINE = re.compile(rf"^(?P<id>\S+::.*?)(?:\s+(?P<outcome>{OUTCOME})\b|\s*Fatal Python error|\s*$)")


@dataclass
class FileResult:
    """One test file's run: its counts from the JUnit XML, or the crash and the test it died in."""

    file: str
    exit_code: int
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)
    crashed_in: Optional[str] = None


def pytest_command(targets: Sequence[str], pytest_args: Sequence[str], junit: Optional[Path]) -> List[str]:
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *pytest_args, *targets]
    return command + ([f"--junitxml={junit}"] if junit else [])


def crashed_test(log: str) -> Optional[str]:
    """The id of the last test pytest started but wrote no outcome for."""
    last = None
    for line in log.splitlines():
        test = TEST_LINE.match(line)
        if test:
            last = None if test.group("outcome") else test.group("id")
        elif last and re.match(rf"^\s*({OUTCOME})\b", line):
            last = None
    return last


def junit_counts(path: Path) -> dict:
    if not path.exists():
        return {}
    suite = ElementTree.parse(path).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}


def run_file(test_file: str, pytest_args: Sequence[str], out: Path, cwd: Path) -> FileResult:
    stem = Path(test_file).stem
    junit, log_path = out / f"{stem}.xml", out / f"{stem}.log"
    process = subprocess.run(pytest_command([test_file], pytest_args, junit), cwd=cwd, capture_output=True,
                             text=True, errors="replace")
    log = process.stdout + process.stderr
    log_path.write_text(log)
    result = FileResult(test_file, process.returncode, counts=junit_counts(junit))
    if process.returncode not in FINISHED:
        result.crashed_in = crashed_test(log) or f"{test_file} (before its first test)"
    seconds = re.search(r" in ([0-9.]+)s", log)
    result.seconds = float(seconds.group(1)) if seconds else 0.0
    return result


def run_files(files: Sequence[str], pytest_args: Sequence[str], out: Path, jobs: int, cwd: Path) -> int:
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(lambda f: run_file(f, pytest_args, out, cwd), files))
    total = {key: sum(r.counts.get(key, 0) for r in results) for key in ("tests", "failures", "errors", "skipped")}
    crashes = {r.file: {"exit_code": r.exit_code, "test": r.crashed_in} for r in results if r.crashed_in}
    for r in results:
        state = f"CRASHED (exit {r.exit_code}) in {r.crashed_in}" if r.crashed_in else f"exit {r.exit_code}"
        print(f"{r.file}: {r.counts or 'no results'} {state}", flush=True)
    print(f"all files: {total}, {len(crashes)} crashed")
    (out / "tests.json").write_text(json.dumps({"total": total, "crashes": crashes,
                                                "files": [asdict(r) for r in results]}, indent=2) + "\n")
    return 0 if not crashes and not total["failures"] and not total["errors"] else 1


def under_debugger(command: List[str]) -> List[str]:
    debugger = shutil.which("cuda-gdb") or shutil.which("gdb")
    if debugger is None:
        return command
    return [debugger, "-batch", "-ex", "run", "-ex", "bt", "--args", *command]


def crashes(targets: Sequence[str], pytest_args: Sequence[str], log: Path, cwd: Path) -> bool:
    """Whether running ``targets`` in this order in one fresh process ends in a crash."""
    process = subprocess.run(under_debugger(pytest_command(targets, pytest_args, None)), cwd=cwd,
                             capture_output=True, text=True, errors="replace")
    log.write_text(process.stdout + process.stderr)
    died = process.returncode not in FINISHED or "Program received signal" in process.stdout
    print(f"{'CRASH' if died else 'ok   '} with {len(targets)} test(s), last {targets[-1]} ({log.name})", flush=True)
    return died


def collected_ids(files: Sequence[str], pytest_args: Sequence[str], cwd: Path) -> List[str]:
    listing = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                              *pytest_args, *files], cwd=cwd, capture_output=True, text=True)
    return [line for line in listing.stdout.splitlines() if "::" in line]


def bisect(test_id: str, files: Sequence[str], pytest_args: Sequence[str], out: Path, cwd: Path) -> int:
    if crashes([test_id], pytest_args, out / "bisect_alone.log", cwd):
        print(f"{test_id} crashes alone, in a fresh process: the cause is in that test's own path")
        return 0
    ids = collected_ids(files, pytest_args, cwd)
    earlier = ids[:ids.index(test_id)] if test_id in ids else ids
    if not crashes(earlier + [test_id], pytest_args, out / "bisect_all.log", cwd):
        print(f"{test_id} survives after all {len(earlier)} earlier tests too: no crash to bisect")
        return 1
    low, high = 0, len(earlier)  # invariant: the prefix of length high crashes it, of length low does not
    while high - low > 1:
        middle = (low + high) // 2
        if crashes(earlier[:middle] + [test_id], pytest_args, out / f"bisect_{middle}.log", cwd):
            high = middle
        else:
            low = middle
    print(f"{test_id} crashes after {earlier[high - 1]} (the {high}th earlier test) and not before it; "
          f"confirm with: pytest {earlier[high - 1]} {test_id}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--jobs", type=int, default=4, help="files run at once")
    parser.add_argument("--bisect", metavar="TEST_ID")
    parser.add_argument("--cwd", type=Path, default=REPO, help="where pytest runs (default: the repository)")
    args = parser.parse_args(argv[:split])
    pytest_args = argv[split + 1:]
    files = args.files or sorted(str(p.relative_to(args.cwd)) for p in (args.cwd / "tests").glob("test_*.py"))
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.bisect:
        return bisect(args.bisect, files, pytest_args, out, args.cwd)
    return run_files(files, pytest_args, out, args.jobs, args.cwd)


if __name__ == "__main__":
    sys.exit(main())
