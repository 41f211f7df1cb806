"""devd's messages, pure: no sockets, no threads, no clock.

* :func:`parse_devd_line`: devd's own variable parsing, so a line means here what a devd.conf
  ``match`` would see;
* :func:`parse_rctl_event`: the kernel's RCTL ``devctl`` line, including the 127-byte cut of its
  data, from the record's bytes (a field that is not UTF-8 makes the event malformed);
* :func:`format_rctl_event`: the exact kernel bytes, for the simulator and the tests.

Wire facts (freebsd-integration.md section 2, checked against ``sbin/devd/devd.cc`` and
``sys/kern/kern_rctl.c``; docs/fidelity.md cites them).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from rctlpolicy.amounts import C_SPACE

#: devd reads /dev/devctl into a buffer of this size; a smaller recv() would cut records.
DEVCTL_MAXBUF = 8192
#: What devctl_notify("RCTL", "rule", "matched", data) puts before the data (and one space).
RCTL_HEADER = "!system=RCTL subsystem=rule type=matched"
#: The kernel builds the data in a 128-byte sbuf (RCTL_LOG_BUFSIZE), so at most 127 bytes survive.
RCTL_DATA_MAX = 127

# devd runs in the C locale: isspace() (C_SPACE) and the key characters of is_id_char() are
# ASCII only.
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_PID_RE = re.compile(r"[0-9]+")
# The kernel prints the real uid with %d, so a uid >= 2**31 arrives negative.
_RUID_RE = re.compile(r"-?[0-9]+")
_RCTL_PREFIX = RCTL_HEADER + " "
_RCTL_PREFIX_BYTES = _RCTL_PREFIX.encode()


# --------------------------------------------------------------------------------------------
# devd's line parsing


def _unescape(value: str) -> str:
    """devd's fix_value(): only the backslash of each \\" goes; \\\\ stays as two characters."""
    return value.replace('\\"', '"')


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in C_SPACE:
        i += 1
    return i


def _chop_pair(text: str) -> tuple[str, str, str] | None:
    """One ``key=value`` off the front of ``text`` as devd's chop_var() does, or None to stop.

    Returns (key, raw value, rest). Like devd, the key may be empty (``=x`` is a pair), a quoted
    value runs to the next ``"`` not preceded by a backslash, and a bare value to the next
    whitespace; an unterminated quote or a key not followed by ``=`` stops the pair list.
    """
    if not text:
        return None
    i = 0
    while i < len(text) and text[i] in _ID_CHARS:
        i += 1
    if i >= len(text) or text[i] != "=":
        return None
    key = text[:i]
    i += 1
    if i < len(text) and text[i] == '"':
        i += 1
        start = i
        while i < len(text) and text[i] != '"':
            if text[i] == "\\" and i + 1 < len(text) and text[i + 1] == '"':
                i += 1
            i += 1
        if i >= len(text):
            return None
        value = text[start:i]
        i += 1
    else:
        start = i
        while i < len(text) and text[i] not in C_SPACE:
            i += 1
        value = text[start:i]
    return key, value, text[_skip_space(text, i) :]


def _set_pairs(variables: dict[str, str], text: str) -> str:
    """Parse pairs into ``variables`` until one does not parse; return the unparsed rest."""
    while (pair := _chop_pair(text)) is not None:
        key, value, text = pair
        variables[key] = _unescape(value)
    return text


def parse_devd_line(line: str) -> dict[str, str]:
    """The variables devd(8) sets for one event line, as devd.conf ``match`` statements see them.

    Faithful to ``process_event()``/``chop_var()``: the first character is the type (``!`` notify,
    ``+`` attach, ``-`` detach, ``?`` nomatch); ``!`` is followed directly by a pair list;
    ``+``/``-`` set ``device-name`` (up to the first space), skip ``at ``, parse pairs, and take
    text after ``on `` as ``bus``; ``?`` is the same without a device name. Later duplicates win,
    parsing stops at the first malformed pair. The pseudo-variables ``*`` (whole line) and ``_``
    (line without its type character) are included; ``timestamp`` is not (it is devd's clock, and
    this function is pure). Trailing newlines are ignored and, as in C, a NUL ends the line.
    """
    text = line.rstrip("\n").split("\0", 1)[0]
    variables: dict[str, str] = {}
    if not text:
        return variables
    variables["*"] = _unescape(text)
    variables["_"] = _unescape(text[1:])
    kind = text[0]
    if kind == "!":
        # No whitespace skip before the first pair: "! system=X" yields no pairs in devd either.
        _set_pairs(variables, text[1:])
    elif kind in "+-?":
        space = text.find(" ", 1)
        if space < 0:
            return variables
        if kind != "?":
            variables["device-name"] = _unescape(text[1:space])
        rest = text[_skip_space(text, space + 1) :]
        if rest.startswith("at "):
            rest = rest[3:]
        rest = _set_pairs(variables, rest)
        rest = rest[_skip_space(rest, 0) :]
        if rest.startswith("on "):
            variables["bus"] = _unescape(rest[3:])
    return variables


