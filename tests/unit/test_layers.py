"""The package's floors (issue 28's target layout): an import points only to the same floor or lower, never
up, and no two parts import each other in a circle, at runtime, inside functions or under ``TYPE_CHECKING``;
Ray is imported only from the pipeline up.

Every ``afm_ray`` module is read with :mod:`ast` (never imported) and placed by :data:`FLOORS`: the longest
dotted prefix there names its part (a package or a top-level module) and the part's floor."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "afm_ray"

# part (package or module, dotted) → floor, bottom up; a new module is placed here (or under a listed package)
FLOORS: dict[str, int] = {
    "afm_ray": 0,  # the package's __init__: its docstring and version
    "afm_ray.errors": 0,
    "afm_ray.console": 0,
    "afm_ray.config": 0,
    "afm_ray.files": 0,
    "afm_ray.presets": 0,
    "afm_ray.elements": 1,
    "afm_ray.molecules": 2,
    "afm_ray.sim": 2,
    "afm_ray.descriptors": 3,
    "afm_ray.samples": 4,
    "afm_ray.models": 5,
    "afm_ray.figures": 6,
    "afm_ray.pipeline": 7,
    "afm_ray.recipe": 7,
    "afm_ray.registry": 8,
    "afm_ray.train": 9,
    "afm_ray.predict": 9,
    "afm_ray.evaluation": 10,
    "afm_ray.sweep": 10,
    "afm_ray.bench": 11,
    "afm_ray.cli": 11,
    "afm_ray.__main__": 11,
}
RAY_FLOOR = FLOORS["afm_ray.pipeline"]  # Ray only at the edges: nothing below the pipeline imports it
# parts on one floor that must not import each other either
APART: frozenset[frozenset[str]] = frozenset({frozenset({"afm_ray.train", "afm_ray.predict"})})



def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def part_of(module: str) -> str | None:
    """The longest prefix of ``module`` in :data:`FLOORS` (``afm_ray`` itself only for the package's
    ``__init__``), or None where the module is not placed."""
    prefixes = [module.rsplit(".", cut)[0] for cut in range(module.count("."))]
    return next((prefix for prefix in prefixes if prefix in FLOORS), "afm_ray" if module == "afm_ray" else None)


def imports_of(module: str, root: str = "afm_ray") -> list[tuple[int, str]]:
    """(line, imported module of package ``root``) of every import statement in ``module``, wherever it stands."""
    path = MODULES[module]
    return imports_in(path.read_text(), module, is_package=path.name == "__init__.py", root=root)


def imports_in(source: str, module: str, is_package: bool, root: str = "afm_ray") -> list[tuple[int, str]]:
    """(line, imported module of package ``root``) of every import statement in ``source`` (module ``module``): at the
    top, inside functions, under ``if TYPE_CHECKING:``, relative ones resolved against its package."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import submodule` imports the submodule
            found += [(node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
                      for alias in node.names]
    return sorted({(line, name) for line, name in found if name == root or name.startswith(f"{root}.")})


def part_graph() -> dict[str, dict[str, list[str]]]:
    """part → {imported part → ["module:line", …]} over every placed module's imports of other parts."""
    graph: dict[str, dict[str, list[str]]] = {}
    for module in MODULES:
        source = part_of(module)
        for line, imported in imports_of(module):
            target = part_of(imported)
            if source and target and target != source:
                graph.setdefault(source, {}).setdefault(target, []).append(f"{module}:{line}")
    return graph


def circles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """One circle (a, b, …, a) through each strongly connected group of parts (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in graph.get(node, {}):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            groups.append([node, *group])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [walk_circle(graph, set(group), sorted(group)[0]) for group in groups if len(group) > 1]


def walk_circle(graph: dict[str, dict[str, list[str]]], group: set[str], start: str) -> list[str]:
    """A shortest path start → … → start inside ``group`` (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph.get(node, {})):
                if successor == start:
                    return [*paths[node], start]
                if successor in group and successor not in paths:
                    paths[successor] = [*paths[node], successor]
                    following.append(successor)
        frontier = following
    raise AssertionError(f"{start} is in no circle of {sorted(group)}")


def described(graph: dict[str, dict[str, list[str]]], source: str, target: str) -> str:
    return f"{source} (floor {FLOORS[source]}) → {target} (floor {FLOORS[target]}) at {', '.join(graph[source][target])}"


def test_every_module_is_placed_and_every_part_exists():
    assert [module for module in MODULES if part_of(module) is None] == [], "place these modules in FLOORS"
    assert sorted(set(FLOORS) - MODULES.keys()) == [], "FLOORS rows naming no module"


def test_no_import_climbs_a_floor_or_closes_a_circle():
    graph = part_graph()
    climbing = [described(graph, source, target) for source, targets in sorted(graph.items()) for target in targets
                if FLOORS[target] > FLOORS[source] or frozenset({source, target}) in APART]
    assert climbing == [], "imports that climb (or join parts kept apart):\n" + "\n".join(climbing)
    found = [" → ".join(circle) + "\n  " + "\n  ".join(described(graph, a, b) for a, b in zip(circle, circle[1:]))
             for circle in circles(graph)]
    assert found == [], "circles:\n" + "\n".join(found)


def test_nothing_below_the_pipeline_imports_ray():
    found = [f"{module}:{line} imports {name}" for module in MODULES if (part := part_of(module))
             and FLOORS[part] < RAY_FLOOR for line, name in imports_of(module, root="ray")]
    assert found == [], "Ray below the pipeline (the caller hands its device or cluster down):\n" + "\n".join(found)


def test_the_checker_names_a_climbing_import_and_a_circle():
    """The checks above on made-up graphs: they can fail, and say where."""
    graph = {"afm_ray.sim": {"afm_ray.pipeline": ["afm_ray.sim.device:12"]},
             "afm_ray.pipeline": {"afm_ray.sim": ["afm_ray.pipeline.actors:3"]},
             "afm_ray.train": {"afm_ray.predict": ["afm_ray.train.evaluate:40"]},
             "afm_ray.predict": {"afm_ray.models": ["afm_ray.predict.run:5"]}}
    assert described(graph, "afm_ray.sim", "afm_ray.pipeline") == (
        "afm_ray.sim (floor 2) → afm_ray.pipeline (floor 7) at afm_ray.sim.device:12")
    assert circles(graph) == [["afm_ray.pipeline", "afm_ray.sim", "afm_ray.pipeline"]]
    assert circles({"a": {"b": []}, "b": {"c": []}, "c": {"a": [], "d": []}}) == [["a", "b", "c", "a"]]
    assert part_of("afm_ray.models.dsh") == "afm_ray.models" and part_of("afm_ray.brand_new") is None


def test_imports_are_found_inside_functions_under_type_checking_and_relative():
    source = """
from __future__ import annotations
from typing import TYPE_CHECKING
import afm_ray.errors
from afm_ray import elements
if TYPE_CHECKING:
    from afm_ray.train.recipe_of_today import TrainConfig
def simulate():
    from ..pipeline import actors
    from . import device
    from .device import select_device
    import numpy
"""
    found = imports_in(source, "afm_ray.sim.simulator", is_package=False)
    assert found == [(4, "afm_ray.errors"), (5, "afm_ray.elements"), (7, "afm_ray.train.recipe_of_today"),
                     (9, "afm_ray.pipeline.actors"), (10, "afm_ray.sim.device"), (11, "afm_ray.sim.device")]
    assert imports_in("from . import errors", "afm_ray", is_package=True) == [(1, "afm_ray.errors")]
    assert imports_in("def f():\n    import ray.train\n", "afm_ray.sim", True, root="ray") == [(2, "ray.train")]
