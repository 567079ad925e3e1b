"""Extractors: exchange websockets -> raw Kafka topics, byte for byte, with lifecycle events.

transport: one websocket connection, whatever the exchange (its plug's session drives the protocol);
runner: slots that keep connections alive (backoff, stall, rotation) and the process loop;
sink: the Kafka producer with the on-disk spool behind it; spool: the bounded on-disk FIFO;
events: `pipeline_events` records; metrics: /metrics; cli: `cryptopipe extract binance|kucoin`.
"""
