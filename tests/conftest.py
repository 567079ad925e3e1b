"""Shared fixtures. The stack fixtures start the real local services (see tests/plugins/)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# the recorded exchange payloads live in the repository (origin, date and license: SOURCES.md there)
SAMPLES = ROOT / "tests" / "fixtures" / "exchange-samples"

pytest_plugins = ["tests.plugins.stack", "tests.plugins.sim", "tests.plugins.pipeline", "tests.plugins.toxiproxy"]

# Cheap and isolated first; the long-running whole-pipeline suites last, so the session-scoped
# pipeline they share runs once, after the tests that truncate tables or own the topics.
_ORDER = ("tests/unit/", "tests/integration/", "tests/benchmarks/", "tests/e2e/", "tests/faults/")


# the cluster scenarios turn the stack into a three-broker cluster: after every other scenario
_LAST = "tests/faults/test_cluster_faults.py"


def _rank(item) -> int:
    path = Path(str(item.fspath)).resolve().relative_to(ROOT).as_posix()
    if path == _LAST:
        return len(_ORDER) + 1
    for i, prefix in enumerate(_ORDER):
        if path.startswith(prefix):
            return i
    return len(_ORDER)


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=_rank)  # stable: keeps file and definition order within a group
