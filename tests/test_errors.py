"""Errors are one line, whatever names the input brings."""

from __future__ import annotations

from mfray.errors import DataError, printable


def test_names_from_the_input_cannot_break_the_line() -> None:
    err = DataError("unknown key", file="a\tb.jsonl", record="line 1", field="\n")
    assert str(err) == "a\\tb.jsonl: record line 1: field '\\n': unknown key"
    assert "\n" not in str(err) and err.field == "\n"  # the attribute keeps the real name
    assert printable("émoji ✓ ok") == "émoji ✓ ok"  # printable text is left alone
