#!/usr/bin/env python3
"""Turn the FIGURES lines the fault and end-to-end scenarios write (CRYPTOPIPE_FIGURES=file.jsonl)
into the README's reliability table (Markdown on stdout).

    CRYPTOPIPE_FIGURES=/tmp/figures.jsonl make test PYTEST_ARGS="tests/e2e tests/faults"
    python scripts/reliability_table.py /tmp/figures.jsonl
"""
import json
import sys

def _pair(f, key):
    return f"{f.get('binance_' + key, '–')}/{f.get('kucoin_' + key, '–')}"


COLUMNS = [
    ("sent (B/K), simulator's log", lambda f: _pair(f, "sent")),
    ("sockets (B/K)", lambda f: _pair(f, "sockets")),
    ("stored rows (B/K)", lambda f: _pair(f, "stored")),
    ("extra", lambda f: _sum(f, "binance_extra", "kucoin_extra")),
    ("explained (in a recorded gap)", lambda f: _sum(f, "binance_explained", "kucoin_explained")),
    ("unexplained", lambda f: _sum(f, "binance_unexplained", "kucoin_unexplained")),
    ("corrupted frames / in DLQ", lambda f: f"{_sum(f, 'binance_corrupt_frames', 'kucoin_corrupt_frames')} / "
                                            f"{_sum(f, 'binance_corrupt_frames_in_dlq', 'kucoin_corrupt_frames_in_dlq')}"
     if "binance_corrupt_frames" in f else "–"),
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
    for k in ("sent", "sockets", "stored", "extra", "explained", "unexplained", "corrupt_frames",
              "corrupt_frames_in_dlq")}


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
