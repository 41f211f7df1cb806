"""Numbers as FreeBSD reads and prints them: expand_number(3), the kernel's strtoul/str2int64,
rctl(8)'s strtod uids and humanize_number(3). Pure functions, no I/O.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum

from rctlpolicy.records import NamedTuple

UINT64_MAX = 2**64 - 1
INT64_MAX = 2**63 - 1
INT_MIN = -(2**31)
INT_MAX = 2**31 - 1

#: isspace() in the C locale, as the kernel's and libc's strto*() skip it and devd splits its
#: lines (rctlpolicy.devd.message); its one home.
C_SPACE = " \t\n\v\f\r"
#: expand_number(3)'s unit suffixes (lower case; it accepts either) and their binary shifts.
SUFFIX_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


class AmountProblem(StrEnum):
    """Why expand_number(3) refused a string (EINVAL or ERANGE in libutil)."""

    SYNTAX = "syntax"
    NEGATIVE = "negative"
    OVERFLOW = "overflow"


class AmountError(ValueError):
    def __init__(self, problem: AmountProblem, offset: int = 0) -> None:
        super().__init__(problem.value)
        self.problem = problem
        #: Where in the string the problem starts (for the caret).
        self.offset = offset


class ExpandedNumber(NamedTuple):
    """A parsed expand_number(3) value, with how it was written (for lint's warnings)."""

    value: int
    base: int  # 8, 10 or 16: base 0 makes a leading 0 octal and 0x hex
    suffix: str  # the unit letter as written ("" when none)
    sign: str  # "+", "-" or ""


# Patterns off the common path stay strings: re compiles (and caches) them on first use, so
# `rctlpolicy lint` does not compile them at every start.
_STRTOUMAX_BASE0 = r"(0[xX](?=[0-9a-fA-F])[0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)"


_PLAIN_DECIMAL = re.compile(r"([1-9][0-9]{0,17}|0)([kmgtpeKMGTPE]?)[bB]?\Z")


def expand_number(text: str) -> ExpandedNumber:
    """libutil's expand_number(3) as current FreeBSD has it (expand_unsigned generation).

    Leading blanks and one sign are skipped, a digit must follow, the number is read by
    strtoumax(3) in base 0 (so `0x10` is 16 and `010` is 8), then an optional unit letter
    k/m/g/t/p/e (powers of 1024, any case), an optional single `b`/`B`, and the end.
    """
    plain = _PLAIN_DECIMAL.match(text)
    if plain is not None:
        # The common case (`512m`, `100`): at most 18 digits, so the shift cannot overflow
        # unless a unit makes it; checked below like the general path does.
        value = int(plain.group(1))
        suffix = plain.group(2)
        if suffix:
            value <<= SUFFIX_SHIFT[suffix.lower()]
            if value > UINT64_MAX:
                raise AmountError(AmountProblem.OVERFLOW, 0)
        return ExpandedNumber(value, 10, suffix, "")
    i = 0
    n = len(text)
    while i < n and text[i] in C_SPACE:
        i += 1
    sign = ""
    if i < n and text[i] in "+-":
        sign = text[i]
        i += 1
    if i >= n or not text[i].isdigit() or not text[i].isascii():
        raise AmountError(AmountProblem.SYNTAX, i)
    match = re.compile(_STRTOUMAX_BASE0).match(text, i)
    assert match is not None  # a digit is there
    digits = match.group(0)
    if digits[:2] in ("0x", "0X"):
        base, value = 16, int(digits[2:], 16)
    elif len(digits) > 1 and digits[0] == "0":
        base, value = 8, int(digits, 8)
    else:
        base, value = 10, int(digits)
    i = match.end()
    if value > UINT64_MAX:
        raise AmountError(AmountProblem.OVERFLOW, match.start())
    suffix = ""
    if i < n and text[i].lower() in SUFFIX_SHIFT:
        suffix = text[i]
        i += 1
    if i < n and text[i] in "bB":
        i += 1
    if i != n:
        raise AmountError(AmountProblem.SYNTAX, i)
    if sign == "-" and value != 0:
        raise AmountError(AmountProblem.NEGATIVE, 0)
    if suffix:
        value <<= SUFFIX_SHIFT[suffix.lower()]
        if value > UINT64_MAX:
            raise AmountError(AmountProblem.OVERFLOW, match.start())
    return ExpandedNumber(value, base, suffix, sign)


_KERNEL_DECIMAL = r"[ \t\n\v\f\r]*([+-]?)([0-9]+)\Z"


def kernel_strtoul(text: str) -> int | None:
    """The kernel's strtoul(s, &end, 10) accepted only when it consumes the whole string.

    Returns the unsigned 64-bit result (ULONG_MAX on overflow, negation modulo 2^64 for a
    leading '-'), or None when the string is not entirely a decimal number.
    """
    if text.isascii() and text.isdigit():  # the common case, without the regular expression
        value = int(text)
        return UINT64_MAX if value > UINT64_MAX else value
    match = re.match(_KERNEL_DECIMAL, text)
    if match is None:
        return None
    value = int(match.group(2))
    if value > UINT64_MAX:
        return UINT64_MAX
    if match.group(1) == "-":
        value = (-value) & UINT64_MAX
    return value


def as_int64(value: int) -> int:
    """Reinterpret an unsigned 64-bit value as int64_t."""
    return value - 2**64 if value > INT64_MAX else value


_STRTOD_DECIMAL = r"[+-]?[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?\Z"
_STRTOD_HEX = r"[+-]?0[xX](?:[0-9a-fA-F]+(?:\.[0-9a-fA-F]*)?|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?\Z"
INT64_MIN = -(2**63)


def strtod_id(text: str) -> int | None:
    """rctl(8)'s numeric id (rctl.c:parse_user, humanize_ids): strtod(3) over the whole
    string (an optional sign, then digits), stored in an id_t, a 64-bit signed integer.

    The double is truncated toward zero; a value int64 cannot hold (or NaN) becomes INT64_MIN,
    as amd64's conversion instruction (cvttsd2si) gives. None when strtod would leave
    characters over ("trailing characters after numerical id").
    """
    if re.match(_STRTOD_DECIMAL, text):
        number = float(text)
    elif re.match(_STRTOD_HEX, text):
        sign = -1.0 if text.startswith("-") else 1.0
        number = sign * float.fromhex(text.lstrip("+-"))
    else:
        return None
    if math.isnan(number) or not -(2.0**63) <= number < 2.0**63:
        return INT64_MIN
    return int(number)


def as_c_int(value: int) -> int:
    """C's `(int)value` of a 64-bit integer: its low 32 bits, as a signed int (what rctl(8)'s
    `%d` of `(int)id` prints, and what the kernel's uid_t holds, printed with %d)."""
    value &= 0xFFFFFFFF
    return value - 2**32 if value > INT_MAX else value


_HN_PREFIXES = ("", "K", "M", "G", "T", "P", "E")


def humanize_number(n: int) -> str:
    """humanize_number(buf, 6, n, "", HN_AUTOSCALE, HN_DECIMAL | HN_NOSPACE) as rctl -h uses it."""
    if n < 0:
        return str(n)
    quotient, remainder, scale = n, 0, 0
    while (quotient >= 10000 or (quotient == 9999 and remainder >= 512)) and scale < 6:
        remainder = quotient % 1024
        quotient //= 1024
        scale += 1
    if scale > 0 and (quotient < 9 or (quotient == 9 and remainder < 973)):
        tenths = (remainder * 10 + 512) // 1024
        return f"{quotient + tenths // 10}.{tenths % 10}{_HN_PREFIXES[scale]}"
    return f"{quotient + (remainder + 512) // 1024}{_HN_PREFIXES[scale]}"


_DURATION = r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)?\s*\Z"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str | int | float) -> float:
    """A policy duration: `30s`, `10m`, `1h`, `2d`, or a plain number of seconds."""
    if isinstance(text, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return float(text)
    match = re.match(_DURATION, text)
    if match is None:
        raise ValueError(f"invalid duration {text!r}: write e.g. 30s, 10m, 1h or 2d")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
