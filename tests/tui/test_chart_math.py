"""The charts' numbers (tui/chart_math.py), without Textual."""

import math

from ftune.tui.chart_math import curve, log_scale, loss_ticks, mean, scaler, step_ticks


def test_one_point_is_no_curve_and_each_curve_is_a_new_list():
    assert curve([]) == [] and curve([2.0]) == []  # a Sparkline draws one value as a solid block
    values = [2.0, 1.5]
    drawn = curve(values)
    assert drawn == values and drawn is not values  # the same list mutated in place would not redraw


def test_a_bar_is_the_mean_of_its_values():
    assert mean([1.0, 2.0, 6.0]) == 3.0


def test_log_scale_only_for_positive_losses():
    assert log_scale([2.0, 0.5])
    assert not log_scale([]) and not log_scale([2.0, 0.0]) and not log_scale([1.0, -0.5])
    assert scaler(True)(100.0) == 2.0 and scaler(False)(-0.5) == -0.5


def test_loss_ticks_sit_on_the_log_scale_and_read_as_losses():
    ticks, labels = loss_ticks([0.1, 10.0, 1.0])
    assert ticks == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert labels == ["0.1", "0.3162", "1", "3.162", "10"]
    assert loss_ticks([2.0, 2.0]) == ([math.log10(2.0)], ["2"])  # one loss: one tick


def test_step_ticks_are_whole_steps_from_first_to_last():
    assert step_ticks([1, 50, 100]) == [1, 26, 50, 75, 100]
    assert step_ticks([3, 5]) == [3, 4, 5]  # fewer steps than ticks: no tick twice
    assert step_ticks([7]) == [7]
