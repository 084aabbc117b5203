"""The one error type of the export room (no heavy imports)."""
from __future__ import annotations


class ExportError(ValueError):
    """An export or verification that cannot go ahead: bad checkpoint, opset, frame range, output dir.

    The message is one clear line meant for the user; `autr export ...` prints it and exits with 2.
    """
