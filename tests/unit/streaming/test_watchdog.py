import threading
import time

from streaming.consumer_loop import Watchdog


def test_watchdog_fires_when_a_step_hangs():
    fired = threading.Event()
    codes = []
    with Watchdog(0.2, "a hanging call", exit=lambda code: (codes.append(code), fired.set())):
        assert fired.wait(5), "the watchdog did not fire"
    assert codes == [Watchdog.EXIT_CODE]


def test_watchdog_stays_quiet_when_the_step_finishes():
    codes = []
    with Watchdog(0.3, "a quick call", exit=codes.append):
        time.sleep(0.01)
    time.sleep(0.5)
    assert codes == []
