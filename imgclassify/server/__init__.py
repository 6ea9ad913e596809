"""The HTTP endpoint: the app factory (:mod:`.app`), its routes (:mod:`.routes`) over a state (:mod:`.state`).

The rest: the configuration and how it reaches worker processes (:mod:`.config`), the API key
(:mod:`.auth`), the metrics (:mod:`.metrics`), uvicorn's front that reads bodies in an event loop
(:mod:`.asgi`) and what it shares with the routes (:mod:`.answers`), dynamic batching (:mod:`.batching`).

``gunicorn "imgclassify.server:create_app()"`` keeps working: the app factory is here too.
"""

from __future__ import annotations

from imgclassify.errors import UsageError
from imgclassify.server.app import INSTALL_HINT, ServerConfig, create_app, require_flask

__all__ = ["ServerConfig", "create_app", "serve"]


def serve(
    config: ServerConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    threads: int = 8,
    workers: int = 1,
    quiet: bool = False,
) -> None:
    """Run ``create_app(config)`` behind uvicorn, bodies read in its event loop (blocks until stopped).

    See :mod:`imgclassify.server.asgi`: slow clients must not hold request threads.
    """
    require_flask()
    try:
        from imgclassify.server import asgi
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    asgi.run(config, host=host, port=port, threads=threads, workers=workers, quiet=quiet)
