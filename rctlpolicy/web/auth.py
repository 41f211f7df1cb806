"""HTTP basic auth against exporter-toolkit's ``basic_auth_users`` (bcrypt hashes).

bcrypt is slow on purpose (tens to hundreds of milliseconds). So that guessing clients cannot
take the endpoint from Prometheus, the check has two halves:

- ``check_cached``: a constant-time comparison against credentials already verified, cheap
  enough for the server's event loop; a scraper with the right password pays bcrypt once.
- ``check_slow``: bcrypt itself, which the server runs on a small bounded pool of threads, so
  guessers queue behind each other and never delay a request whose credentials are cached.

``authenticate`` does both, in the caller's thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections.abc import Callable, Mapping

import bcrypt

logger = logging.getLogger("rctlpolicy.web")

#: check_password(password, bcrypt_hash) -> bool; bcrypt.checkpw unless a test counts calls.
PasswordCheck = Callable[[bytes, bytes], bool]

# $2a$/$2b$/$2y$ (htpasswd writes $2y$), a two-digit cost, then 53 characters of salt and hash.
BCRYPT_HASH = re.compile(r"\$2[abxy]\$(\d\d)\$[./A-Za-z0-9]{53}")
# bcrypt reads only the first 72 bytes of a password; Go's bcrypt (exporter-toolkit) ignores the
# rest when comparing, while Python's bcrypt 5 refuses longer passwords. Truncate to behave
# like the exporter the file was written for.
_BCRYPT_MAX_PASSWORD = 72


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    A successful check is remembered per (user, hash) as a keyed digest of the password (never
    the password itself) and later compared in constant time. Failures are never cached: every
    wrong guess pays bcrypt's full cost. An unknown user is checked against a dummy hash of the
    same cost, so timing does not reveal which users exist.
    """

    def __init__(
        self, users: Mapping[str, str], check_password: PasswordCheck = bcrypt.checkpw
    ) -> None:
        self.users: Mapping[str, str] = dict(users)
        self._users = {user: hashed.encode("utf-8") for user, hashed in users.items()}
        self._check_password = check_password
        self._digest_key = secrets.token_bytes(32)
        self._verified: dict[tuple[str, bytes], bytes] = {}
        self._lock = threading.Lock()
        self._dummy_hash: bytes | None = None

    def authenticate(self, authorization: str | None) -> bool:
        """True if the header names a configured user with the right password."""
        return self.check_cached(authorization) or self.check_slow(authorization)

    def check_cached(self, authorization: str | None) -> bool:
        """True if these exact credentials were verified before; never runs bcrypt."""
        credentials = _parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self._users.get(user)
        if hashed is None:
            return False
        with self._lock:
            remembered = self._verified.get((user, hashed))
        return remembered is not None and hmac.compare_digest(remembered, self._digest(password))

    def needs_bcrypt(self, authorization: str | None) -> bool:
        """False for a header that fails without any bcrypt (missing, not Basic, malformed)."""
        return _parse_basic(authorization) is not None

    def check_slow(self, authorization: str | None) -> bool:
        """bcrypt against the user's hash (a dummy one for an unknown user); remembers success."""
        credentials = _parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self._users.get(user)
        ok = self._bcrypt(password[:_BCRYPT_MAX_PASSWORD], hashed or self._dummy())
        if not ok or hashed is None:
            return False
        with self._lock:
            self._verified[(user, hashed)] = self._digest(password)
        return True

    def _digest(self, password: bytes) -> bytes:
        truncated = password[:_BCRYPT_MAX_PASSWORD]
        return hmac.new(self._digest_key, truncated, hashlib.sha256).digest()

    def _bcrypt(self, password: bytes, hashed: bytes) -> bool:
        try:
            return self._check_password(password, hashed)
        except ValueError as exc:
            # A hash that matched the pattern but that bcrypt still refuses.
            logger.error("basic auth: cannot check a password against a configured hash: %s", exc)
            return False

    def _dummy(self) -> bytes:
        # Made on first use, outside the lock (two threads may both make one: harmless).
        if self._dummy_hash is None:
            costs = []
            for hashed in self._users.values():
                match = BCRYPT_HASH.fullmatch(hashed.decode("utf-8", "replace"))
                if match:
                    costs.append(int(match.group(1)))
            # bcrypt accepts costs 4 to 31; 10 is the usual default when nothing else is known.
            rounds = min(max(max(costs, default=10), 4), 31)
            self._dummy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds))
        return self._dummy_hash


def _parse_basic(authorization: str | None) -> tuple[str, bytes] | None:
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
        raw_user, sep, password = decoded.partition(b":")
        user = raw_user.decode("utf-8")
    except ValueError:
        # binascii.Error, UnicodeDecodeError, and non-ASCII text given to b64decode.
        return None
    if not sep:
        return None
    return user, password
