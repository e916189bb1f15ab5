"""Checks retrax's import graph: no cycles, no upward imports, no private names across modules.

Usage: ``python scripts/check_imports.py`` (exit status 1 when something is
wrong; ``--graph`` also prints every edge). ``tests/test_import_graph.py``
runs it, so the suite keeps these true.

What it reads: the ``import`` statements of every module under ``retrax/``,
found with ``ast``, including those inside functions (a lazy import still
makes a dependency; only blocks under ``if TYPE_CHECKING:`` are skipped, they
never run). ``import a.b.c`` depends on ``a.b.c``; ``from a.b import x`` on
``a.b.x`` when that is a module, else on ``a.b``. Importing a module also runs
its packages' ``__init__``; like other import-graph tools this one does not
count that as an edge, or every module would depend on ``retrax/__init__.py``.

What it checks:

1. **Cycles**: strongly connected components of the module graph.
2. **Upward imports**: every module has a tier in ``TIERS`` (by its longest
   listed prefix) and may import only modules of its own tier or a lower one.
   Layers sit below models; checkpoints and pretrained models above both; the
   package ``retrax`` itself and the command line at the top. A new top-level
   module must be given a tier here.
3. **Private names across modules**:
   ``from retrax.m import _x``; ``m._x`` on a retrax module bound by an import;
   ``obj._x`` (also ``getattr(obj, "_x")``, ``hasattr``, ``setattr``) where
   ``obj`` is not ``self``/``cls``/``super()`` and ``_x`` is a private name of
   retrax (defined or stored on an object somewhere in it) that this module
   does not define (a definition is a ``def``/``class``, an assignment to a
   name, or a ``self._x = ...``); namedtuple methods (``_replace``, ...) are
   public API. A private *module* (``retrax/data/_state.py``) may be imported
   by the modules of its own package only.

``KNOWN_PRIVATE_USES`` lists the private uses that other work still has to
remove, ``ALLOWED_PRIVATE_USES`` the deliberate ones (each with why); the
check fails on any other, and reports entries of the first list that no
longer occur so they can be deleted.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "retrax"

# Lowest first. A module may import modules of its own tier or a lower one.
TIERS: list[tuple[str, list[str]]] = [
    ("leaves", ["retrax.version", "retrax.shapes", "retrax.io"]),
    ("math and file formats below layers", ["retrax.fastmath", "retrax.compat"]),
    ("layers", ["retrax.layers"]),
    ("models, optimizers, data", ["retrax.models", "retrax.optimizers", "retrax.data", "retrax.rl"]),
    ("checkpoints", ["retrax.native_format", "retrax.checkpoints", "retrax.pretrained"]),
    ("training and inspection", ["retrax.supervised", "retrax.visualize"]),
    ("applications", ["retrax", "retrax.cli", "retrax.quickstart", "retrax.__main__"]),
]

# (module, private name) -> why it is still there. Delete entries as they go.
KNOWN_PRIVATE_USES: dict[tuple[str, str], str] = {}

# (module, private name) -> why it is right.
ALLOWED_PRIVATE_USES: dict[tuple[str, str], str] = {
    ("retrax.compat.trax_pickle", "_values"):
        "Trax's own History objects keep their values in _values (reading Trax's files)",
}

_TYPE_CHECKING_NAMES = {"TYPE_CHECKING", "typing.TYPE_CHECKING"}
_NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__")) \
        and name != "_" and name not in _NAMEDTUPLE_API


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module


@dataclass
class Report:
    edges: dict[str, set[str]] = field(default_factory=dict)
    cycles: list[list[str]] = field(default_factory=list)
    upward: list[str] = field(default_factory=list)
    untiered: list[str] = field(default_factory=list)
    private: list[str] = field(default_factory=list)
    stale_known: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.cycles or self.upward or self.untiered or self.private)


def load_modules(root: Path = ROOT) -> dict[str, Module]:
    """Every module of the package, parsed."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        modules[name] = Module(name, path, is_package, ast.parse(path.read_text(), str(path)))
    return modules


def _runtime_nodes(tree: ast.AST):
    """All nodes, except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) in _TYPE_CHECKING_NAMES:
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve_from(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: Module, modules: dict[str, Module]):
    """``(target module, imported name or None, bound alias or None, node)`` per import."""
    for node in _runtime_nodes(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    bound = alias.asname or alias.name.split(".")[0]
                    target = alias.name if alias.asname else PACKAGE
                    yield alias.name, None, (bound, target), node
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(module, node)
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    yield sub, None, (alias.asname or alias.name, sub), node
                else:
                    yield source, alias.name, None, node


def _tier(name: str) -> int | None:
    best = None
    for rank, (_, prefixes) in enumerate(TIERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank)
    return None if best is None else best[1]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []

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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def one_cycle(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest import cycle through the first module of ``component``."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges.get(v, ())):
            if w == start:
                return paths[v] + [start]
            if w in members and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return component


def _definitions(tree: ast.AST) -> set[str]:
    """Private names this module defines (see the module docstring)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if _is_private(n)}


