"""cryptopipe's exchange simulator: Binance and KuCoin spot on one loopback port. See sim/README.md.

Imports nothing of the pipeline (not even `common/`), so a misreading of an exchange protocol
cannot hide in both the pipeline and the simulator.
"""
