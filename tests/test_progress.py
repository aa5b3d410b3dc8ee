"""Progress: a bar in a terminal, one line per loop in logs and CI, nothing under TQDM_DISABLE."""

from __future__ import annotations

import io

import pytest

from clipflux.progress import progress, progress_mode


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mode_follows_the_environment(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert progress_mode(io.StringIO()) == "line"
    assert progress_mode(_Terminal()) == "bar"
    monkeypatch.setenv("CI", "true")
    assert progress_mode(_Terminal()) == "line"
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_mode(_Terminal()) == "off"
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert progress_mode(_Terminal()) == "line"


def test_a_log_gets_one_line_per_loop_without_carriage_returns():
    log = io.StringIO()
    for task in range(2):
        bar = progress(range(64), desc=f"task {task + 1}/2", unit="step", mode="line", stream=log)
        for step in bar:
            bar.set_postfix(loss=f"{1.0 / (step + 1):.3f}", refresh=False)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2
    assert lines[0].startswith("task 1/2: 64/64 steps in ") and lines[0].endswith("loss=0.016")
    assert lines[1].startswith("task 2/2: ")


def test_resumed_and_interrupted_loops_say_so():
    log = io.StringIO()
    for _ in progress(range(10, 20), desc="task 3/4", total=20, initial=10, unit="step", mode="line", stream=log):
        pass
    assert "20/20 steps" in log.getvalue() and "resumed at 10" in log.getvalue()
    log = io.StringIO()
    with pytest.raises(RuntimeError):
        for step in progress(range(5), desc="task 1/1", unit="step", mode="line", stream=log):
            if step == 2:
                raise RuntimeError("interrupted")
    assert "2/5 steps" in log.getvalue() and "stopped early" in log.getvalue()


def test_off_is_silent_and_bar_draws_a_bar():
    log = io.StringIO()
    assert list(progress(range(3), desc="quiet", mode="off", stream=log)) == [0, 1, 2]
    assert log.getvalue() == ""
    terminal = _Terminal()
    bar = progress(range(3), desc="live", unit="step", mode="bar", stream=terminal)
    assert list(bar) == [0, 1, 2]
    bar.close()
    assert "live" in terminal.getvalue() and "3/3" in terminal.getvalue()
