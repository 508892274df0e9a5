"""Strict YAML: what YAML 1.1 tools would read differently is refused with what to write; duplicate keys
and non-UTF-8 files are config problems (exit 2, no traceback, nothing written)."""

from __future__ import annotations

import pytest

from jsb_infra.cli import main
from jsb_infra.core import strict_yaml


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("on", "YAML 1.1 reads on as a boolean, YAML 1.2 as text; write true or false, or quote it ('on')"),
        ("yes", "YAML 1.1 reads yes as a boolean"),
        ("N", "YAML 1.1 reads N as a boolean"),
        ("010", "010 is not a plain decimal number (YAML 1.1 reads it as 8); write the number in decimal"),
        ("0x1F", "0x1F is not a plain decimal number (YAML 1.1 reads it as 31)"),
        ("1_000", "1_000 is not a plain decimal number (YAML 1.1 reads it as 1000)"),
        (
            "1:30",
            "1:30 is a base-60 number in YAML 1.1 (YAML 1.1 reads it as 90); write a duration such as 1m30s",
        ),
        ("\u0665", "\u0665 is written with non-ASCII digits; write 5 for the number"),
        ("1e3", "YAML 1.1 reads 1e3 as text and YAML 1.2 as the number 1000.0"),
        ("2026-01-01", "YAML 1.1 reads 2026-01-01 as a date; quote it ('2026-01-01') for text"),
    ],
)
def test_ambiguous_plain_scalars_are_refused_with_what_to_write(tmp_path, capsys, value, says):
    config = tmp_path / "c.yaml"
    config.write_text(f"pairs:\n  - stream: s\n    apps: [a, b]\n    consumer: {{max_deliver: {value}}}\n")
    out = tmp_path / "out"
    assert main(["render", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"pairs[0].consumer.max_deliver: {says}" in err, err
    assert f"({config}:4:29)" in err, "the position follows the field"
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(("quoted", "value"), [("'on'", "on"), ('"010"', "010"), ("'1:30'", "1:30")])
def test_quoting_makes_the_text_reading_explicit(quoted, value):
    assert strict_yaml.loads(f"a: {quoted}") == {"a": value}


def test_yaml_1_2_core_values():
    text = "a: 5\nb: -3\nc: 1.5\nd: true\ne: False\nf: ~\ng: null\nh: 0\ni: text\nj: 0o17\n"
    assert strict_yaml.loads(text) == {
        "a": 5,
        "b": -3,
        "c": 1.5,
        "d": True,
        "e": False,
        "f": None,
        "g": None,
        "h": 0,
        "i": "text",
        "j": "0o17",
    }


def test_a_number_written_as_text_is_refused_by_the_spec(tmp_path, capsys):
    """`0o17` stays text under YAML 1.2 decimal rules; a number field then refuses text."""
    config = tmp_path / "c.yaml"
    config.write_text("pairs:\n  - {stream: s, apps: [a, b], consumer: {max_ack_pending: 0o17}}\n")
    assert main(["render", str(config), "--out", str(tmp_path / "out")]) == 2
    assert (
        "pairs[0].consumer.max_ack_pending: must be a whole number written in decimal, got '0o17'"
        in capsys.readouterr().err
    )


def test_duplicate_keys_are_refused_with_both_locations(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("pairs:\n  - stream: s\n    apps: [a, b]\n    stream: t\n")
    out = tmp_path / "out"
    assert main(["render", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    said = "pairs[0].stream: duplicate key 'stream' (first at line 2); each key may appear once"
    assert f"{said} ({config}:4:5)" in err
    assert not out.exists()


def test_a_non_utf8_file_is_a_config_problem(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"pairs:\n  - stream: caf\xe9\n    apps: [a, b]\n")
    out = tmp_path / "out"
    assert main(["render", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"invalid config: {config}:2: not UTF-8 (byte 0xe9 at offset 22); save the file as UTF-8\n"
    assert "Traceback" not in err
    assert not out.exists()


def test_a_utf8_byte_order_mark_is_accepted():
    assert strict_yaml.loads(strict_yaml.decode(b"\xef\xbb\xbfa: 1\n", "f")) == {"a": 1}
