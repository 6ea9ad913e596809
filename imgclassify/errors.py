"""One exception hierarchy for the whole project.

Every error the library raises on purpose is an :class:`ImgclassifyError`. The CLI turns it
into one line on stderr and the exit code carried by the class (see ``cli.main``); the server
turns it into a JSON error. Messages name the fix, not just the fault.
"""

from __future__ import annotations

#: the options errors can concern, by their library name -> how the command line spells them
#: (the server spells them as its query parameters, the library name itself: ``?top_k=``)
CLI_OPTIONS = {"top_k": "--top-k", "threshold": "--threshold", "workers": "--workers", "batch_size": "--batch-size"}


class ImgclassifyError(Exception):
    """Base class: a problem the user can act on. ``exit_code`` is what the CLI exits with.

    ``option``: the option the error concerns (a key of :data:`CLI_OPTIONS`), named in the message
    as ``{option}``; ``str()`` spells it as the command line does (``--top-k``), and
    :meth:`naming` as a caller does (the server: ``top_k``).
    """

    exit_code: int = 1

    def __init__(self, message: str = "", *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option

    def naming(self, spelling: str) -> str:
        """The message with its option spelled ``spelling``."""
        text = str(self.args[0]) if self.args else ""
        return text.replace("{option}", spelling) if self.option is not None else text

    def __str__(self) -> str:
        if self.option is None:
            return super().__str__()
        return self.naming(CLI_OPTIONS.get(self.option, self.option))


class UsageError(ImgclassifyError):
    """Bad options or arguments (exit code 2, like any usage error)."""

    exit_code = 2


class NoImagesError(UsageError):
    """The inputs expanded to no image at all."""


class ModelError(ImgclassifyError):
    """A model cannot be built: unknown name, weights missing, checkpoint mismatch."""

    exit_code = 2


class UnknownModelError(ModelError):
    """The model name is not in the registry."""


class WeightsUnavailableError(ModelError):
    """The weights are neither cached nor downloadable (for example offline). ``reason``: why, in a few words."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class CheckpointError(ModelError):
    """A --weights file cannot be read or does not fit the architecture."""


class LabelsError(ImgclassifyError):
    """A labels file is malformed or does not match the model's class count."""

    exit_code = 2


class DeviceError(ImgclassifyError):
    """The requested device or precision is not available here."""

    exit_code = 2


class EngineError(ImgclassifyError):
    """The engine failed mid-run (a Ray cluster lost, a task failing for good): exit code 1."""


class ImageError(ImgclassifyError):
    """One input file could not be read or decoded. Becomes an error record, never a crash."""
