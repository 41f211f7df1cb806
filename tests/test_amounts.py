"""Numbers as FreeBSD reads and prints them (spec 5.1, 5.2, 2.2 and 7.3)."""

from __future__ import annotations

import pytest

from rctlpolicy.amounts import (
    INT64_MIN,
    INT_MIN,
    UINT64_MAX,
    AmountError,
    AmountProblem,
    ExpandedNumber,
    as_c_int,
    as_int64,
    expand_number,
    humanize_number,
    kernel_strtoul,
    parse_duration,
    strtod_id,
)

# --- expand_number(3), current generation (spec 5.2 G4) -----------------------------------

EXPANDS = [
    # Stable across every generation.
    ("10", 10, 10, "", ""),
    ("10k", 10 << 10, 10, "k", ""),
    ("10K", 10 << 10, 10, "K", ""),
    ("10m", 10 << 20, 10, "m", ""),
    ("1g", 1 << 30, 10, "g", ""),
    ("2t", 2 << 40, 10, "t", ""),
    ("1p", 1 << 50, 10, "p", ""),
    ("1e", 1 << 60, 10, "e", ""),
    ("10b", 10, 10, "", ""),
    ("10B", 10, 10, "", ""),
    ("10kb", 10 << 10, 10, "k", ""),
    ("1KB", 1 << 10, 10, "K", ""),
    ("0x10", 16, 16, "", ""),
    ("010", 8, 8, "", ""),
    ("+10", 10, 10, "", "+"),
    (" 10", 10, 10, "", ""),
    ("\t\n10", 10, 10, "", ""),
    # D4: strtoumax reads hex digits greedily, so the "e" is a digit, not the exa suffix.
    ("0x1e", 30, 16, "", ""),
    ("0X1E", 30, 16, "", ""),
    ("0x1g", 1 << 30, 16, "g", ""),
    ("-0", 0, 10, "", "-"),
    ("0", 0, 10, "", ""),
    ("00", 0, 8, "", ""),
    ("0kb", 0, 10, "k", ""),
    # The largest amount that survives the kernel, and the first that does not (ERANGE there).
    ("7e", 7 << 60, 10, "e", ""),
    ("8e", 8 << 60, 10, "e", ""),
    ("15e", 15 << 60, 10, "e", ""),
    ("18446744073709551615", UINT64_MAX, 10, "", ""),
    ("0xffffffffffffffff", UINT64_MAX, 16, "", ""),
]


@pytest.mark.parametrize(("text", "value", "base", "suffix", "sign"), EXPANDS)
def test_expand_number(text: str, value: int, base: int, suffix: str, sign: str) -> None:
    assert expand_number(text) == ExpandedNumber(value, base, suffix, sign)


REFUSED = [
    ("1.5g", AmountProblem.SYNTAX, 1),
    ("08", AmountProblem.SYNTAX, 1),  # a leading 0 is octal
    ("09", AmountProblem.SYNTAX, 1),
    ("1x", AmountProblem.SYNTAX, 1),
    ("k", AmountProblem.SYNTAX, 0),
    ("", AmountProblem.SYNTAX, 0),
    ("+", AmountProblem.SYNTAX, 1),
    ("++1", AmountProblem.SYNTAX, 1),
    ("10 ", AmountProblem.SYNTAX, 2),  # trailing blank
    ("1kfoo", AmountProblem.SYNTAX, 2),  # G2 ignored the rest; G3 and G4 refuse it
    ("10bb", AmountProblem.SYNTAX, 3),
    ("1kbb", AmountProblem.SYNTAX, 3),
    ("0x", AmountProblem.SYNTAX, 1),  # strtoumax reads "0", then "x" is left over
    ("1e1", AmountProblem.SYNTAX, 2),
    ("50%", AmountProblem.SYNTAX, 2),
    ("\u0661", AmountProblem.SYNTAX, 0),  # a non-ASCII digit
    ("-1", AmountProblem.NEGATIVE, 0),
    ("-0x1", AmountProblem.NEGATIVE, 0),
    ("16e", AmountProblem.OVERFLOW, 0),
    ("18446744073709551616", AmountProblem.OVERFLOW, 0),
]


