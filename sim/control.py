"""`SimControl(base_url)`: a stdlib-only client of the simulator's control API (/_sim).

    ctl = SimControl(env["SIM_CONTROL_URL"])
    ctl.drop(exchange="binance")            # abort every Binance websocket
    ctl.drift("kucoin", "BTC-USDT", bps=80)  # KuCoin's BTC-USDT 0.8 % above Binance's from now on
    ticks = ctl.truth(exchange="kucoin", since_ms=t0, until_ms=t1)   # list of dicts
    candles = ctl.candles("binance", "BTC-USDT", start_ms, end_ms)

Every fault method returns the simulator's JSON answer; HTTP errors raise SimControlError.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request


class SimControlError(RuntimeError):
    pass


class SimControl:
    def __init__(self, base_url: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    # --- plumbing
    def _call(self, method: str, path: str, params: dict | None = None, body: dict | None = None):
        url = self.base_url + path
        if params:
            q = {k: v for k, v in params.items() if v is not None}
            if q:
                url += "?" + urllib.parse.urlencode(q)
        data = None
        headers = {}
        if method == "POST":
            data = json.dumps({k: v for k, v in (body or {}).items() if v is not None}).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise SimControlError(f"{method} {path}: HTTP {e.code}: {e.read()[:500]!r}") from None

    def _fault(self, name: str, **body):
        return self._call("POST", f"/faults/{name}", body=body)

    # --- reading
    def status(self) -> dict:
        return self._call("GET", "/status")

    def connections(self, exchange: str | None = None, since_ms: int | None = None,
                    until_ms: int | None = None, client_conn_id: str | None = None) -> list[dict]:
        """Connections that were up at some time in [since_ms, until_ms] (all when not given), each
        with conn_id, exchange, path, opened_ms, closed_ms, close_reason, subscriptions and what was
        written on it: ticks_sent (its truth records, flagged ones included), ticks_flagged
        ({'dup'|'malformed'|'truncated': n}), data_frames_sent, frames_sent (every text frame),
        first_sent_ms, last_sent_ms, notice/notice_ms ('serverShutdown' | 'token_expired' announced),
        client_conn_id (the client's X-Cryptopipe-Conn-Id header) and, on KuCoin, connect_id."""
        return self._call("GET", "/connections", {"exchange": exchange, "since_ms": since_ms,
                                                  "until_ms": until_ms,
                                                  "client_conn_id": client_conn_id})["connections"]

    def truth(self, exchange: str | None = None, since_ms: int | None = None, until_ms: int | None = None,
              symbol: str | None = None, conn_id: str | None = None, kind: str | None = None,
              by: str = "event", limit: int | None = None) -> list[dict]:
        """Ticks written to websockets: dicts with exchange, conn_id, kind, symbol (BASE-QUOTE),
        event_ms, sequence (KuCoin; None for Binance miniTicker), price (exact string), sent_ms,
        flag ('' | 'dup' | 'malformed' | 'truncated'). Window on event time, or send time (by='sent')."""
        r = self.truth_raw(exchange, since_ms, until_ms, symbol, conn_id, kind, by, limit)
        cols = r["columns"]
        return [dict(zip(cols, row)) for row in r["rows"]]

    def truth_raw(self, exchange=None, since_ms=None, until_ms=None, symbol=None, conn_id=None, kind=None,
                  by="event", limit=None) -> dict:
        return self._call("GET", "/truth", {"exchange": exchange, "since_ms": since_ms, "until_ms": until_ms,
                                            "symbol": symbol, "conn_id": conn_id, "kind": kind, "by": by,
                                            "limit": limit})

    def candles(self, exchange: str, symbol: str, start_ms: int | None = None, end_ms: int | None = None) -> list[dict]:
        """True 1-minute candles (open_ms, open, high, low, close, volume as strings, trades, complete)."""
        return self._call("GET", "/candles", {"exchange": exchange, "symbol": symbol, "start_ms": start_ms,
                                              "end_ms": end_ms})["candles"]

    def symbols(self, exchange: str = "binance") -> list[dict]:
        return self._call("GET", "/symbols", {"exchange": exchange})["symbols"]

    def fault_log(self) -> list[dict]:
        return self._call("GET", "/faults")["log"]

    def drifts(self, exchange: str | None = None) -> list[dict]:
        """Every drift period: exchange, symbol, bps, start_ms, end_ms (None: until cleared), active."""
        return self._call("GET", "/drifts", {"exchange": exchange})["drifts"]

    # --- faults
    def drop(self, exchange: str | None = None, mode: str = "abort") -> dict:
        """Drop every websocket (mode 'abort': TCP reset, no close frame; 'close': close frame 1001)."""
        return self._fault("drop", exchange=exchange, mode=mode)

    def outage(self, seconds: float, exchange: str | None = None, rest: bool = False) -> dict:
        """Drop every websocket, then answer websocket upgrades (and REST if rest=True) with 503."""
        return self._fault("outage", seconds=seconds, exchange=exchange, rest=rest)

    def stall(self, seconds: float, exchange: str | None = None) -> dict:
        """Sockets stay open but carry nothing: no data, no replies, no pings, no pongs."""
        return self._fault("stall", seconds=seconds, exchange=exchange)

    def corrupt(self, count: int | None = None, ratio: float | None = None, kind: str = "malformed",
                exchange: str | None = None, seconds: float | None = None) -> dict:
        """Corrupt the next `count` data frames (or a `ratio` of them): 'malformed' (invalid JSON)
        or 'truncated' (first half of the frame)."""
        return self._fault("corrupt", count=count, ratio=ratio, kind=kind, exchange=exchange, seconds=seconds)

    def duplicate(self, count: int | None = None, ratio: float | None = None, exchange: str | None = None,
                  seconds: float | None = None) -> dict:
        return self._fault("duplicate", count=count, ratio=ratio, exchange=exchange, seconds=seconds)

    def oversized(self, nbytes: int = 2 << 20, exchange: str | None = None) -> dict:
        """Send one frame of `nbytes` (a JSON object with an unknown event) before the next data frame."""
        return self._fault("oversized", bytes=nbytes, exchange=exchange)

    def rest_errors(self, status: int = 429, seconds: float | None = None, count: int | None = None,
                    exchange: str | None = None) -> dict:
        """Answer REST calls with 429 (Binance -1003 + Retry-After; KuCoin 429000), 418 or 503."""
        return self._fault("rest", status=status, seconds=seconds, count=count, exchange=exchange)

    def slow_rest(self, delay_s: float, seconds: float, exchange: str | None = None) -> dict:
        return self._fault("slow_rest", delay_s=delay_s, seconds=seconds, exchange=exchange)

    def expire_tokens(self, close: bool = True, grace_s: float = 0.05) -> dict:
        """KuCoin: every token issued so far becomes invalid; open sockets get error 401, keep
        sending data for `grace_s` (<= 20), then close. Returns once they are closed."""
        return self._fault("expire_tokens", close=close, grace_s=grace_s)

    def server_shutdown(self, grace_s: float = 1.0) -> dict:
        """Binance: send serverShutdown on every socket; each keeps sending data for `grace_s`
        (<= 20) and is then closed. Returns once they are closed."""
        return self._fault("server_shutdown", grace_s=grace_s)

    def drift(self, exchange: str, symbol: str, bps: float, seconds: float | None = None) -> dict:
        """From now on, `exchange`'s prices of `symbol` (BASE-QUOTE) are (1 + bps/10000) times the
        market's, in its websocket ticks, REST candles and truth candles alike (each symbol's
        decimals kept, prices stay positive); the other exchange is untouched. For `seconds`, or
        until clear_faults() or drift(bps=0). Answer: {"drift": {exchange, symbol, bps, start_ms,
        end_ms, ended}}."""
        return self._fault("drift", exchange=exchange, symbol=symbol, bps=bps, seconds=seconds)

    def clear_faults(self) -> dict:
        return self._fault("clear")
