"""The hang watchdog's limits and its one warning per silence, on a clock the test moves (the training tests show it
in a real run: tests/runtime/test_longrun.py)."""

from __future__ import annotations

from ftune.runtime.train.watchdog import START_LIMIT_S, Watchdog


def watchdog(hang_after=None, on_hang="warn", log=None):
    now = [0.0]
    said: list[tuple[str, dict]] = []
    dog = Watchdog(hang_after, on_hang, lambda f: said.append(("warn", f)), lambda f: said.append(("fail", f)),
                   lambda: "training", clock=lambda: now[0], log=log)
    return dog, now, said


def test_the_default_limit_is_the_larger_of_ten_minutes_and_twenty_median_steps():
    dog, now, _ = watchdog()
    assert dog.limit() == START_LIMIT_S  # before the first step: loading the data and the model
    for t in (30.0, 31.0, 32.0):  # the first step took 30 s (a compile, a warm-up); then 1 s each
        now[0] = t
        dog.beat()
    assert dog.limit() == 600.0  # 20 x 1 s is less than 10 minutes
    for i in range(1, 40):
        now[0] = 32.0 + 45 * i  # 45 s a step from here on: the median moves
        dog.beat()
    assert dog.limit() == 20 * 45.0
    assert watchdog(hang_after=5)[0].limit() == START_LIMIT_S  # a short hang_after does not cut the loading short


def test_one_warning_per_silence_and_on_hang_stop_a_limit_later(tmp_path):
    with open(tmp_path / "train.log", "w+") as log:
        check_one_warning_per_silence(log)


def check_one_warning_per_silence(log):
    dog, now, said = watchdog(hang_after=10, on_hang="stop", log=log)
    dog.beat()
    now[0] = 9.0
    dog.check()
    assert said == []
    now[0] = 11.0
    dog.check()
    now[0] = 15.0
    dog.check()  # the same silence: no second warning
    assert [k for k, _ in said] == ["warn"]
    fields = said[0][1]
    assert fields["message"] == "no step for 11 s" and fields["phase"] == "training" and fields["limit_s"] == 10
    # the training thread's innermost frames (here the test calls check itself, so they end in the watchdog)
    assert fields["frames"][-4].startswith("check_one_warning_per_silence") and fields["frames"][-1].startswith(
        "innermost_frames (watchdog.py:")
    log.seek(0)
    assert "in check_one_warning_per_silence" in log.read()  # faulthandler, every thread
    now[0] = 21.0
    dog.check()
    assert [k for k, _ in said] == ["warn", "fail"]  # on_hang: stop, 2 x hang_after into the silence
    dog.beat()  # a step: the next silence warns again
    now[0] = 32.0
    dog.check()
    assert [k for k, _ in said][-1] == "warn"
