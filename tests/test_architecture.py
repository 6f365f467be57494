"""The layering the README promises, checked on the source: the core (`sheda_rt/`) never
imports `handlers/`. The edge (handlers) depends on the core, never the reverse, so the
core can be reused by another edge (a CLI, a worker, another transport) and read without
Tornado's request objects in mind. Whoever builds the server passes the application in."""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "sheda_rt"


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module an `import` or `from ... import` names, anywhere in the file (function
    bodies included: a lazy import is still a dependency)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))  # `from handlers import base` names the package
    return found


def test_core_imports_nothing_from_handlers():
    modules = sorted(CORE.rglob("*.py"))
    assert len(modules) > 20, f"expected the core's modules under {CORE}"
    offenders = []
    for path in modules:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for lineno, name in imported_modules(tree):
            if name == "handlers" or name.startswith("handlers."):
                offenders.append(f"{path.relative_to(CORE.parent)}:{lineno} imports {name}")
        for node in ast.walk(tree):  # importlib.import_module("handlers...") hides the same dependency
            if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str) and node.args[0].value.split(".")[0] == "handlers"
                    and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
                offenders.append(f"{path.relative_to(CORE.parent)}:{node.lineno} imports {node.args[0].value} dynamically")
    assert not offenders, "the core must not import handlers/:\n" + "\n".join(offenders)


# The composition root builds the context and wires every service from it; the server owns
# the context's lifecycle (start, jobs, drain, close). Nothing else in the core may hold it.
CONTEXT_OWNERS = {"sheda_rt/context.py", "sheda_rt/server.py"}


def test_services_receive_named_dependencies_not_the_context():
    """A service names what it uses in its constructor (typed keyword arguments wired in
    context.py), so a reader sees its dependencies at a glance and a test or benchmark can
    build it with just those. Taking the whole AppContext and reading `self.ctx.X` hides them."""
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE.parent).as_posix()
        if rel in CONTEXT_OWNERS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == "__init__":
                        a = item.args
                        for arg in a.posonlyargs + a.args + a.kwonlyargs:
                            annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                            if arg.arg == "ctx" or "AppContext" in annotation:
                                offenders.append(f"{rel}:{item.lineno} {node.name}.__init__ takes the context as {arg.arg!r}")
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                  and node.value.attr == "ctx"):
                offenders.append(f"{rel}:{node.lineno} reads {ast.unparse(node)}")
    assert not offenders, "services must receive named dependencies, not the context:\n" + "\n".join(offenders)


HANDLERS = CORE.parent / "handlers"


def test_handlers_reach_stores_only_through_services():
    """route -> handler -> service -> store: a handler parses and authorizes, then calls a service; the rules live
    in the service, which reaches the store. A handler reading a store the context holds (`self.ctx.X` where
    context.py builds X as a ...Store) skips them (the admin media upload called MediaStore itself)."""
    context = ast.parse((CORE / "context.py").read_text(encoding="utf-8"))
    stores = set()
    for node in ast.walk(context):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if (func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")).endswith("Store"):
                stores |= {t.attr for t in node.targets if isinstance(t, ast.Attribute) and ast.unparse(t.value) == "self"}
    assert {"media", "property_store", "users"} <= stores, stores  # the walk finds the context's stores
    offenders = []
    for path in sorted(HANDLERS.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in stores and ast.unparse(node.value).endswith("ctx"):
                offenders.append(f"handlers/{path.relative_to(HANDLERS).as_posix()}:{node.lineno} reads {ast.unparse(node)}")
    assert not offenders, "handlers must reach a store through its feature's service:\n" + "\n".join(offenders)
