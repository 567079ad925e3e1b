"""The on-disk spool: order, bound, reserve, prepend, restart, torn tails."""
from __future__ import annotations

from streaming.extractor import spool as spool_mod
from streaming.extractor.spool import Record, Spool


def rec(i: int, size: int = 10) -> Record:
    return Record("binance_raw_data", b"c1", str(i).encode().ljust(size, b"."),
                  [("received_ns", str(1000 + i).encode()), ("conn_id", b"c1")])


def drain(sp: Spool, batch: int = 7) -> list[bytes]:
    out = []
    while True:
        records, pos = sp.peek(max_records=batch)
        if not records:
            sp.commit(pos)
            return out
        out += [r.value for r in records]
        sp.commit(pos)


def test_fifo_round_trip_and_depth(tmp_path):
    sp = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(100):
        assert sp.append(rec(i))
    assert sp.depth_bytes > 0 and not sp.empty()
    first, _ = sp.peek(max_records=1)
    assert first[0].headers == [("received_ns", b"1000"), ("conn_id", b"c1")] and first[0].key == b"c1"
    assert drain(sp) == [rec(i).value for i in range(100)]
    assert sp.empty() and sp.depth_bytes == 0
    sp.append(rec(500))
    assert drain(sp) == [rec(500).value]


def test_bound_and_reserve(tmp_path):
    sp = Spool(tmp_path, max_bytes=2000, reserve_bytes=500)
    n = 0
    while sp.append(rec(n, 100)):
        n += 1
    assert 10 <= n <= 20
    assert sp.depth_bytes <= 2000
    assert sp.append(rec(999, 100), reserve=True)            # events still fit
    assert drain(sp)[-1] == rec(999, 100).value


def test_survives_restart_and_partial_commit(tmp_path):
    sp = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(50):
        sp.append(rec(i))
    records, pos = sp.peek(max_records=20)
    sp.commit(pos)
    sp.close()
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.depth_bytes == sum(len(spool_mod.encode(rec(i))) for i in range(20, 50))
    assert drain(again) == [rec(i).value for i in range(20, 50)]


def test_prepend_goes_first(tmp_path):
    sp = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(10, 20):
        sp.append(rec(i))
    records, pos = sp.peek(max_records=3)
    sp.commit(pos)                                            # 10..12 delivered
    sp.prepend([rec(i) for i in range(5)])
    sp.append(rec(20))
    assert drain(sp) == [rec(i).value for i in [0, 1, 2, 3, 4, *range(13, 21)]]


def test_segments_roll_over(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_mod, "SEGMENT_BYTES", 500)
    sp = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(100):
        sp.append(rec(i))
    assert len(list(tmp_path.glob("*.seg"))) > 5
    assert drain(sp, batch=13) == [rec(i).value for i in range(100)]
    assert len(list(tmp_path.glob("*.seg"))) <= 1


def test_torn_tail_is_ignored(tmp_path):
    sp = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(5):
        sp.append(rec(i))
    sp.close()
    seg = next(tmp_path.glob("*.seg"))
    seg.write_bytes(seg.read_bytes()[:-7])                   # crash mid-write of the last record
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert drain(again) == [rec(i).value for i in range(4)]


def test_appends_after_a_torn_tail_are_kept(tmp_path):
    sp = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(3):
        sp.append(rec(i))
    sp.close()
    seg = next(tmp_path.glob("*.seg"))
    seg.write_bytes(seg.read_bytes()[:-3])
    again = Spool(tmp_path, max_bytes=1 << 20)
    again.append(rec(3))
    assert drain(again) == [rec(i).value for i in (0, 1, 3)]
