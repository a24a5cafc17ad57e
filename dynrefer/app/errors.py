"""The application layer's errors: problems the user can fix (a missing file, a bad argument, a bundle that does
not fit, a malformed config or annotation) are printed by the command on one line, without a traceback, with exit
status 2; a missing optional dependency names the extra to install."""
from __future__ import annotations

from typing import Optional

__all__ = ["UserError", "user_error_types", "describe_user_error", "EXTRAS"]


class UserError(Exception):
    """A problem the user can fix; its message says what and where."""


#: The optional packages the model, training and data commands need, and the extra that installs each.
EXTRAS = {"torch": "train", "torchvision": "train", "transformers": "train", "tokenizers": "train", "yaml": "train",
          "tqdm": "train", "sentencepiece": "train", "PIL": "data", "peft": "llm"}


def user_error_types() -> tuple:
    """The exception types that report a user's mistake rather than a defect of dynrefer."""
    from dynrefer.app.ferret_bench import FerretBenchError
    from dynrefer.app.referring import ConversationConfigError
    from dynrefer.data.convert import RawFormatError
    from dynrefer.data.records import AnnotationError
    from dynrefer.eval import JavaUnavailableError, PredictionError
    from dynrefer.train.config import ConfigError

    return (UserError, ConfigError, AnnotationError, RawFormatError, FerretBenchError, ConversationConfigError,
            PredictionError, JavaUnavailableError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError)


def describe_user_error(err: BaseException) -> Optional[str]:
    """One line for ``err`` if it is a user's mistake (see :func:`user_error_types`) or a missing optional package,
    else None (a defect: let it raise)."""
    if isinstance(err, ModuleNotFoundError):
        top = (err.name or "").split(".")[0]
        if top in EXTRAS:
            pkg = {"PIL": "Pillow", "yaml": "pyyaml"}.get(top, top)
            return (f"this needs {pkg}, which is not installed: pip install 'dynrefer[{EXTRAS[top]}]' "
                    f"(or pip install {pkg})")
        return None
    if isinstance(err, user_error_types()):
        if isinstance(err, OSError) and err.filename is not None:
            return f"{err.filename}: {err.strerror or err}"
        msg = str(err).strip() or type(err).__name__
        if "Original Traceback" in msg:   # re-raised from a DataLoader worker: the worker's own message is last
            last = msg.splitlines()[-1]
            msg = last.split(": ", 1)[1] if ": " in last else last
        return " ".join(msg.split())
    return None
