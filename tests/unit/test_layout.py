"""The house rules of service/ (issue #16), read from the source with `ast`: nothing here
imports the modules it checks.

- Layers: a module imports only modules of its own subpackage or of lower layers, in the
  order core <- scoring <- stream <- learning <- offline <- the top (the modules directly
  under service/: app, cli, faults, __main__). transport imports only core, and only
  stream and what is above it import transport. Nothing under service/ imports
  simulators, tests or benchmarks.
- No import cycle among the modules of service/, nor among those of simulators/, inside a
  subpackage included. An import inside a function counts (it runs when the function is
  called); one in an `if __name__ == "__main__":` block does not: that block runs only
  when the file is the program, never when the module is imported.
- No module under service/ over `MAX_LINES` lines.
- torch is imported only under service/scoring and service/learning (others may call
  their functions that use it, e.g. `service.scoring.runtime.configure_torch`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 400

# Subpackage -> the subpackages its modules may import. "top" is service/*.py.
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset({"core"}),
    "transport": frozenset({"core", "transport"}),
    "scoring": frozenset({"core", "scoring"}),
    "stream": frozenset({"core", "transport", "scoring", "stream"}),
    "learning": frozenset({"core", "transport", "scoring", "stream", "learning"}),
    "offline": frozenset({"core", "transport", "scoring", "stream", "learning", "offline"}),
    "top": frozenset({"core", "transport", "scoring", "stream", "learning", "offline", "top"}),
}
TORCH_LAYERS = frozenset({"scoring", "learning"})
NOT_FOR_SERVICE = frozenset({"simulators", "tests", "benchmarks"})


@dataclass(frozen=True)
class Import:
    module: str  # as written, resolved to an absolute name
    line: int


def module_files(package: str) -> dict[str, Path]:
    """Module name -> file, for every module of `package` (a top-level folder)."""
    files: dict[str, Path] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def is_main_guard(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":`"""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    sides = [test.left, *test.comparators]
    return (
        len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
        and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
    )


def imports_of(name: str, path: Path) -> Iterator[Import]:
    """Every import of the module, anywhere in it but a `__main__` block, as absolute names:
    `from a.b import c` gives `a.b.c` (which `resolve` cuts back to `a.b` if `c` is not a
    module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    body = [node for node in tree.body if not is_main_guard(node)]
    for node in (n for top in body for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield Import(f"{base}.{alias.name}", node.lineno)


def resolve(imported: str, known: dict[str, Path]) -> str | None:
    """The longest known module that `imported` names or lies in, if any."""
    parts = imported.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def layer(module: str) -> str:
    """service.<layer>.x -> layer; modules directly under service/ are the top."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"  # service/__init__.py: the package itself (its __version__)
    return parts[1] if parts[1] in ALLOWED and parts[1] != "top" else "top"


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


SERVICE = module_files("service")
SIMULATORS = module_files("simulators")
FIRST_PARTY = {**SERVICE, **SIMULATORS}


def graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of `files` it imports."""
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = (resolve(i.module, files) for i in imports_of(name, path))
        edges[name] = {t for t in targets if t is not None and t != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_violations() -> dict[tuple[str, str], str]:
    """(module, imported module) -> where and why, for every import against the layers."""
    found: dict[tuple[str, str], str] = {}
    for name, path in SERVICE.items():
        own = layer(name)
        for imp in imports_of(name, path):
            where = f"{relative(path)}:{imp.line}: {name} imports {imp.module}"
            top = imp.module.split(".")[0]
            if top in NOT_FOR_SERVICE:
                found[name, imp.module] = f"{where} (not for service/)"
                continue
            target = resolve(imp.module, SERVICE)
            if target is None or target == name:
                continue
            theirs = layer(target)
            if own == "root":
                found[name, target] = f"{where} (service/__init__.py imports nothing of it)"
            elif theirs != "root" and theirs not in ALLOWED[own]:
                found[name, target] = f"{where} ({own} may import {sorted(ALLOWED[own])})"
    return found


def torch_importers() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, path in SERVICE.items():
        if layer(name) in TORCH_LAYERS:
            continue
        for imp in imports_of(name, path):
            if imp.module == "torch" or imp.module.startswith("torch."):
                found.setdefault(name, f"{relative(path)}:{imp.line}: {name} imports torch")
    return found


def long_modules() -> dict[str, int]:
    lines = {relative(p): len(p.read_text().splitlines()) for p in SERVICE.values()}
    return {path: n for path, n in lines.items() if n > MAX_LINES}


def import_cycles() -> list[frozenset[str]]:
    return cycles(graph(SERVICE)) + cycles(graph(SIMULATORS))


def test_imports_go_down_the_layers() -> None:
    found = layer_violations()
    assert not found, "\n".join(why for _, why in sorted(found.items()))


def test_no_import_cycles() -> None:
    found = import_cycles()
    assert not found, "\n".join(" <-> ".join(sorted(c)) for c in found)


def test_no_module_over_the_line_limit() -> None:
    found = long_modules()
    assert not found, f"over {MAX_LINES} lines: {found}"


def test_torch_only_under_scoring_and_learning() -> None:
    found = torch_importers()
    assert not found, "\n".join(why for _, why in sorted(found.items()))


# -- the checker itself --------------------------------------------------------------------
def test_the_checker_sees_imports_in_functions_and_not_in_a_main_block(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "import a.b\n"
        "from . import sibling\n"
        "from .x import y\n"
        "def f():\n"
        "    from c import d\n"
        'if __name__ == "__main__":\n'
        "    import e\n"
    )
    found = {i.module for i in imports_of("pkg.sub.m", path)}
    assert found == {"a.b", "pkg.sub.sibling", "pkg.sub.x.y", "c.d"}


def test_the_checker_finds_cycles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [frozenset({"a", "b", "c"})]
    assert layer("service.stream.pipeline") == "stream"
    assert layer("service.app") == "top"
    assert resolve("service.core.config.Settings", SERVICE) == "service.core.config"
