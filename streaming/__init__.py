"""Streaming wing: exchange adapters, extractors, transformer, loader, archiver (imports only `common`)."""
