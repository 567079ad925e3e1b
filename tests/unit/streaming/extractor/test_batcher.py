"""The Batcher: frames byte for byte into batches by count, size and linger; a newline frame alone;
what it holds bounds how far the connection's data is safe."""
from common.codec.raw import frames_of, read_raw_meta
from streaming.extractor.batcher import Batcher

NS = 1_790_000_000_000_000_000


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def frames(records):
    return [f for r in records for f in frames_of(r.value, read_raw_meta(r.headers))]


def test_batches_by_count_and_size_keep_every_frame_in_order():
    b = Batcher("kucoin_raw_data", "c1", "kucoin", max_frames=3, max_bytes=10_000, clock=Clock())
    sent = [b'{"n":%d}' % i for i in range(8)]
    out = [r for i, f in enumerate(sent) for r in b.add(f, NS + i)]
    assert [read_raw_meta(r.headers).count for r in out] == [3, 3]
    out.append(b.take())
    assert frames(out) == sent and b.take() is None
    meta = read_raw_meta(out[1].headers)
    assert meta.received_ns == NS + 3 and out[1].received_ns == NS + 3 and dict(out[1].headers)["last_received_ns"] == str(NS + 5).encode()
    big = Batcher("t", "c1", "kucoin", max_frames=1000, max_bytes=20, clock=Clock())
    assert big.add(b"x" * 15, NS) == [] and len(big.add(b"y" * 15, NS + 1)) == 1


def test_linger_bounds_how_long_a_frame_waits():
    clock = Clock()
    b = Batcher("t", "c1", "kucoin", linger_s=0.02, clock=clock)
    assert b.due_in() is None and b.pending_since_ns is None
    b.add(b"{}", NS)
    clock.t += 0.005
    b.add(b"{}", NS + 5)
    assert abs(b.due_in() - 0.015) < 1e-9 and b.pending_since_ns == NS      # counted from the first frame
    clock.t += 0.05
    assert b.due_in() == 0.0
    record = b.take()
    assert read_raw_meta(record.headers).count == 2 and b.pending_since_ns is None


def test_a_frame_holding_a_newline_travels_alone_after_the_batch_so_far():
    b = Batcher("t", "c1", "kucoin", clock=Clock())
    b.add(b"a", NS)
    out = b.add(b'{"x":\n1}', NS + 1)
    assert [r.value for r in out] == [b"a", b'{"x":\n1}']
    assert frames(out) == [b"a", b'{"x":\n1}']                     # one frame each: nothing split
