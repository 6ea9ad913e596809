"""The API key: read from ``--api-key-file`` or ``IMGCLASSIFY_API_KEY``, checked on every request that needs it.

With a key set, every route but :data:`OPEN_PATHS` needs ``Authorization: Bearer KEY``
(:func:`check_authorization`). Both the ASGI front (:mod:`.asgi`, before the body is read) and the
Flask app (:mod:`.routes`, for any other WSGI server) decide with it. The key never appears in a
message, a log line, ``/info`` or a serialized configuration.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from imgclassify.errors import UsageError
from imgclassify.options import ENV_PREFIX

if TYPE_CHECKING:
    from imgclassify.server.config import ServerConfig

log = logging.getLogger("imgclassify.server")

API_KEY_ENV = ENV_PREFIX + "API_KEY"
API_KEY_FILE_OPTION = "--api-key-file"
#: what anyone may call when a key is set: load balancers' probes, and the page (it holds no data).
#: Every other path needs the key, so a route added later is never open by mistake.
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz"})
_HOW = "in the header 'Authorization: Bearer <key>'"
_UNAUTHORIZED = {
    "missing": f"this server needs an API key: send it {_HOW}",
    "wrong_scheme": f"the API key goes in the Bearer scheme: send it {_HOW}",
    "invalid_token": f"wrong API key: send this server's key {_HOW}",
}


def read_api_key_file(path: str | os.PathLike[str]) -> str:
    """The API key in ``path`` (``--api-key-file``): its text stripped of surrounding whitespace.

    A file that cannot be read, is empty, or holds more than one line is a :class:`UsageError`
    naming ``--api-key-file``; no message ever holds the file's content.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{API_KEY_FILE_OPTION} {path}: cannot read it ({exc.strerror or 'error'})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{API_KEY_FILE_OPTION} {path}: not UTF-8 text: the key must be one line of text") from None
    return checked_key(text, f"{API_KEY_FILE_OPTION} {path}")


def checked_key(text: str, source: str) -> str:
    """``text`` stripped, as an API key, or a :class:`UsageError` naming ``source`` (never the text)."""
    key = text.strip()
    if not key:
        raise UsageError(f"{source} is empty: it must hold the API key")
    if not key.isprintable():  # a newline or a control character: no client could send it in a header
        raise UsageError(f"{source}: the API key must be one line of printable characters")
    return key


def resolve_api_key(
    api_key_file: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The API key: ``api_key_file``'s content if one is given, else ``IMGCLASSIFY_API_KEY``, else None (no key).

    The file wins over the variable (an option over the environment), with a warning that the
    variable is ignored. An empty or blank variable is no key.
    """
    env = os.environ if environ is None else environ
    variable = env.get(API_KEY_ENV, "").strip()
    if api_key_file is None:
        return checked_key(variable, API_KEY_ENV) if variable else None
    if variable:
        log.warning("%s is ignored: %s %s gives the API key", API_KEY_ENV, API_KEY_FILE_OPTION, api_key_file)
    return read_api_key_file(api_key_file)


def needs_api_key(path: str) -> bool:
    """Whether a request for ``path`` must carry the key (when one is set): all but :data:`OPEN_PATHS`."""
    return path not in OPEN_PATHS


def check_authorization(header_value: str | None, key: bytes | None) -> str | None:
    """Why a request with this ``Authorization`` header is refused, or None: it may go on.

    ``key``: the API key's UTF-8 bytes, None when no key is set (everyone may). ``header_value``
    as WSGI gives it (the raw bytes as latin-1 text; the ASGI layer decodes them the same way).
    Reasons: ``"missing"`` (no header), ``"wrong_scheme"`` (not ``Bearer``), ``"invalid_token"``
    (a Bearer token that is not the key, compared in constant time). Both the ASGI layer and the
    Flask app decide with this function; :func:`unauthorized` is their answer.
    """
    if key is None:
        return None
    parts = (header_value or "").split(None, 1)
    if not parts:
        return "missing"
    if parts[0].lower() != "bearer":  # auth schemes are case-insensitive (RFC 9110)
        return "wrong_scheme"
    try:
        token = (parts[1].strip() if len(parts) == 2 else "").encode("latin-1")
    except UnicodeEncodeError:  # not bytes off the wire: cannot be the key
        return "invalid_token"
    return None if hmac.compare_digest(token, key) else "invalid_token"


def unauthorized(reason: str) -> tuple[dict[str, str], str]:
    """The 401 for a :func:`check_authorization` reason: its JSON body and ``WWW-Authenticate`` (RFC 6750)."""
    challenge = 'Bearer error="invalid_token"' if reason == "invalid_token" else "Bearer"
    return {"error": "unauthorized", "message": _UNAUTHORIZED[reason]}, challenge


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (``serve --host``) is this machine only: 127.0.0.0/8, ::1 or localhost."""
    name = host.strip().strip("[]").lower()
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def open_server_warning(config: ServerConfig, host: str, port: int) -> str | None:
    """What ``serve`` warns at start when it listens beyond this machine without a key, else None."""
    if config.api_key is not None or is_loopback_host(host):
        return None
    return (
        f"--host {host} listens beyond this machine and no API key is set: anyone who can reach port {port} "
        f"can use this server. Set one with {API_KEY_ENV}=KEY or {API_KEY_FILE_OPTION} FILE (docs/serve.md, 'API key')"
    )
