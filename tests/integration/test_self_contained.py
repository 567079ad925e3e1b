"""The repository is self-contained: the unit suite passes from a copy of the checkout that has
nothing beside it (a user's clone has no ../shared or any other sibling folder)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p]


def test_unit_suite_passes_from_a_lone_copy(tmp_path):
    lone = tmp_path / "alone" / "cryptopipe"          # its parent holds nothing else
    for rel in _tracked_files():
        src = ROOT / rel
        if not src.is_file():                        # deleted in the work tree, not yet committed
            continue
        dst = lone / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    assert sorted(p.name for p in lone.parent.iterdir()) == ["cryptopipe"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRYPTOPIPE_", "PYTEST_"))}
    env["CRYPTOPIPE_HOME"] = str(tmp_path / "stack")   # no stack: unit tests must not need one
    env["PYTHONPATH"] = str(lone)
    run = subprocess.run([sys.executable, "-m", "pytest", "tests/unit", "-q", "-x", "-p", "no:cacheprovider",
                          "-o", "addopts=--benchmark-disable"],
                         cwd=lone, env=env, capture_output=True, text=True, timeout=900)
    tail = (run.stdout + run.stderr)[-4000:]
    assert run.returncode == 0, f"unit suite failed from a lone copy:\n{tail}"
    assert " passed" in run.stdout and "skipped" not in run.stdout, tail
