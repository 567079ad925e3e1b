"""Test doubles shared by the backfill unit tests."""
import threading


class FakeClock:
    """Monotonic and wall clock that advance only when someone sleeps."""

    def __init__(self, wall=1_700_000_000.0):
        self.t = 1000.0
        self.wall0 = wall
        self.slept = []
        self.lock = threading.Lock()

    def monotonic(self):
        return self.t

    def wall(self):
        return self.wall0 + self.t

    def sleep(self, s):
        with self.lock:
            self.slept.append(s)
            self.t += s
