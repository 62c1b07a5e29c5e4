"""The import graph of the pointsparse package: layers, cycles and back-edges into the tooling.

    python tools/import_graph.py [--package pointsparse] [--json]

Every import counts, those inside functions too (a lazy import hides a cycle, it does not remove
it). An edge goes to the module named, or to a package's ``__init__``, and to the ``__init__`` of
each package above the module that the importer is not inside (importing runs them); the root package's
``__init__`` (which imports the engine's public names) is left out as a target, since any
``from . import x`` would otherwise make it part of every cycle. A back-edge is an import of the
tooling (``TOOLING``) from the library outside it. Exit status 1 when there is a cycle or a
back-edge.
"""

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent
TOOLING = ("bench",)  # subpackages of the root the library must not import


def module_files(package_dir: Path, package: str) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py under ``package_dir`` (``__init__`` names the package)."""
    files = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join([package, *parts])] = path
    return files


def imports_of(name: str, path: Path, known: Set[str]) -> Set[str]:
    """Modules of ``known`` that module ``name`` (at ``path``) imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:
                origin = ".".join(base[: len(base) - node.level + 1] + ([origin] if origin else []))
            targets = [f"{origin}.{alias.name}" for alias in node.names] + [origin]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
                # Importing a submodule runs its packages' __init__ first, unless the importer is
                # inside that package (then its __init__ is already running).
                package = target.rpartition(".")[0]
                while package.count("."):
                    if not (name + ".").startswith(package + "."):
                        found.add(package)
                    package = package.rpartition(".")[0]
    return found


def graph(package: str = "pointsparse", root: Path = ROOT) -> Dict[str, Set[str]]:
    files = module_files(root / package, package)
    known = set(files)
    return {name: imports_of(name, path, known) - {package} for name, path in files.items()}


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def back_edges(edges: Dict[str, Set[str]], package: str = "pointsparse") -> List[List[str]]:
    tooling = tuple(f"{package}.{sub}" for sub in TOOLING)

    def in_tooling(name: str) -> bool:
        return any(name == t or name.startswith(t + ".") for t in tooling)

    return sorted([source, target] for source, targets in edges.items() if not in_tooling(source)
                  for target in targets if in_tooling(target))


def layers(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Modules by depth: layer 0 imports nothing of the package, layer n only layers below n
    (modules in a cycle are left out)."""
    depth: Dict[str, int] = {}
    remaining = dict(edges)
    while remaining:
        ready = {m for m, deps in remaining.items() if all(d in depth for d in deps)}
        if not ready:
            break
        for module in ready:
            depth[module] = 1 + max((depth[d] for d in remaining[module]), default=-1)
            del remaining[module]
    result: List[List[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for module, d in depth.items():
        result[d].append(module)
    return [sorted(layer) for layer in result]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="pointsparse")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    edges = graph(args.package)
    report = {"modules": len(edges), "edges": sum(map(len, edges.values())), "cycles": cycles(edges),
              "back_edges": back_edges(edges, args.package), "layers": layers(edges)}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{report['modules']} modules, {report['edges']} imports, {len(report['layers'])} layers")
        for depth, layer in enumerate(report["layers"]):
            print(f"  {depth:2d}: {' '.join(m.removeprefix(args.package + '.') for m in layer)}")
        print(f"cycles: {report['cycles'] or 'none'}")
        print(f"back-edges into the tooling: {report['back_edges'] or 'none'}")
    return 1 if report["cycles"] or report["back_edges"] else 0


if __name__ == "__main__":
    sys.exit(main())
