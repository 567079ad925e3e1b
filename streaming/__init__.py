"""Streaming wing: extractors, transformer, loader, archiver (imports only `common`; the exchange
plugs are `common.exchanges`)."""
