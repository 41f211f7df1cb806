"""The devd(8) socket client and the devctl message parser.

Two halves:

* pure parsing: :func:`parse_devd_line` (devd's own variable parsing, so a line means here what a
  devd.conf ``match`` would see), :func:`parse_rctl_event` (the kernel's RCTL ``devctl`` line,
  including the 127-byte cut of its data) and :func:`format_rctl_event` (the exact kernel bytes,
  for the simulator and the tests);
* :class:`DevdClient`: a reader thread on devd's SOCK_SEQPACKET socket (falling back to the
  deprecated SOCK_STREAM one) that only decodes records and puts them on a queue, and reconnects
  with backoff when devd goes away.

Wire facts (freebsd-integration.md sections 1 and 2, checked against ``sbin/devd/devd.cc`` and
``sys/kern/kern_rctl.c``): one event per seqpacket record, newline framing on the stream socket,
devd never reads from clients and keeps no history, so a reconnect must be followed by a resync.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

log = logging.getLogger(__name__)

#: devd's preferred socket: one event per record.
SEQPACKET_PATH = "/var/run/devd.seqpacket.pipe"
#: devd's "deprecated socket retained for use with old clients": newline framing.
STREAM_PATH = "/var/run/devd.pipe"
#: devd reads /dev/devctl into a buffer of this size; a smaller recv() would cut records.
DEVCTL_MAXBUF = 8192
#: What devctl_notify("RCTL", "rule", "matched", data) puts before the data (and one space).
RCTL_HEADER = "!system=RCTL subsystem=rule type=matched"
#: The kernel builds the data in a 128-byte sbuf (RCTL_LOG_BUFSIZE), so at most 127 bytes survive.
RCTL_DATA_MAX = 127

# devd runs in the C locale: isspace() and the key characters of is_id_char() are ASCII only.
_C_SPACE = frozenset(" \t\n\v\f\r")
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_PID_RE = re.compile(r"[0-9]+")
# The kernel prints the real uid with %d, so a uid >= 2**31 arrives negative.
_RUID_RE = re.compile(r"-?[0-9]+")
_RCTL_PREFIX = RCTL_HEADER + " "


# --------------------------------------------------------------------------------------------
# devd's line parsing


def _unescape(value: str) -> str:
    """devd's fix_value(): only the backslash of each \\" goes; \\\\ stays as two characters."""
    return value.replace('\\"', '"')


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in _C_SPACE:
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
        while i < len(text) and text[i] not in _C_SPACE:
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
    """
    if isinstance(line, bytes):
        raw_bytes = line.rstrip(b"\n")
        raw = raw_bytes.decode("utf-8", "replace")
        head = _RCTL_PREFIX.encode()
        truncated_bytes: bool | None = (
            len(raw_bytes) - len(head) == RCTL_DATA_MAX if raw_bytes.startswith(head) else None
        )
    else:
        raw = line.rstrip("\n")
        truncated_bytes = None
    if not raw.startswith("!"):
        return None
    if not raw.startswith(_RCTL_PREFIX) and raw != RCTL_HEADER:
        variables = parse_devd_line(raw)
        if (variables.get("system"), variables.get("subsystem"), variables.get("type")) != (
            "RCTL",
            "rule",
            "matched",
        ):
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


# --------------------------------------------------------------------------------------------
# The socket client


class SocketKind(StrEnum):
    """Which of devd's two sockets a connection uses."""

    SEQPACKET = "seqpacket"
    STREAM = "stream"

    @property
    def socktype(self) -> int:
        return socket.SOCK_SEQPACKET if self is SocketKind.SEQPACKET else socket.SOCK_STREAM


