"""Logging set-up that keeps addresses out of the log.

hushroom never logs a client address; libraries might (Hypercorn announces its bind address,
and an exception text can carry a peer address). A filter on every handler replaces IPv4 and
IPv6 literals in each formatted record with ``<address>``. Logging is never per message or
per packet, so the regular expression costs nothing on hot paths.
"""

from __future__ import annotations

import ipaddress
import logging
import re

__all__ = ["RedactAddresses", "configure_logging", "redact"]

_IPV4 = r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])"
_IPV6 = r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?(?![\w:])"
_CANDIDATE = re.compile(f"{_IPV4}|{_IPV6}")


def _redact_match(match: re.Match[str]) -> str:
    text = match.group(0)
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        # A clock time or version number shaped like an address: leave it.
        return text
    return "<address>"


def redact(text: str) -> str:
    """``text`` with every IPv4 and IPv6 literal replaced by ``<address>``."""
    return _CANDIDATE.sub(_redact_match, text)


class RedactAddresses(logging.Filter):
    """Rewrite each record so no IP address literal survives formatting."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text)
        return True


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` with addresses redacted."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactAddresses())
