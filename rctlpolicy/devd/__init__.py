"""devd(8): its messages (pure, :mod:`.message`) and the socket client (:mod:`.client`).

* :mod:`rctlpolicy.devd.message`: devd's variable parsing, the kernel's RCTL line (read and
  written), no I/O;
* :mod:`rctlpolicy.devd.client`: the reader thread on devd's socket;
* :mod:`rctlpolicy.devd.batch`: many records per receive call (recvmmsg(2)).

The names most callers need are re-exported here.
"""

from __future__ import annotations

from rctlpolicy.devd.client import (
    SEQPACKET_PATH,
    STREAM_PATH,
    Backoff,
    Connected,
    DevdClient,
    DevdItem,
    Disconnected,
    LineFramer,
    Receiving,
    SocketKind,
    Transition,
)
from rctlpolicy.devd.message import (
    DEVCTL_MAXBUF,
    RCTL_DATA_MAX,
    RCTL_HEADER,
    MalformedEvent,
    RctlEvent,
    format_rctl_event,
    parse_devd_line,
    parse_rctl_event,
)

__all__ = [
    "DEVCTL_MAXBUF",
    "RCTL_DATA_MAX",
    "RCTL_HEADER",
    "SEQPACKET_PATH",
    "STREAM_PATH",
    "Backoff",
    "Connected",
    "DevdClient",
    "DevdItem",
    "Disconnected",
    "LineFramer",
    "MalformedEvent",
    "RctlEvent",
    "Receiving",
    "SocketKind",
    "Transition",
    "format_rctl_event",
    "parse_devd_line",
    "parse_rctl_event",
]
