"""The package's import structure: no module-level import cycle, and a core free of I/O.

Read from the source (`ast`), so the tests say which import is wrong and where: a module-level
import is one that runs when the module is imported (`if TYPE_CHECKING:` blocks are for the type
checker only and do not count; imports inside functions are lazy and are listed apart). Then every
module is imported first in a fresh interpreter, the order that shows a cycle Python tolerates
only when another module happened to be imported before.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import rctlpolicy

PACKAGE = Path(rctlpolicy.__file__).resolve().parent

#: The core: rules, policies, lint, plans, on_match and the code registry. They are handed their
#: sources of data (text, a resolver, a kernel's answers) and touch no file, socket, process,
#: thread or clock themselves (STYLE.md, "A pure core, and I/O at the edges").
#: policyload.py is not here on purpose: reading the rules directory is its one job.
CORE = (
    "rctlpolicy.model",
    "rctlpolicy.amounts",
    "rctlpolicy.records",
    "rctlpolicy.grammar",
    "rctlpolicy.diagnostics",
    "rctlpolicy.semantics",
    "rctlpolicy.policy",
    "rctlpolicy.policy_conf",
    "rctlpolicy.policy_model",
    "rctlpolicy.policy_rule",
    "rctlpolicy.policy_yaml",
    "rctlpolicy.lint",
    "rctlpolicy.plan",
    "rctlpolicy.onmatch",
    "rctlpolicy.actioncontext",
    "rctlpolicy.codes",
    "rctlpolicy.checks",
)
FORBIDDEN_IN_CORE = frozenset({"os", "socket", "subprocess", "threading", "time"})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            found += _module_level_imports(node.body) + _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            found += _module_level_imports(node.body)
            for handler in node.handlers:
                found += _module_level_imports(handler.body)
            found += _module_level_imports(node.orelse) + _module_level_imports(node.finalbody)
        elif isinstance(node, ast.With):
            found += _module_level_imports(node.body)
    return found


def _imported_names(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute names of what `node` imports: a submodule when it is one, else its module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        is_package = modules()[module].name == "__init__.py"
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, base] if base else parts)
    names = []
    for alias in node.names:
        full = f"{base}.{alias.name}"
        names.append(full if full in modules() else base)
    return names


def _own_module(name: str) -> str | None:
    """The rctlpolicy module `name` is in (a module or one of its attributes), if any."""
    while name not in modules():
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name


@cache
def module_level_graph() -> dict[str, frozenset[str]]:
    """Module -> the rctlpolicy modules it imports at module level."""
    graph = {}
    for module, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = {
            own
            for node in _module_level_imports(tree.body)
            for name in _imported_names(module, node)
            if (own := _own_module(name)) is not None and own != module
        }
        graph[module] = frozenset(targets)
    return graph


def _cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root, children_of_root in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(children_of_root)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {
        "a": frozenset({"b"}),
        "b": frozenset({"c"}),
        "c": frozenset({"a"}),
        "d": frozenset({"a"}),
    }
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": frozenset({"b"}), "b": frozenset()}) == []


def test_no_module_level_import_cycle() -> None:
    graph = module_level_graph()
    assert len(graph) > 50, "the package's modules were not found"
    cycles = _cycles(graph)
    described = [
        f"cycle among {', '.join(c)}: "
        + "; ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c)
        for c in cycles
    ]
    assert cycles == [], "\n".join(described)


def _forbidden(module: str) -> set[str]:
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    return {
        name.split(".")[0]
        for node in _module_level_imports(tree.body)
        for name in _imported_names(module, node)
    } & FORBIDDEN_IN_CORE


def _core_closure() -> set[str]:
    """The core modules, their package's modules, and every rctlpolicy module they import."""
    seen: set[str] = set()
    todo = [m for m in modules() if any(m == c or m.startswith(c + ".") for c in CORE)]
    graph = module_level_graph()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def test_the_core_modules_exist() -> None:
    missing = [module for module in CORE if module not in modules()]
    assert missing == []


def test_the_core_imports_no_os_socket_subprocess_threading_or_time() -> None:
    """Directly or through another rctlpolicy module it imports at module level."""
    closure = _core_closure()
    assert set(CORE) <= closure
    offenders = {module: sorted(found) for module in closure if (found := _forbidden(module))}
    assert offenders == {}


def test_the_import_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    source = "from __future__ import annotations\nimport os\nif TYPE_CHECKING:\n    import time\n"
    tree = ast.parse(source)
    names = {
        name for node in _module_level_imports(tree.body) for name in _imported_names("x", node)
    }
    assert names == {"__future__", "os"}


#: (importer, imported): a lower layer that must not import a higher one, even inside a function.
#: The kernel package serves apply, the daemon and the commands, never the reverse; hostinfo
#: answers look-ups for the kernel's callers and is given its jail lister rather than building one.
LAYERS = [
    ("rctlpolicy.kernel", "rctlpolicy.apply"),
    ("rctlpolicy.kernel", "rctlpolicy.daemon"),
    ("rctlpolicy.kernel", "rctlpolicy.service"),
    ("rctlpolicy.kernel", "rctlpolicy.cli"),
    ("rctlpolicy.kernel", "rctlpolicy.exporter"),
    ("rctlpolicy.kernel", "rctlpolicy.exposition"),
    ("rctlpolicy.kernel", "rctlpolicy.daemonmetrics"),
    ("rctlpolicy.exposition", "rctlpolicy.exporter"),
    ("rctlpolicy.exposition", "rctlpolicy.daemonmetrics"),
    ("rctlpolicy.daemonmetrics", "rctlpolicy.exporter"),
    ("rctlpolicy.hostinfo", "rctlpolicy.kernel"),
]


def _runtime_imports(module: str) -> set[str]:
    """Every rctlpolicy module `module` may import when it runs (functions included, the type
    checker's imports not)."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            type_only.update(id(inner) for part in node.body for inner in ast.walk(part))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in type_only:
            for name in _imported_names(module, node):
                own = _own_module(name)
                if own is not None and own != module:
                    found.add(own)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_lower_layers_do_not_import_higher_ones() -> None:
    wrong = sorted(
        (module, target)
        for module in modules()
        for target in _runtime_imports(module)
        for lower, higher in LAYERS
        if _within(module, lower) and _within(target, higher)
    )
    assert wrong == []


#: Imports each module named on stdin first: the package's modules are dropped from sys.modules
#: before each (third-party ones stay, they are not ours to check).
_IMPORT_EACH = """
import importlib, sys, traceback
failed = []
for name in sys.stdin.read().split():
    for loaded in [m for m in sys.modules if m == "rctlpolicy" or m.startswith("rctlpolicy.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\\n" + traceback.format_exc())
print("\\n".join(failed))
"""


def test_each_module_imports_first() -> None:
    # Imported one after another in one interpreter, an earlier module would hide a cycle
    # that only shows when a module is the first one imported.
    names = [m for m in modules() if m != "rctlpolicy.__main__"]
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH],
        input=" ".join(names),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
