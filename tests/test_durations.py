"""Durations: every accepted form parses to exact nanoseconds; every other form is refused by name."""

import pytest

from jsb_infra.core.durations import format_duration, parse_duration
from jsb_infra.core.spec import ConfigError, parse_pairs

S = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("500ms", 500_000_000),
        ("30s", 30 * S),
        ("1m30s", 90 * S),
        ("2h", 7200 * S),
        ("7d", 7 * 86400 * S),
        ("1h2m3s4ms", 3723 * S + 4_000_000),
        ("0.5s", S // 2),
        ("250us", 250_000),
        ("10ns", 10),
        ("30", 30 * S),
        ("1.5", 3 * S // 2),
        (30, 30 * S),
        (1.5, 3 * S // 2),
        (0.1, 100_000_000),
        (0, 0),
        (" 2s ", 2 * S),
    ],
)
def test_accepted_forms(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize(
    "bad",
    ["", "s", "1x", "1m30", "1 s", "1.s", "ten seconds", "1e3", "1_000", "NaN", "inf", "Infinity", "30S"],
)
def test_malformed_strings_are_refused_with_the_accepted_forms(bad):
    with pytest.raises(
        ValueError, match=r"is not a duration; write e\.g\. 500ms, 30s, 1m30s, 2h, 7d or seconds"
    ):
        parse_duration(bad)


@pytest.mark.parametrize("bad", ["-1s", "-5", -1, -0.5])
def test_negative_durations_are_refused(bad):
    with pytest.raises(ValueError, match="is negative; durations must not be negative"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [True, None, [1], {"s": 1}])
def test_non_durations_are_refused(bad):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_numbers_are_refused(bad):
    with pytest.raises(ValueError, match="is not a finite number of seconds"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("ns", "text"),
    [(0, "0s"), (90 * S, "1m30s"), (1_500_000_000, "1s500ms"), (7 * 86400 * S, "7d"), (2 * 3600 * S, "2h")],
)
def test_format_is_the_shortest_exact_form_and_round_trips(ns, text):
    assert format_duration(ns) == text
    assert parse_duration(format_duration(ns)) == ns


@pytest.mark.parametrize("bad", ["1x", "inf", "-2s", True])
def test_a_bad_duration_in_a_config_names_the_field(bad):
    with pytest.raises(ConfigError) as err:
        parse_pairs([{"stream": "s", "apps": ["a", "b"], "consumer": {"backoff": ["1s", bad]}}])
    [problem] = err.value.problems
    assert problem.startswith("pairs[0].consumer.backoff[1]: ")
    assert repr(bad) in problem or str(bad) in problem
