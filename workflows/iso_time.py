"""One parser for the times people paste: `--pitr`, `latest-before:` and the restore input.

Pure and deterministic, so the CLI, activities and workflow models can all use it.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

EXAMPLE = "2026-11-25T14:00:00Z or 2026-11-25 14:00:00.123+00"

# `date -u` style and RFC 3339's lowercase z; Python's parser knows neither.
_UTC_SUFFIX = re.compile(r"\s*(z|utc|gmt)$", re.IGNORECASE)
# ISO 8601 ordinal dates (2026-329): Python's parser does not know them either.
_ORDINAL_DATE = re.compile(r"^(\d{4})-?(\d{3})(?=$|[T ])")
# ISO 8601's end of day, 24:00, is the next day's midnight.
_END_OF_DAY = re.compile(r"^(\S+?)[T ]24(:?00(:?00([.,]0+)?)?)?(?=$|[+-])")


class TimeFormatError(ValueError):
    """A time the parser cannot read; the message shows what it accepts."""


def parse_iso_time(text: str) -> datetime:
    """An ISO 8601 / RFC 3339 time (or PostgreSQL's `2026-11-25 14:00:00.123+00`) in UTC.

    Accepts `T` or a space, fractional seconds (any digits, `.` or `,`), `Z`, `UTC`, offsets as
    `+00`, `+0000` or `+00:00`, basic format (`20261125T140000Z`), week and ordinal dates, a date
    alone (midnight) and `24:00`. A time without an offset is taken as UTC.
    """
    cleaned = _UTC_SUFFIX.sub("+00:00", text.strip())
    cleaned = re.sub(r"(?<=\d)t(?=\d)", "T", cleaned)
    ordinal = _ORDINAL_DATE.match(cleaned)
    if ordinal:
        day = date(int(ordinal[1]), 1, 1) + timedelta(days=int(ordinal[2]) - 1)
        if not 1 <= int(ordinal[2]) or day.year != int(ordinal[1]):
            raise TimeFormatError(f"{text!r}: day {ordinal[2]} is not in {ordinal[1]}")
        cleaned = day.isoformat() + cleaned[ordinal.end():]
    next_day = False
    end_of_day = _END_OF_DAY.match(cleaned)
    if end_of_day:
        cleaned = f"{end_of_day[1]}T00:00:00{cleaned[end_of_day.end():]}"
        next_day = True
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise TimeFormatError(f"{text!r} is not an ISO 8601 time (e.g. {EXAMPLE})") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc) + (timedelta(days=1) if next_day else timedelta())
