#!/usr/bin/env python3
"""Turn the FIGURES lines the fault and end-to-end scenarios write (CRYPTOPIPE_FIGURES=file.jsonl)
into the README's reliability table (Markdown on stdout).

    CRYPTOPIPE_FIGURES=/tmp/figures.jsonl make test PYTEST_ARGS="tests/e2e tests/faults"
    python scripts/reliability_table.py /tmp/figures.jsonl
"""
import json
import sys

COLUMNS = [
    ("sent (B/K)", lambda f: f"{f.get('binance_sent', '–')}/{f.get('kucoin_sent', '–')}"),
    ("owed (B/K)", lambda f: f"{f.get('binance_owed', '–')}/{f.get('kucoin_owed', '–')}"),
    ("stored (B/K)", lambda f: f"{f.get('binance_stored', '–')}/{f.get('kucoin_stored', '–')}"),
    ("ticks missing", lambda f: _sum(f, "binance_missing", "kucoin_missing")),
    ("duplicates", lambda f: _sum(f, "binance_duplicates", "kucoin_duplicates")),
    ("outside coverage → backfilled", lambda f: _sum(f, "binance_outside_coverage", "kucoin_outside_coverage")),
    ("raw records archived / missing / doubled",
     lambda f: f"{f['archived_records']} / {f['archive_missing']} / {f['archive_duplicates']}"
     if "archived_records" in f else "–"),
    ("gaps filled", lambda f: f.get("gaps_filled", "–")),
    ("minutes missing", lambda f: f.get("minutes_missing", "–")),
    # every symbol-minute of the window after reconciliation; gap minutes only before it
    ("minutes checked vs truth", lambda f: f.get("minutes_checked_vs_truth", f.get("minutes_filled_checked", "–"))),
    ("stream candles compared / differing / missing",
     lambda f: f"{f['stream_candles_compared']} / {f['stream_candles_differing']} / {f['stream_candles_missing']}"
     if "stream_candles_compared" in f else "–"),
]


# keys the columns above show (and bookkeeping); every other figure goes to the last column
_SHOWN = {"scenario", "at", "archived_records", "archive_missing", "archive_duplicates", "gaps_filled",
          "minutes_missing", "minutes_filled_checked", "minutes_checked_vs_truth", "stream_candles_compared",
          "stream_candles_differing", "stream_candles_missing"} | {
    f"{ex}_{k}" for ex in ("binance", "kucoin")
    for k in ("sent", "owed", "stored", "missing", "duplicates", "outside_coverage")}


def _others(f) -> str:
    rest = [f"{k}={v}" for k, v in f.items() if k not in _SHOWN]
    return ", ".join(rest) if rest else "–"


COLUMNS.append(("scenario's own figures", _others))


def _sum(f, *keys):
    vals = [f[k] for k in keys if k in f]
    return sum(vals) if vals else "–"


def main(path: str) -> int:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    print("| scenario | " + " | ".join(c for c, _ in COLUMNS) + " |")
    print("| --- " * (len(COLUMNS) + 1) + "|")
    for f in rows:
        print(f"| {f['scenario']} | " + " | ".join(str(fn(f)) for _, fn in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