@pytest.mark.parametrize(("text", "problem", "offset"), REFUSED)
def test_expand_number_refuses(text: str, problem: AmountProblem, offset: int) -> None:
    with pytest.raises(AmountError) as caught:
        expand_number(text)
    assert caught.value.problem is problem
    assert caught.value.offset == offset
    assert isinstance(caught.value, ValueError)


# --- the kernel's strtoul / str2int64 (spec 5.1) --------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("10", 10),
        ("010", 10),  # base 10 in the kernel: no octal
        (" 10", 10),
        ("\n\t\v\f\r 5", 5),
        ("+10", 10),
        ("-0", 0),
        ("-5", UINT64_MAX - 4),
        ("-18446744073709551615", 1),  # wraps: accepted as 1
        ("99999999999999999999", UINT64_MAX),  # overflow reads as ULONG_MAX
        ("10 ", None),  # trailing blanks are refused
        ("0x10", None),
        ("1k", None),
        ("", None),
        ("+", None),
        ("\u0661", None),
    ],
)
def test_kernel_strtoul(text: str, value: int | None) -> None:
    assert kernel_strtoul(text) == value


@pytest.mark.parametrize(
    ("unsigned", "signed"),
    [(0, 0), (2**63 - 1, 2**63 - 1), (2**63, -(2**63)), (UINT64_MAX, -1)],
)
def test_as_int64(unsigned: int, signed: int) -> None:
    assert as_int64(unsigned) == signed


# --- rctl(8)'s uids: strtod(3) into an id_t, then a cast to int (spec 2.2) ---------------


@pytest.mark.parametrize(
    ("text", "id_t"),
    [
        ("80", 80),
        ("80.7", 80),
        ("80.", 80),
        ("1e3", 1000),
        ("0x50", 80),
        ("0x.8p1", 1),
        ("0", 0),
        ("2147483647", 2147483647),
        # An id_t holds 64 bits; beyond them amd64's conversion gives INT64_MIN.
        ("2147483648", 2147483648),
        ("4294967295", 4294967295),
        ("4294967296", 4294967296),
        ("1e10", 10_000_000_000),
        ("9223372036854775807", INT64_MIN),  # rounds up to 2^63 as a double
        ("1e19", INT64_MIN),
        ("1e100", INT64_MIN),
        ("-1", -1),
        ("-80.9", -80),
        ("-1e100", INT64_MIN),
        ("80x", None),
        ("1e", None),
        ("0x", None),
        ("80 ", None),
    ],
)
def test_strtod_id(text: str, id_t: int | None) -> None:
    assert strtod_id(text) == id_t


@pytest.mark.parametrize(
    ("value", "as_int"),
    [
        (80, 80),
        (2147483647, 2147483647),
        (2147483648, INT_MIN),
        (4294967295, -1),
        (4294967296, 0),
        (10_000_000_000, 1410065408),
        (INT64_MIN, 0),
        (-1, -1),
    ],
)
def test_as_c_int_keeps_the_low_32_bits(value: int, as_int: int) -> None:
    assert as_c_int(value) == as_int


# --- humanize_number(3) as rctl -h calls it (spec 7.3) --------------------------------------


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0, "0"),
        (3600, "3600"),
        (9999, "9999"),
        (10000, "9.8K"),
        (10500, "10K"),
        (12000, "12K"),
        (20000, "20K"),
        (1234567, "1206K"),
        (1048576, "1024K"),
        (10239576, "9.8M"),  # the 9999-with-remainder clause
        (104857600, "100M"),
        (1073741824, "1024M"),
        (5368709120, "5120M"),
        (10737418240, "10G"),
        (9223372036854775807, "8192P"),
        (-5, "-5"),
    ],
)
def test_humanize_number(number: int, text: str) -> None:
    assert humanize_number(number) == text


# --- durations in YAML policies ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("45", 45.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        (10, 10.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(given: str | float, seconds: float) -> None:
    assert parse_duration(given) == seconds


@pytest.mark.parametrize("given", ["", "x", "h", "5y", "-1s", "1.h", True, -1, -0.5])
def test_parse_duration_refuses(given: str | float) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_duration(given)
