"""Errors that mfray reports to its user: a clear message and a non-zero exit, never a traceback."""

from __future__ import annotations


class MfrayError(Exception):
    """Base class of every error the CLI turns into one message and exit code 2."""


class DataError(MfrayError):
    """Malformed input data. Names the file, the record and the field at fault."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        record: str | None = None,
        field: str | None = None,
    ) -> None:
        self.file, self.record, self.field, self.detail = file, record, field, message
        where = []
        if file is not None:
            where.append(printable(file))
        if record is not None:
            where.append(f"record {printable(record)}")
        if field is not None:
            where.append(f"field '{printable(field)}'")
        super().__init__(": ".join(where + [message]) if where else message)


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``), so that a name taken from the
    input (a JSON key, a file name) cannot break the one-line error message."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class ConfigError(MfrayError):
    """A configuration value that is unknown, of the wrong type or contradicts another."""


class StoreError(MfrayError):
    """A run directory that cannot be written or read back as complete rounds."""
