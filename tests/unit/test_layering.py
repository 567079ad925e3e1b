"""Imports flow downward only (docs/architecture.md): no module imports a floor above its own, and the
simulator shares no code with the pipeline (a misreading of an exchange's protocol cannot hide in both)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOORS = ("cryptopipe", "dags", "plugins", "streaming", "backfill", "common", "sim")
MAY_IMPORT = {
    "cryptopipe": set(FLOORS),
    "dags": {"plugins", "backfill", "common"},
    "plugins": {"backfill", "common"},
    "streaming": {"common"},
    "backfill": {"common"},
    "common": set(),
    "sim": set(),
}


def imported_floors(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(FLOORS)


@pytest.mark.parametrize("floor", FLOORS)
def test_a_floor_imports_only_the_floors_below_it(floor):
    wrong = {}
    for path in sorted((ROOT / floor).rglob("*.py")):
        bad = imported_floors(path) - MAY_IMPORT[floor] - {floor}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"{floor}/ imports floors above it: {wrong}"
