"""The package's import structure: no cycle, no import of the tooling from the library, and
`import pointsparse` loads the engine only."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import import_graph  # noqa: E402


def test_the_package_has_no_import_cycle_and_no_back_edge_into_the_tooling(capsys):
    assert import_graph.main([]) == 0, capsys.readouterr().out


def test_the_graph_finds_a_cycle_hidden_in_a_function_and_a_back_edge(tmp_path):
    package = tmp_path / "pkg"
    (package / "bench").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "bench" / "__init__.py").write_text("")
    (package / "bench" / "common.py").write_text("X = 1\n")
    (package / "a.py").write_text("from .b import f\n")
    (package / "b.py").write_text(textwrap.dedent("""
        def f():
            from . import a  # lazy: still a cycle
            from .bench.common import X
            return a, X
    """))
    edges = import_graph.graph("pkg", tmp_path)
    assert edges["pkg.a"] == {"pkg.b"} and edges["pkg.b"] == {"pkg.a", "pkg.bench", "pkg.bench.common"}
    assert import_graph.cycles(edges) == [["pkg.a", "pkg.b"]]
    assert import_graph.back_edges(edges, "pkg") == [["pkg.b", "pkg.bench"], ["pkg.b", "pkg.bench.common"]]


def test_the_graph_follows_imports_through_a_packages_init(tmp_path):
    """pkg.y imports pkg.sub.z, which runs pkg/sub/__init__, which imports pkg.sub.x, which imports
    pkg.y: a cycle no single import line shows."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .x import X\n")
    (package / "sub" / "x.py").write_text("from ..y import Y\nX = 1\n")
    (package / "sub" / "z.py").write_text("Z = 1\n")
    (package / "y.py").write_text("def f():\n    from .sub.z import Z\n    return Z\nY = 1\n")
    edges = import_graph.graph("pkg", tmp_path)
    assert edges["pkg.y"] == {"pkg.sub.z", "pkg.sub"} and edges["pkg.sub.x"] == {"pkg.y"}
    assert import_graph.cycles(edges) == [["pkg.sub", "pkg.sub.x", "pkg.y"]]


def test_importing_the_package_loads_no_tooling():
    code = ("import sys, pointsparse; print(' '.join(m for m in sys.modules if m.startswith('pointsparse.')))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=ROOT).stdout.split())
    tooling = {m for m in loaded if m.split(".")[1] in ("bench", "profiler", "tuner", "cli", "training",
                                                         "prune_command", "breakdown", "crosscheck")}
    assert "pointsparse.functional" in loaded and not tooling