@dataclass(frozen=True, slots=True)
class Connected:
    """The reader connected to devd; events before this moment were missed: resynchronise."""

    path: str
    kind: SocketKind


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The reader lost devd (``EOF``, a socket error or ``stopped``); it reconnects with backoff."""

    reason: str


#: What the reader puts on its queue: a decoded event line (no trailing newline) or a transition.
DevdItem: TypeAlias = str | Connected | Disconnected


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before reconnect attempt ``n`` (0-based): ``initial * factor**n``, at most ``cap``."""

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the given attempt."""
        delay = self.initial
        for _ in range(attempt):
            delay *= self.factor
            if delay >= self.cap:
                return self.cap
        return min(delay, self.cap)


class LineFramer:
    """Splits devd's stream socket into lines; holds an unterminated fragment until more arrives.

    A fragment longer than ``max_line`` cannot be a devd event (devd forwards at most 8191 bytes
    per event); it is dropped up to the next newline and counted in ``oversized``.
    """

    def __init__(self, max_line: int = DEVCTL_MAXBUF) -> None:
        self._max_line = max_line
        self._pending = bytearray()
        self._skipping = False
        self.oversized = 0

    @property
    def pending(self) -> int:
        """Bytes held of an unterminated line."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete lines, without their newline."""
        self._pending += data
        *lines, rest = bytes(self._pending).split(b"\n")
        if lines and self._skipping:
            lines.pop(0)  # the tail of an oversized line
            self._skipping = False
        self._pending = bytearray(rest)
        if len(self._pending) > self._max_line:
            self._pending.clear()
            if not self._skipping:
                self.oversized += 1
            self._skipping = True
        return lines

    def take_fragment(self) -> bytes:
        """Remove and return the unterminated fragment (at EOF it is discarded, never delivered)."""
        fragment = bytes(self._pending)
        self._pending.clear()
        self._skipping = False
        return fragment


