"""Shared fixtures. The stack fixtures start the real local services (see tests/plugins/stack.py)."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLES = Path(os.environ.get("CRYPTOPIPE_SAMPLES", ROOT.parent / "shared" / "exchange-samples"))

pytest_plugins = ["tests.plugins.stack", "tests.plugins.sim"]
