"""The app factory: :func:`create_app` assembles config -> state -> Flask app with its routes.

    gunicorn --threads 8 "imgclassify.server:create_app()"   # configured by IMGCLASSIFY_* variables

The parts: the configuration (:mod:`.config`), the API key (:mod:`.auth`), what the routes share
and where uploads are decoded (:mod:`.state`), the routes (:mod:`.routes`), the metrics
(:mod:`.metrics`). Their public names are importable from here too, as before they had modules.
Importing this module loads neither Flask nor torch: :func:`create_app` does.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from imgclassify.errors import UsageError
from imgclassify.extras import install_hint
from imgclassify.results.render import check_threshold
from imgclassify.server.answers import ADMITTED_KEY, ROOT_MESSAGE, too_many_files_message
from imgclassify.server.auth import (
    API_KEY_ENV,
    OPEN_PATHS,
    check_authorization,
    is_loopback_host,
    needs_api_key,
    open_server_warning,
    read_api_key_file,
    resolve_api_key,
    unauthorized,
)
from imgclassify.server.config import DEFAULT_MAX_FILES, QUEUE_BATCHES, ServerConfig
from imgclassify.server.state import UploadDecoding

if TYPE_CHECKING:
    from flask import Flask

    from imgclassify.pipeline import Classifier

__all__ = [  # the factory, and the names this module held before the parts had their own
    "ADMITTED_KEY", "API_KEY_ENV", "DEFAULT_MAX_FILES", "INSTALL_HINT", "OPEN_PATHS", "QUEUE_BATCHES",
    "ROOT_MESSAGE", "ServerConfig", "UploadDecoding", "check_authorization", "configure_logging", "create_app",
    "is_loopback_host", "needs_api_key", "open_server_warning", "read_api_key_file", "require_flask",
    "resolve_api_key", "too_many_files_message", "unauthorized",
]  # fmt: skip

log = logging.getLogger("imgclassify.server")

INSTALL_HINT = f"imgclassify serve needs the serve extra: {install_hint('serve')}"


def create_app(
    config: ServerConfig | None = None,
    *,
    classifier: Classifier | None = None,
    warm_up_async: bool = True,
    upload_decoding: UploadDecoding | None = None,
) -> Flask:
    """The Flask app. Loads the model now (unless ``classifier`` is given) and warms it up in the background.

    ``config`` None: from the environment (:meth:`ServerConfig.from_env`), as under a plain
    ``gunicorn "imgclassify.server:create_app()"``. ``upload_decoding``: where uploads are
    decoded (default :class:`UploadDecoding`: as ``predict``).
    """
    require_flask()
    from flask import Flask

    from imgclassify.server import routes
    from imgclassify.server.metrics import Metrics
    from imgclassify.server.state import AppState

    if not logging.getLogger("imgclassify").handlers:  # e.g. under a plain `gunicorn ...create_app()`
        configure_logging()
    if config is None:  # this process's entry point: its allocator and threads, once
        config = ServerConfig.from_env()
        from imgclassify.system.runtime import configure_process

        configure_process()
    if classifier is None:
        from imgclassify.pipeline import load_classifier

        classifier = load_classifier(config.options)
    classifier.check_top_k(config.top_k)
    check_threshold(config.threshold)
    config = config.resolved_for(classifier.device, default_threshold=classifier.plan.default_threshold)
    batch_decode = (upload_decoding or UploadDecoding()).batch_decoder(classifier)
    state = AppState(classifier, config, Metrics(), batch_decode)
    app = Flask("imgclassify")
    app.extensions["imgclassify"] = state
    routes.register(app, state)
    state.start_warm_up(background=warm_up_async)
    return app


def require_flask() -> None:
    try:
        import flask  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_HINT) from None


def configure_logging(level: int = logging.INFO) -> None:
    """One line per request on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s imgclassify: %(message)s"))
    for name in ("imgclassify", "imgclassify.server"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name == "imgclassify" else []
        logger.propagate = name != "imgclassify"
        logger.setLevel(level)
