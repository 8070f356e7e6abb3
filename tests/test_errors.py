"""One error root and no import circles: every error a user can cause is an
`ambjax.errors.AmbjaxError`, and no module of `ambjax` imports itself back, directly or not."""

import ast
import importlib
import inspect
import os
import pkgutil

import ambjax
from ambjax.errors import AmbjaxError, Interrupted

PACKAGE = os.path.dirname(os.path.abspath(ambjax.__file__))


def _modules() -> dict[str, str]:
    """Module name -> source path for every module of the package."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(PACKAGE))
                module = rel[:-3].replace(os.sep, ".")
                out[module.removesuffix(".__init__")] = os.path.join(folder, name)
    return out


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from a import b` runs a (a package's __init__ too), and a.b if a module
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph[module] |= {name for name in names if name in modules and name != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_in_the_package():
    graph = _import_graph()
    assert "ambjax.errors" in graph and not graph["ambjax.errors"]
    assert _cycles(graph) == []
    # the check finds a circle when there is one
    assert _cycles({**graph, "ambjax.errors": {"ambjax.cli"}}) != []


def test_every_error_class_has_the_one_root():
    errors = []
    for info in pkgutil.walk_packages(ambjax.__path__, "ambjax."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__.startswith("ambjax"):
                errors.append(cls)
    assert len(set(errors)) >= 8
    for cls in set(errors) - {Interrupted}:
        assert issubclass(cls, AmbjaxError), cls
    assert not issubclass(Interrupted, Exception)        # `except Exception` lets it through
