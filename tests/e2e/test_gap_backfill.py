"""An exchange outage on the real stack: the websockets are refused for minutes, gap detection
finds the hole, REST backfill fills it, and every minute holds the simulator's true candle."""
import time

import pytest

from tests.plugins.pipeline import Figures, now_ms

pytestmark = pytest.mark.e2e


def test_outage_is_detected_and_backfilled_with_true_candles(live_pipeline, pg):
    h = live_pipeline
    t0 = now_ms()
    time.sleep(5)
    h.sim.outage(150)            # both exchanges refuse websocket connections for 2.5 minutes
    time.sleep(150 + 25)         # the outage, then the extractors reconnect (backoff) and stream again
    t1 = now_ms()
    h.settle()
    fig = Figures("outage_150s")
    h.check_ticks(pg, t0, t1, fig)
    gaps = h.fill_gaps(fig)
    assert any(g.kind and "uncovered" in g.kind for g in gaps), [g.to_dict() for g in gaps]
    h.check_candles(pg, t0, t1, fig)
    fig.print()
    assert h.all_running() == {}
