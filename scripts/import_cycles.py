"""Print every import cycle among the modules of envlock and parity; exit 1 if there is one.

Every import counts: at the top of a module, inside a function, under `if TYPE_CHECKING:`.
A package's `__init__` counts as the module it is. Run by `make lint` beside import-linter's
contracts (pyproject.toml), which forbid imports against the layers; this forbids cycles
anywhere, inside one layer too (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import sys

import grimp


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        # Iterative, so a deep import chain cannot exhaust Python's recursion limit.
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def main() -> int:
    graph = grimp.build_graph("envlock", "parity")
    found = cycles(graph)
    for group in found:
        print("import cycle: " + " <-> ".join(group))
    if not found:
        print(f"no import cycles among {len(graph.modules)} modules of envlock and parity")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
