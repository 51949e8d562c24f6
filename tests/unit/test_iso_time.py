"""The times people paste into `--pitr`, `latest-before:` and the UI's restore form."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from workflows.iso_time import TimeFormatError, parse_iso_time
from workflows.models import RestoreInput

AT_14 = datetime(2026, 11, 25, 14, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, expected", [
    ("2026-11-25T14:00:00Z", AT_14),
    ("2026-11-25T14:00:00z", AT_14),
    ("2026-11-25t14:00:00Z", AT_14),
    ("  2026-11-25T14:00:00Z\n", AT_14),
    ("2026-11-25 14:00:00", AT_14),  # no offset: UTC
    ("2026-11-25T14:00", AT_14),
    ("2026-11-25T14:00:00+00", AT_14),
    ("2026-11-25T14:00:00+0000", AT_14),
    ("2026-11-25T14:00:00+00:00", AT_14),
    ("2026-11-25T14:00:00-00:00", AT_14),
    ("2026-11-25 14:00:00 UTC", AT_14),
    ("2026-11-25T15:00:00+01:00", AT_14),
    ("2026-11-25T19:30:00+05:30", AT_14),
    ("2026-11-25T07:00:00-07", AT_14),
    ("20261125T140000Z", AT_14),  # basic format
    ("2026-W48-3T14:00:00Z", AT_14),  # week date: Wednesday of week 48
    ("2026-329T14:00:00Z", AT_14),  # ordinal date
    ("2026329T14:00Z", AT_14),
    ("2026-11-25T14Z", AT_14),
    ("2026-11-25T14:00:00.123Z", AT_14.replace(microsecond=123000)),
    ("2026-11-25 14:00:00.123+00", AT_14.replace(microsecond=123000)),  # psql's timestamptz
    ("2026-11-25 14:00:00.123456+00", AT_14.replace(microsecond=123456)),
    ("2026-11-25T14:00:00,5Z", AT_14.replace(microsecond=500000)),  # ISO's decimal comma
    ("2026-11-25T14:00:00.123456789Z", AT_14.replace(microsecond=123456)),  # nanoseconds truncated
    ("2026-11-25", AT_14.replace(hour=0)),  # a date alone: its midnight
    ("2026-11-24T24:00:00Z", AT_14.replace(hour=0)),  # end of day = next midnight
    ("2026-11-24T24:00", AT_14.replace(hour=0)),
])
def test_accepted_forms_are_the_same_instant_in_utc(text, expected):
    parsed = parse_iso_time(text)
    assert parsed == expected
    assert parsed.utcoffset().total_seconds() == 0 and parsed.tzinfo is timezone.utc


@pytest.mark.parametrize("text", [
    "", "yesterday", "now", "14:00", "2026-11-25T25:00:00Z", "2026-11-24T24:30:00Z", "2026-02-30T00:00:00Z",
    "2026-000T00:00Z", "2026-367T00:00Z", "25/11/2026 14:00", "2026-11-25T14:00:00+25:00", "1764079200",
])
def test_anything_else_is_one_clear_error(text):
    with pytest.raises(TimeFormatError) as error:
        parse_iso_time(text)
    message = str(error.value)
    assert repr(text) in message and "\n" not in message
    if "day" not in message:
        assert "ISO 8601" in message and "2026-11-25 14:00:00.123+00" in message  # shows what works


def test_the_ui_restore_form_reads_the_same_forms():
    restore = RestoreInput.model_validate({"service": "web", "source": "pitr",
                                           "target_time": "2026-11-25 15:00:00.5+01"})
    assert restore.target_time == AT_14.replace(microsecond=500000)
    assert RestoreInput(service="web", source="pitr", target_time=AT_14).target_time == AT_14
