"""The parts of the HTTP contract that both the ASGI front (:mod:`.asgi`) and the routes (:mod:`.routes`) use.

Kept apart from both so that neither imports the other, and light (no Flask): the tutorial's
root message, the limits' messages, and the WSGI environ key by which the front says it has
already counted a request's images into the queue.
"""

from __future__ import annotations

ROOT_MESSAGE = {"msg": "Try POSTing to the /predict endpoint with an RGB image attachment"}
#: the WSGI environ key by which ``imgclassify serve``'s front (asgi.py) says it counted the images in
ADMITTED_KEY = "imgclassify.admitted_images"


def too_many_files_message(max_files: int) -> str:
    return (
        f"more than {max_files} files in one request: send them in several requests, "
        "or classify large sets with `imgclassify predict`"
    )
