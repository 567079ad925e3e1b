"""Both pages in a real browser (headless Chromium): the prices page shows live prices that
update over the websocket, every number shown is a stored tick's, the spread is right, and the
coverage strips are drawn; the health view opens inside Airflow's UI after a login through its
form, is refused without one, and shows the database's figures. Screenshots for the README go
to docs/img/."""
import time
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

import pytest

from tests.e2e.conftest import SCREENSHOTS
from tests.e2e.test_api_stream_truth import api_url, wait_api_streaming

pytestmark = pytest.mark.e2e

CELLS_JS = """() => [...document.querySelectorAll('td.price[data-price]')].map(td =>
    [td.dataset.exchange, td.dataset.symbol, td.dataset.price, td.dataset.eventTime])"""


def spread_bps(binance: str, kucoin: str) -> str:
    a, b = Decimal(binance), Decimal(kucoin)
    bps = ((b - a) / ((a + b) / 2) * 10000).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    return "0.0" if bps == 0 else str(bps)


def stored(pg, cells) -> dict:
    with pg.cursor() as cur:
        cur.execute("""SELECT exchange, symbol, event_time, price FROM ticks
                        WHERE (exchange, symbol, event_time) IN (SELECT * FROM unnest(%s::text[], %s::text[],
                                                                                      %s::timestamptz[]))""",
                    ([c[0] for c in cells], [c[1] for c in cells], [c[3] for c in cells]))
        return {(ex, sym, t): price for ex, sym, t, price in cur.fetchall()}


def test_prices_page_shows_live_stored_prices(live_pipeline, pg, page):
    h = live_pipeline
    h.wait_streaming(pg)
    wait_api_streaming()
    page.goto(f"http://{api_url()}/")
    page.wait_for_function("() => document.querySelectorAll('td.price[data-price]').length >= 20", timeout=60_000)
    first = {(c[0], c[1]): c for c in page.evaluate(CELLS_JS)}
    # updates arrive over the websocket: the counter moves and shown prices get newer times
    page.wait_for_function("() => parseInt(document.getElementById('tick-count').textContent.replace(/\\D/g, '')) > 20",
                           timeout=60_000)
    time.sleep(3)
    assert page.locator("#conn-text").inner_text() == "live"
    second = page.evaluate(CELLS_JS)
    newer = [c for c in second if (c[0], c[1]) in first and c[3] > first[(c[0], c[1])][3]]
    assert newer, "no shown price was updated"
    assert {c[0] for c in second} == {"binance", "kucoin"}
    page.wait_for_function("() => document.querySelectorAll('.strip').length === 2", timeout=60_000)
    assert page.locator('.strip[data-exchange="binance"] .cells i').count() >= 96

    # every number shown is a stored tick's own price at its own exchange time
    h.settle()
    shown = list(first.values()) + second
    in_db = stored(pg, shown)
    wrong = [c for c in shown if in_db.get((c[0], c[1], datetime.fromisoformat(c[3].replace("Z", "+00:00"))))
             != Decimal(c[2])]
    assert not wrong, f"{len(wrong)} shown prices are not the stored ticks', e.g. {wrong[:3]}"
    # the spread column is (kucoin - binance) / mid in bps, from the two prices shown
    rows = page.evaluate("""() => [...document.querySelectorAll('tr[data-symbol]')].map(tr => [
        tr.querySelector('td[data-exchange=binance]').dataset.price || null,
        tr.querySelector('td[data-exchange=kucoin]').dataset.price || null,
        tr.querySelector('td.spread').textContent])""")
    both = [r for r in rows if r[0] and r[1]]
    assert both
    for binance, kucoin, spread in both:
        assert spread == spread_bps(binance, kucoin), (binance, kucoin, spread)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "prices-page.png"))


def test_health_view_behind_airflow_login(live_pipeline, airflow_stack, pg, page):
    url = airflow_stack["url"]
    anonymous = page.goto(f"{url}/cryptopipe/health/data")
    assert anonymous.status == 401
    page.goto(f"{url}/")
    page.wait_for_selector("input[name=username]", timeout=60_000)
    page.fill("input[name=username]", airflow_stack["user"])
    page.fill("input[name=password]", airflow_stack["password"])
    page.keyboard.press("Enter")
    page.wait_for_function("() => !location.pathname.includes('login')", timeout=60_000)
    page.goto(f"{url}/plugin/pipeline-health")
    frame = page.frame_locator("iframe")
    cell = frame.locator('.card[data-exchange="kucoin"] [data-field="connected_now"]')
    cell.wait_for(timeout=60_000)
    frame.locator("#lag tbody tr").first.wait_for(timeout=30_000)

    def shown(exchange, field):
        return frame.locator(f'#exchanges .card[data-exchange="{exchange}"] [data-field="{field}"]').inner_text()

    with pg.cursor() as cur:
        for ex in ("binance", "kucoin"):
            cur.execute("""SELECT count(*) FILTER (WHERE disconnected_at IS NULL AND last_seen_at > now() - interval '30 s'),
                                  count(*) FILTER (WHERE coalesce(disconnected_at, last_seen_at) > now() - interval '24 h')
                             FROM stream_sessions WHERE exchange = %s""", (ex,))
            now, day = cur.fetchone()
            assert int(shown(ex, "connected_now")) == now
            assert int(shown(ex, "sessions_24h")) == day
            cur.execute("SELECT status, count(*) FROM gaps WHERE exchange = %s GROUP BY status", (ex,))
            gaps = dict(cur.fetchall())
            for status in ("open", "backfilling", "filled", "failed"):
                assert shown(ex, f"gaps_{status}").split(" ")[0] == str(gaps.get(status, 0))
    assert frame.locator(".heat td.cell").count() > 0
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "health-view.png"), full_page=True)
