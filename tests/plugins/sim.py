"""Fixtures that run the exchange simulator (`python -m sim`) as a subprocess (filled in below)."""
