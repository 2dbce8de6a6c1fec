"""The pure decisions of batch mode: file splitting, when a batch goes out, polling, the tail."""

from __future__ import annotations

import pytest

from engine.batch.planner import (
    API_MAX_LINES,
    FileLimits,
    OversizeLine,
    SubmitPolicy,
    expected_waves,
    poll_delay,
    split_files,
    tail_active,
)


def test_files_keep_order_and_respect_the_line_limit() -> None:
    """Items are cut in order into files of at most max_lines."""
    files = split_files(list(range(7)), [10] * 7, FileLimits(max_lines=3))
    assert files == [[0, 1, 2], [3, 4, 5], [6]]


def test_files_respect_the_byte_limit_counting_newlines() -> None:
    """A file never passes max_bytes, newline included; an exact fit stays in one file."""
    assert split_files(["a", "b", "c"], [9, 9, 9], FileLimits(max_bytes=20)) == [["a", "b"], ["c"]]
    assert split_files(["a", "b", "c"], [9, 9, 9], FileLimits(max_bytes=19)) == [
        ["a"],
        ["b"],
        ["c"],
    ]


def test_a_line_larger_than_a_file_is_refused() -> None:
    """A single line over max_bytes cannot go into any file: OversizeLine names the sizes."""
    with pytest.raises(OversizeLine, match="100 bytes"):
        split_files(["x"], [100], FileLimits(max_bytes=50))


def test_limits_cannot_exceed_the_api() -> None:
    """FileLimits refuses sizes above OpenAI's 50,000 lines / 200 MB, or below one."""
    with pytest.raises(ValueError, match="max_lines"):
        FileLimits(max_lines=API_MAX_LINES + 1)
    with pytest.raises(ValueError, match="max_bytes"):
        FileLimits(max_bytes=0)


def test_nothing_to_split_gives_no_files() -> None:
    assert split_files([], [], FileLimits()) == []


def test_a_full_file_goes_at_once_and_a_partial_one_after_a_quiet_spell() -> None:
    """Submit when full, after quiet_s without a new line, or when the oldest waited linger_s."""
    policy = SubmitPolicy(batch_lines=100, linger_s=30.0, quiet_s=0.5)
    assert policy.due(100, oldest_at=0.0, newest_at=0.0, now=0.0)
    assert not policy.due(5, oldest_at=0.0, newest_at=0.4, now=0.5)
    assert policy.due(5, oldest_at=0.0, newest_at=0.4, now=0.9)
    # A steady trickle (a line every 0.1 s) still goes out after linger_s.
    assert policy.due(50, oldest_at=0.0, newest_at=29.9, now=30.0)
    assert not policy.due(0, oldest_at=0.0, newest_at=0.0, now=99.0)
    assert policy.wake_at(oldest_at=0.0, newest_at=10.0) == 10.5
    assert policy.wake_at(oldest_at=0.0, newest_at=29.8) == 30.0


def test_polling_slows_as_a_batch_ages() -> None:
    """A tenth of the batch's age, clamped to [min_s, max_s]."""
    assert poll_delay(1.0, min_s=2.0, max_s=60.0) == 2.0
    assert poll_delay(300.0, min_s=2.0, max_s=60.0) == 30.0
    assert poll_delay(7200.0, min_s=2.0, max_s=60.0) == 60.0


def test_the_tail_goes_online_below_the_threshold_only() -> None:
    """finish_online_below = 0 never switches; N switches once fewer than N remain."""
    assert not tail_active(3, 0)
    assert not tail_active(10, 10)
    assert tail_active(9, 10)


def test_expected_waves_follow_the_longest_conversation() -> None:
    """One round per step of the longest conversation, stretched by retries."""
    assert expected_waves([2, 12, 6]) == 12
    assert expected_waves([4], attempts_per_step=1.1) == 5
    assert expected_waves([]) == 0