class DevdClient:
    """A reader thread on devd's socket that feeds a queue and survives devd restarts.

    The thread only connects, receives, decodes (UTF-8, errors="replace") and puts items on
    ``out``: event lines as ``str`` and :class:`Connected` / :class:`Disconnected` transitions.
    It never blocks on the consumer (``put_nowait``; items that do not fit a bounded queue are
    counted in ``dropped``), never writes to the socket, and never runs actions, so devd does not
    drop it as an unresponsive client. On EOF or an error it reconnects: first the SOCK_SEQPACKET
    path, then the SOCK_STREAM path, waiting ``backoff.delay(n)`` between attempts.

    ``wait`` replaces the backoff sleep (tests pass a recorder); by default the wait is on the
    client's stop event, so :meth:`stop` interrupts it. ``on_transition`` is called on the reader
    thread for each Connected/Disconnected, in addition to the queue item; it must not block.
    """

    def __init__(
        self,
        out: queue.Queue[DevdItem],
        *,
        seqpacket_path: str | os.PathLike[str] | None = SEQPACKET_PATH,
        stream_path: str | os.PathLike[str] | None = STREAM_PATH,
        backoff: Backoff | None = None,
        wait: Callable[[float], object] | None = None,
        on_transition: Callable[[Connected | Disconnected], None] | None = None,
        connect_timeout: float = 2.0,
        recv_size: int = DEVCTL_MAXBUF,
        name: str = "devd-reader",
    ) -> None:
        if recv_size < DEVCTL_MAXBUF:
            raise ValueError(f"recv_size must be at least {DEVCTL_MAXBUF} (devd's event buffer)")
        candidates: list[tuple[str, SocketKind]] = []
        if seqpacket_path is not None:
            candidates.append((os.fspath(seqpacket_path), SocketKind.SEQPACKET))
        if stream_path is not None:
            candidates.append((os.fspath(stream_path), SocketKind.STREAM))
        if not candidates:
            raise ValueError("DevdClient needs a seqpacket_path or a stream_path")
        self._out = out
        self._candidates = tuple(candidates)
        self._backoff = backoff if backoff is not None else Backoff()
        self._stop = threading.Event()
        self._wait = wait if wait is not None else self._stop.wait
        self._on_transition = on_transition
        self._connect_timeout = connect_timeout
        self._recv_size = recv_size
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._wake_r = -1
        self._wake_w = -1
        self._connected = False
        self._connects = 0
        self.lines = 0
        self.dropped = 0
        self.fragments_discarded = 0
        self.oversized = 0
        self.records_truncated = 0

    # -- public surface -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the reader currently holds a connection to devd."""
        return self._connected

    @property
    def reconnects(self) -> int:
        """Successful connections after the first one."""
        return max(0, self._connects - 1)

    def start(self) -> None:
        """Start the reader thread (once)."""
        if self._thread.ident is not None:
            raise RuntimeError("DevdClient.start() called twice")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the reader and join it; True if the thread ended within ``timeout`` seconds."""
        self._stop.set()
        if self._thread.ident is None:
            return True
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass  # a byte is already waiting, or the pipe is gone: the reader will see stop
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("devd reader did not stop within %.1f s", timeout)
            return False
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        return True

    def __enter__(self) -> DevdClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the reader thread ----------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        failing_since_log = False
        while not self._stop.is_set():
            connection = self._connect()
            if isinstance(connection, str):
                # Log the first failure of a series loudly, the retries quietly.
                level = logging.DEBUG if failing_since_log else logging.WARNING
                delay = self._backoff.delay(attempt)
                log.log(level, "cannot connect to devd (%s); retrying in %.1f s", connection, delay)
                failing_since_log = True
                attempt += 1
                self._wait(delay)
                continue
            sock, path, kind = connection
            failing_since_log = False
            attempt = 0
            self._connects += 1
            self._connected = True
            log.info("connected to devd at %s (%s)", path, kind)
            self._transition(Connected(path, kind))
            try:
                reason = self._pump(sock, kind)
            finally:
                self._connected = False
                sock.close()
            log.log(
                logging.INFO if reason == "stopped" else logging.WARNING,
                "disconnected from devd: %s",
                reason,
            )
            self._transition(Disconnected(reason))
            if self._stop.is_set():
                break
            self._wait(self._backoff.delay(attempt))
            attempt += 1

    def _connect(self) -> tuple[socket.socket, str, SocketKind] | str:
        """A connected non-blocking socket, or why no candidate path could be connected."""
        errors: list[str] = []
        for path, kind in self._candidates:
            sock = socket.socket(socket.AF_UNIX, kind.socktype)
            try:
                # A bounded connect: at its client limit devd stops accepting, and a connect
                # into a full backlog must not hang the reader.
                sock.settimeout(self._connect_timeout)
                sock.connect(path)
            except OSError as exc:
                sock.close()
                errors.append(f"{path}: {exc.strerror or exc}")
                continue
            sock.setblocking(False)
            return sock, path, kind
        return "; ".join(errors)

    def _pump(self, sock: socket.socket, kind: SocketKind) -> str:
        """Receive until EOF, an error or stop; return the reason."""
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        framer = LineFramer() if kind is SocketKind.STREAM else None
        while True:
            poller.poll()
            if self._stop.is_set():
                return "stopped"
            try:
                if framer is None:
                    data, _, flags, _ = sock.recvmsg(self._recv_size)
                else:
                    data = sock.recv(max(self._recv_size, 65536))
                    flags = 0
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                return f"recv failed: {exc.strerror or exc}"
            if not data:
                if framer is not None and framer.pending:
                    fragment = framer.take_fragment()
                    self.fragments_discarded += 1
                    log.warning("discarding an unterminated %d-byte line at EOF", len(fragment))
                return "EOF"
            if framer is None:
                if flags & socket.MSG_TRUNC:
                    self.records_truncated += 1
                    log.warning("devd record longer than %d bytes was cut", self._recv_size)
                self._deliver(data)
            else:
                for line in framer.feed(data):
                    self._deliver(line)
                if framer.oversized != self.oversized:
                    self.oversized = framer.oversized
                    log.warning("dropped a devd stream line longer than %d bytes", DEVCTL_MAXBUF)

    def _deliver(self, record: bytes) -> None:
        # devd strips trailing newlines itself before parsing; an empty record carries nothing.
        record = record.rstrip(b"\n")
        if not record:
            return
        self.lines += 1
        self._put(record.decode("utf-8", "replace"))

    def _transition(self, item: Connected | Disconnected) -> None:
        self._put(item)
        if self._on_transition is not None:
            try:
                self._on_transition(item)
            except Exception:
                # A broken callback must not kill the reader: events would stop silently.
                log.exception("devd transition callback failed")

    def _put(self, item: DevdItem) -> None:
        try:
            self._out.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("devd event queue full; %d item(s) dropped so far", self.dropped)