# --------------------------------------------------------------------------------------------
# RCTL events


@dataclass(frozen=True, slots=True)
class RctlEvent:
    """One RCTL ``devctl`` firing: ``rule=<rule> pid=<pid> ruid=<ruid> jail=<jail>``.

    ``truncated`` means the kernel's 127-byte data limit was reached, so the last field present
    may be cut: ``jail`` is then the surviving prefix of the name (possibly empty), ``rule`` the
    surviving prefix of the rule, and a pid or ruid that may have lost digits is None (a wrong
    pid is worse than none). A field the line does not carry at all is None. ``raw`` is the
    line as received, without its trailing newline.
    """

    rule: str
    pid: int | None
    ruid: int | None
    jail: str | None
    truncated: bool
    raw: str


@dataclass(frozen=True, slots=True)
class MalformedEvent:
    """An RCTL line that cannot be read; counted and logged by the daemon, never acted on."""

    reason: str
    raw: str


def _utf8_size(text: str) -> int:
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8", "replace"))


def _reached_kernel_limit(data: str) -> bool:
    """Whether a decoded data part is as long as the kernel's sbuf allows (127 bytes).

    The cut can split a multibyte character of a jail name; decoded with errors="replace" its
    leftover 1 to 3 bytes become one U+FFFD (3 bytes), so 128 or 129 bytes ending in U+FFFD are
    a cut too.
    """
    size = _utf8_size(data)
    return size == RCTL_DATA_MAX or (data.endswith("\ufffd") and size in (128, 129))


def _drop_partial_key(text: str, next_key: str) -> tuple[str, bool]:
    """Strip a cut-off ``next_key`` (e.g. ``" rui"`` of ``" ruid="``) from the end of ``text``.

    Returns (text, stripped). Only used on truncated data, where the values before ``jail=`` hold
    no spaces, so a space means the cut landed in the following key.
    """
    head, space, tail = text.partition(" ")
    if space and next_key.startswith(" " + tail) and len(tail) + 1 < len(next_key):
        return head, True
    return text, False


