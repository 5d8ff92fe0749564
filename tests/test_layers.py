"""The package's shape: no module imports one that (directly or through others) imports it back."""

from __future__ import annotations

import grimp


def test_no_import_cycles_between_modules() -> None:
    graph = grimp.build_graph("finechain", cache_dir=None)  # imports for type checking count too: a cycle of types is a cycle of design
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append((module, imported))
    assert cycles == []