def _stored_attributes(tree: ast.AST) -> set[str]:
    """Private attribute names stored on any object (``layer._tag = ...``)."""
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store) and _is_private(node.attr)}


def _attribute_uses(tree: ast.AST):
    """``(owner expression, attribute name, line)`` for ``x._a`` and ``getattr(x, "_a")``."""
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            yield node.value, node.attr, node.lineno
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "hasattr", "setattr", "delattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str) and _is_private(node.args[1].value):
            yield node.args[0], node.args[1].value, node.lineno


def _is_self(expr: ast.expr) -> bool:
    if isinstance(expr, ast.Name):
        return expr.id in ("self", "cls")
    return isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) \
        and expr.func.id == "super"


def check(root: Path = ROOT) -> Report:
    modules = load_modules(root)
    report = Report()
    defined = {name: _definitions(m.tree) for name, m in modules.items()}
    everywhere = set().union(*defined.values(), *(_stored_attributes(m.tree)
                                                   for m in modules.values()))
    seen_known: set[tuple[str, str]] = set()

    def private(name: str, what: str, line: int, attr: str) -> None:
        if (name, attr) in KNOWN_PRIVATE_USES:
            seen_known.add((name, attr))
            return
        if (name, attr) in ALLOWED_PRIVATE_USES:
            return
        report.private.append(f"{modules[name].path.relative_to(root)}:{line}: {what}")

    for name, module in modules.items():
        deps = report.edges.setdefault(name, set())
        aliases: dict[str, str] = {}  # local name -> retrax module
        for target, imported, bound, node in _imports(module, modules):
            deps.add(target)
            if bound:
                aliases[bound[0]] = bound[1]
            last = target.rsplit(".", 1)[-1]
            package = target.rsplit(".", 1)[0]
            if imported is not None and _is_private(imported):
                private(name, f"imports the private name {imported} from {target}", node.lineno,
                        imported)
            elif imported is None and _is_private(last) and not name.startswith(package + ".") \
                    and name != package:
                private(name, f"imports the private module {target} from outside {package}",
                        node.lineno, last)
        for owner, attr, line in _attribute_uses(module.tree):
            if _is_self(owner):
                continue
            chain = ast.unparse(owner)
            if chain in aliases or chain.split(".")[0] in aliases:
                head = aliases.get(chain) or aliases[chain.split(".")[0]]
                full = head if chain in aliases else head + chain[len(chain.split(".")[0]):]
                if f"{full}.{attr}" not in modules:
                    private(name, f"reads {chain}.{attr}, a private name of {full}", line, attr)
            elif attr in everywhere and attr not in defined[name]:
                private(name, f"uses {chain}.{attr}, private to another module", line, attr)

    for name, deps in report.edges.items():
        rank = _tier(name)
        if rank is None:
            report.untiered.append(name)
            continue
        for dep in sorted(deps):
            dep_rank = _tier(dep)
            if dep_rank is not None and dep_rank > rank:
                report.upward.append(
                    f"{name} ({TIERS[rank][0]}) imports {dep} ({TIERS[dep_rank][0]})")
    report.cycles = _cycles(report.edges)
    report.stale_known = sorted(set(KNOWN_PRIVATE_USES) - seen_known)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", action="store_true", help="print every import edge")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository to check")
    args = parser.parse_args(argv)
    report = check(args.root.resolve())
    if args.graph:
        for name in sorted(report.edges):
            for dep in sorted(report.edges[name]):
                print(f"{name} -> {dep}")
    cycles = [f"{' -> '.join(one_cycle(c, report.edges))} (one cycle among {len(c)} modules)"
              for c in report.cycles]
    sections = [("Import cycles", cycles),
                ("Upward imports", report.upward),
                ("Modules without a tier (add them to TIERS)", report.untiered),
                ("Private names used across modules", report.private)]
    for title, items in sections:
        if items:
            print(f"{title}:")
            for item in items:
                print(f"  {item}")
    if report.stale_known:
        print("KNOWN_PRIVATE_USES entries that no longer occur (delete them):")
        for entry in report.stale_known:
            print(f"  {entry}")
    n_edges = sum(len(d) for d in report.edges.values())
    print(f"{len(report.edges)} modules, {n_edges} imports: "
          + ("no cycles, no upward imports, no private names across modules."
             if report.ok else "problems above."))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
