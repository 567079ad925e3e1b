"""No exchange is named in code outside its plug: `if exchange == "binance"`, `{"binance": ...,
"kucoin": ...}[exchange]`, `choices=["binance", "kucoin"]` all spell an exchange's name as a string
literal. Every such literal in the source tree is flagged unless it lives in one of the places
allowed to name exchanges; the wings ask the registry (common.exchanges) instead."""
from __future__ import annotations

import ast
from pathlib import Path

from common.exchanges import EXCHANGES

ROOT = Path(__file__).resolve().parents[2]

# the only places that may spell an exchange's name (directories end with "/")
ALLOWED = (
    "common/exchanges/",        # the plugs and the registry
    "common/settings.py",       # settings defaults (the live endpoints)
    "sim/",                     # the simulator shares no code with the pipeline
    "tests/",                   # tests may name exchanges
    # the benchmark's peer: configures cryptofeed's own exchange classes, in cryptofeed's venv
    "cryptopipe/bench/cryptofeed_launcher.py",
    # formats the figures the fault tests write (keys the tests name), run with a bare python3
    "scripts/reliability_table.py",
)


def exchange_literals(source: str, names=EXCHANGES) -> list[tuple[int, str]]:
    """(line, literal) of every string constant that is an exchange's name."""
    wanted = {n.lower() for n in names}
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.strip().lower() in wanted]


def _allowed(rel: str) -> bool:
    return any(rel == a or (a.endswith("/") and rel.startswith(a)) for a in ALLOWED)


def test_the_scan_finds_a_branch_on_an_exchange_name():
    snippet = ('if exchange == "binance":\n    pass\n'
               'LIMIT = {"kucoin": 1500}[exchange]\n'
               'ok = exchange in (other,)\n'
               '"""a docstring may say binance"""\n')
    assert exchange_literals(snippet, ("binance", "kucoin")) == [(1, "binance"), (3, "kucoin")]


def test_no_exchange_name_outside_the_allowed_places():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith((".", "venv/")) or "/." in rel or _allowed(rel):
            continue
        found += [f"{rel}:{line}: {value!r}" for line, value in exchange_literals(path.read_text())]
    assert not found, "exchange names outside their plugs (ask common.exchanges instead):\n" + "\n".join(found)
