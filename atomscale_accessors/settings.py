"""A client's settings, checked when it is made: the key, the endpoint, the transport and
the deadline. Each problem is a :class:`~atomscale_accessors.errors.ConfigurationError`
that names it without showing the key."""

from __future__ import annotations

import ipaddress
import math
import os
import unicodedata
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlsplit

from .errors import ConfigurationError

__all__ = [
    "check_deadline",
    "check_key",
    "check_transport",
    "from_env",
    "is_loopback",
    "normalise_endpoint",
]


def from_env(names: Iterable[str]) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value and value.strip():
            return value
    return None


def check_key(key: Any) -> str:
    """The key without surrounding blanks, checked to be sendable in a header.

    Messages never show the key: at most the code point of a character that cannot be
    part of one.
    """
    if key is None or (isinstance(key, str) and not key.strip()):
        raise ConfigurationError(
            "no Atomscale API key: pass api_key=..., or set AS_API_KEY "
            "(or ATOMSCALE_API_KEY) in the environment"
        )
    if not isinstance(key, str):
        raise ConfigurationError(f"the API key must be a string, not {type(key).__name__}")
    # Blanks around a pasted key are a copying accident (the official SDK strips them
    # too); requests would refuse the header only once the request is under way.
    key = key.strip()
    for position, char in enumerate(key, 1):
        if " " <= char <= "~":
            continue
        # A key is printable ASCII. Anything else was pasted along with it (a zero-width
        # or no-break space, a line break) and either cannot be encoded in a header or
        # would be sent as a different key.
        name = unicodedata.name(char, "a control character")
        raise ConfigurationError(
            f"the API key contains U+{ord(char):04X} ({name}) at position {position} of "
            f"{len(key)}, which cannot be part of a key: copy the key again without it"
        )
    return key


def check_deadline(deadline: Any) -> float | None:
    if deadline is None:
        return None
    try:
        seconds = float(deadline)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigurationError(
            f"deadline must be a positive number of seconds, or None, not {deadline!r}"
        )
    return seconds


def normalise_endpoint(endpoint: str) -> str:
    if not isinstance(endpoint, str):
        raise ConfigurationError(
            f"the endpoint must be a URL string, not {type(endpoint).__name__}"
        )
    parts = urlsplit(endpoint)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        # The value is not shown: arguments given in the wrong order put the key here.
        raise ConfigurationError(
            "the endpoint must be an http(s) URL such as https://api.atomscale.ai/"
        )
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigurationError("the endpoint must not carry credentials, a query or a fragment")
    # Keep any path prefix: joining "http://host/prefix" with "physical_samples/" must
    # give "http://host/prefix/physical_samples/", not drop "prefix".
    path = quote(parts.path.rstrip("/"), safe="/%") + "/"
    return f"{parts.scheme}://{parts.netloc}{path}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` surely means this machine, decided without resolving it.

    Only ``localhost`` itself and loopback addresses: a name such as ``x.localhost`` may
    be sent to DNS by the resolver, and answered with any address.
    """
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_transport(endpoint: str, allow_insecure: bool) -> None:
    parts = urlsplit(endpoint)
    if parts.scheme == "http" and not allow_insecure and not is_loopback(parts.hostname or ""):
        raise ConfigurationError(
            f"refusing to send the API key over plain http to {parts.hostname}: use https, "
            "or pass allow_insecure=True if this network is trusted"
        )


# Everything a request can fail with on the way (requests' errors are OSErrors too;
# urllib3's and http.client's come from reading the body directly).
