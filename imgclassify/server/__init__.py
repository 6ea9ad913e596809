"""The HTTP endpoint: the Flask app (:mod:`.app`), uvicorn's front that reads bodies in an event
loop (:mod:`.asgi`), dynamic batching (:mod:`.batching`).

``gunicorn "imgclassify.server:create_app()"`` keeps working: the app factory is here too.
"""

from imgclassify.server.app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
