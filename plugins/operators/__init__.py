"""Operators: one action each (supervise the streaming daemons, ...)."""
