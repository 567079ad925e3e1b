"""cryptopipe: the front door (CLI) and the local-stack manager."""
