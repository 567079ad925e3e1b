"""The plugs' connection steps (handshake, subscriptions, keepalive, control frames) driven through
a recording Link, the interface the transport gives them (the real transport against the
simulator: tests/integration/extractor)."""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest

from common.exchanges import Binance, KuCoin, SessionEnded

BULLET = json.dumps({"code": "200000", "data": {"token": "tok", "instanceServers": [
    {"endpoint": "ws://127.0.0.1:9/kucoin-ws", "pingInterval": 50, "pingTimeout": 500}]}}).encode()


class RecordingLink:
    def __init__(self, handshake=(), http=(200, BULLET), answer=None):
        self.conn_id = "xx-test-1"
        self.options = SimpleNamespace(urls={"binance_ws_url": "ws://h/b", "kucoin_rest_url": "http://h/k/"},
                                       open_timeout_s=1.0, ack_timeout_s=0.3, welcome_timeout_s=1.0)
        self.handshake = list(handshake)
        self.http = http
        self.answer = answer          # sent message -> the frame the exchange answers with (or None)
        self.session = None
        self.url = None
        self.posts, self.sent, self.events = [], [], []
        self.rotated = False
        self.inbox: asyncio.Queue | None = None

    async def read_loop(self):
        """The transport's part: every incoming protocol frame goes to the session's on_control."""
        while True:
            raw = await self.inbox.get()
            self.session.on_control(self.session.plug.classify(raw))

    async def connect(self, url):
        self.url = url

    async def recv_handshake(self, timeout_s):
        return self.handshake.pop(0)

    async def send(self, text):
        self.sent.append(json.loads(text))
        reply = self.answer(self.sent[-1]) if self.answer else None
        if reply is not None:
            self.inbox.put_nowait(reply)

    async def http_post(self, url, timeout_s):
        self.posts.append(url)
        return self.http

    def emit(self, kind, **detail):
        self.events.append((kind, detail))

    def rotate(self):
        self.rotated = True


def kucoin_session(spec, **kw):
    link = RecordingLink(**kw)
    link.session = KuCoin.session(spec, link)
    return link.session, link


async def drive(session, link, seconds=None):
    """open, then the session's steps beside the read loop until one fails (or `seconds` pass)."""
    link.inbox = asyncio.Queue()
    detail = await session.open()
    tasks = {asyncio.create_task(session.run()), asyncio.create_task(link.read_loop())}
    try:
        done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
        return detail, done
    finally:
        for task in tasks:
            task.cancel()


def ack(msg):
    if msg["type"] == "subscribe":
        return json.dumps({"id": msg["id"], "type": "ack"}).encode()
    return json.dumps({"id": msg["id"], "type": "pong"}).encode()


def test_kucoin_handshake_subscriptions_and_pings():
    session, link = kucoin_session(["/market/ticker:A-B,C-D", "/market/match:A-B"],
                                   handshake=[b'{"id":"xx-test-1","type":"welcome"}'], answer=ack)

    # subscriptions, then a ping every 50 ms, each answered: nothing ends the connection
    detail, ended = asyncio.run(drive(session, link, seconds=0.3))
    assert not ended
    assert link.posts == ["http://h/k/api/v1/bullet-public"]
    parts = urlsplit(link.url)
    assert parts.netloc == "127.0.0.1:9" and parse_qs(parts.query) == {"token": ["tok"], "connectId": ["xx-test-1"]}
    assert detail == {"topics": 2, "ping_interval_s": 0.05, "ping_timeout_s": 0.5}
    assert [m["topic"] for m in link.sent[:2]] == ["/market/ticker:A-B,C-D", "/market/match:A-B"]
    assert link.events == [("subscribed", {"topics": 3})]
    assert len([m for m in link.sent if m["type"] == "ping"]) >= 2


@pytest.mark.parametrize("handshake, http, reason", [
    ([b'{"type":"error","code":401,"data":"token is expired"}'], (200, BULLET), "token_expired"),
    ([b'{"type":"error","code":509,"data":"exceed"}'], (200, BULLET), "error_509"),
    ([b'{"type":"pong","id":"1"}'], (200, BULLET), "no_welcome:pong"),
    ([], (503, b""), "bullet_http_503"),
    ([], (200, b'{"code":"400100","msg":"nope"}'), "bullet_error"),
])
def test_kucoin_handshake_failures_end_with_a_reason(handshake, http, reason):
    session, _ = kucoin_session(["/market/ticker:all"], handshake=handshake, http=http)
    with pytest.raises(SessionEnded) as ended:
        asyncio.run(session.open())
    assert ended.value.reason == reason


@pytest.mark.parametrize("answer, reason", [
    (None, "ack_timeout"),
    (lambda m: json.dumps({"id": m["id"], "type": "error", "code": 404, "data": "no topic"}).encode(),
     "subscribe_error_404"),
    (lambda m: ack(m) if m["type"] == "subscribe" else None, "pong_timeout"),
])
def test_kucoin_subscription_and_keepalive_failures(answer, reason):
    session, link = kucoin_session(["/market/ticker:all"], handshake=[b'{"id":"xx-test-1","type":"welcome"}'],
                                   answer=answer)
    with pytest.raises(SessionEnded) as ended:
        asyncio.run(drive(session, link, seconds=5))
    assert ended.value.reason == reason


def test_kucoin_expired_token_mid_stream_ends_the_connection():
    session, _ = kucoin_session(["/market/ticker:all"])
    with pytest.raises(SessionEnded, match="token_expired"):
        session.on_control(KuCoin.classify(b'{"type":"error","code":401,"data":"token is expired"}'))
    session.on_control(KuCoin.classify(b'{"type":"error","code":509,"data":"exceed"}'))    # logged only
    assert "token_expired" in KuCoin.RECONNECT_AT_ONCE        # a new token at once, no backoff


def test_binance_url_streams_subscribe_messages_and_control_frames(monkeypatch):
    link = RecordingLink()
    session = Binance.session(["btcusdt@miniTicker"], link)

    async def steps():
        detail = await session.open()
        await session.run()
        return detail

    assert asyncio.run(steps()) == {"streams": 1, "url": "ws://h/b/stream"}
    assert link.url == "ws://h/b/stream?streams=btcusdt@miniTicker" and link.sent == []
    session.on_first_data()
    assert link.events == [("subscribed", {"streams": 1})]
    session.on_control(Binance.classify(b'{"e":"serverShutdown","E":1}'))
    assert link.rotated
    session.on_control(Binance.classify(b'{"result":null,"id":1}'))
    with pytest.raises(SessionEnded, match="subscribe_error"):
        session.on_control(Binance.classify(b'{"error":{"code":2,"msg":"Invalid request"},"id":1}'))

    monkeypatch.setattr(Binance, "MAX_URL_CHARS", 10)        # too long for a URL: SUBSCRIBE messages
    link = RecordingLink()
    streams = [f"s{i}@trade" for i in range(450)]
    session = Binance.session(streams, link)
    asyncio.run(steps())
    assert link.url == "ws://h/b/stream"
    assert [(m["id"], len(m["params"])) for m in link.sent] == [(1, 200), (2, 200), (3, 50)]
    assert [s for m in link.sent for s in m["params"]] == streams