def parse_rctl_event(line: str | bytes) -> RctlEvent | MalformedEvent | None:
    """Read one devd line: None if it is not an RCTL event, else the event or why it is unreadable.

    A line is an RCTL event when it is a ``!`` line that devd would match as ``system=RCTL
    subsystem=rule type=matched`` (or that starts with the kernel's header verbatim, so a jail
    name containing ``type=...`` cannot hide an event). The data is read with anchored keys from
    the end: the last `` jail=`` (everything after it is the jail name), then the last `` ruid=``
    and `` pid=`` before it; what precedes is the rule. Pass ``bytes`` when you have them: the
    127-byte cut is then measured exactly instead of through the decoded text.

    An RCTL line that is not UTF-8 is malformed (never a name with U+FFFD in it), except for
    the incomplete last character of a line the kernel cut at its limit, which is dropped. A
    ``str`` holding surrogate escapes (``os.fsdecode`` of such bytes) is judged the same way.
    """
    truncated_bytes: bool | None = None
    if isinstance(line, bytes):
        raw_bytes = line.rstrip(b"\n")
        if raw_bytes.startswith(_RCTL_PREFIX_BYTES):
            truncated_bytes = len(raw_bytes) - len(_RCTL_PREFIX_BYTES) == RCTL_DATA_MAX
        decoded = _decode(raw_bytes, cut_allowed=bool(truncated_bytes))
        if decoded is None:
            text = raw_bytes.decode("utf-8", "surrogateescape")
            if not _is_rctl(text):
                return None  # another subsystem's line: not ours to judge
            return MalformedEvent("not UTF-8 text", raw_bytes.decode("utf-8", "backslashreplace"))
        raw = decoded
    else:
        raw = line.rstrip("\n")
        if _has_surrogates(raw):  # bytes that were not UTF-8, kept by surrogateescape
            if not _is_rctl(raw):
                return None
            return MalformedEvent(
                "not UTF-8 text",
                raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
            )
    if not raw.startswith("!"):
        return None
    if not raw.startswith(_RCTL_PREFIX) and raw != RCTL_HEADER:
        if not _is_rctl(raw):
            return None
        return MalformedEvent("RCTL header not in the kernel's form", raw)
    data = raw[len(_RCTL_PREFIX) :]
    if not data.startswith("rule="):
        return MalformedEvent("no rule= field", raw)
    truncated = truncated_bytes if truncated_bytes is not None else _reached_kernel_limit(data)
    body = data[len("rule=") :]

    jail: str | None = None
    pid_text: str | None = None
    ruid_text: str | None = None
    at = body.rfind(" jail=")
    if at >= 0:
        body, jail = body[:at], body[at + len(" jail=") :]
    at = body.rfind(" ruid=")
    if at >= 0:
        body, ruid_text = body[:at], body[at + len(" ruid=") :]
    at = body.rfind(" pid=")
    if at >= 0:
        body, pid_text = body[:at], body[at + len(" pid=") :]
    rule = body

    # Which field ends the data, and so may have been cut by the kernel.
    if jail is not None:
        last = "jail"
    elif ruid_text is not None:
        last = "ruid"
    elif pid_text is not None:
        last = "pid"
    else:
        last = "rule"
    cut_field: str | None = None
    if truncated:
        cut_field = last
        if last == "rule":
            rule, stripped = _drop_partial_key(rule, " pid=")
        elif last == "pid":
            assert pid_text is not None
            pid_text, stripped = _drop_partial_key(pid_text, " ruid=")
        elif last == "ruid":
            assert ruid_text is not None
            ruid_text, stripped = _drop_partial_key(ruid_text, " jail=")
        else:
            stripped = False
        if stripped:
            cut_field = None  # the cut landed in the next key: this value is whole
        if cut_field == "jail" and jail is not None:
            jail = jail.removesuffix("\ufffd")
        elif cut_field == "rule":
            rule = rule.removesuffix("\ufffd")

    if not rule:
        return MalformedEvent("empty rule", raw)
    if " " in rule:
        return MalformedEvent(f"rule text contains a space: {rule!r}", raw)
    pid = _number(pid_text, _PID_RE, may_be_cut=cut_field == "pid")
    if isinstance(pid, str):
        return MalformedEvent(f"pid is not a number: {pid!r}", raw)
    ruid = _number(ruid_text, _RUID_RE, may_be_cut=cut_field == "ruid")
    if isinstance(ruid, str):
        return MalformedEvent(f"ruid is not a number: {ruid!r}", raw)
    if ruid is not None:
        if not -(1 << 31) <= ruid < 1 << 32:
            return MalformedEvent(f"ruid out of range: {ruid}", raw)
        if ruid < 0:
            ruid += 1 << 32  # undo the kernel's %d of a uid_t
    return RctlEvent(rule=rule, pid=pid, ruid=ruid, jail=jail, truncated=truncated, raw=raw)


def _is_rctl(text: str) -> bool:
    """Whether devd would match the line as ``system=RCTL subsystem=rule type=matched``."""
    if text.startswith(_RCTL_PREFIX) or text == RCTL_HEADER:
        return True
    if not text.startswith("!"):
        return False
    variables = parse_devd_line(text)
    found = (variables.get("system"), variables.get("subsystem"), variables.get("type"))
    return found == ("RCTL", "rule", "matched")


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in text)


def _decode(data: bytes, *, cut_allowed: bool) -> str | None:
    """The record as text; None when it is not UTF-8.

    One exception: a record the kernel cut at its 127-byte limit (``cut_allowed``) may end in
    the first 1 to 3 bytes of a character (a jail name's, or the rule's); that incomplete
    character is dropped, as the surviving prefix is all there is.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if not cut_allowed:
            return None
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        return str(decoder.decode(data, final=False))  # holds back an incomplete last char
    except UnicodeDecodeError:
        return None


def _number(text: str | None, pattern: re.Pattern[str], *, may_be_cut: bool) -> int | str | None:
    """The field's integer; None if absent or possibly cut; the offending text if not a number."""
    if text is None or (may_be_cut and text in ("", "-")):
        return None
    if pattern.fullmatch(text) is None:
        return text
    return None if may_be_cut else int(text)


def format_rctl_event(rule: str, pid: int, ruid: int, jail: str) -> bytes:
    """The exact bytes devd forwards for an RCTL firing, with the 127-byte data cut and ``\\n``.

    ``rule`` is the canonical rule text (``rctl_rule_to_sbuf``). The ruid is printed as the
    kernel does, with ``%d``, so uids of 2**31 and above come out negative.
    """
    if pid < 0:
        raise ValueError(f"pid must not be negative: {pid}")
    if not 0 <= ruid < 1 << 32:
        raise ValueError(f"ruid must be a 32-bit unsigned uid: {ruid}")
    signed_ruid = ruid - (1 << 32) if ruid >= 1 << 31 else ruid
    data = f"rule={rule} pid={pid} ruid={signed_ruid} jail={jail}".encode()
    return _RCTL_PREFIX.encode() + data[:RCTL_DATA_MAX] + b"\n"
