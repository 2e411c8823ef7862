"""Every error fastig raises on purpose: one base class, one subclass per kind of mistake; and where its
warnings point."""

import os
import sys

TORCH_DECORATOR = os.path.join("torch", "utils", "_contextlib.py")


class FastIGError(Exception):
    """Base class: the message names the argument, the value and what is allowed."""


class InputError(FastIGError, ValueError):
    """An argument of `attribute` (text, ids, baseline, target, n_steps, method) is invalid."""


class EmptyTextError(InputError):
    """A text that holds no token once tokenized."""


class TargetError(InputError):
    """A target class outside the model's labels, or a target list of the wrong length."""


class MethodError(InputError):
    """An unknown quadrature rule, or n_steps the rule cannot use."""


class BaselineError(InputError):
    """An unknown baseline name, or baseline ids/embeddings of the wrong shape."""


class DataError(InputError):
    """A data set that cannot be read or used: a missing file or column, labels that are not class
    ids, or an output folder holding a run with other settings."""


class OutputError(FastIGError):
    """A result that cannot be written where asked (a full or read-only disk, a folder in the way); the
    message says where the computed result went instead, if anywhere."""


class MemoryBudgetError(FastIGError):
    """The memory budget, or the device's memory, cannot hold even one sequence of a document."""


class ModelLoadError(FastIGError):
    """A model or tokenizer that cannot be loaded from the given path or hub name, or used as given (weights
    not float32, a tokenizer of another model)."""


class LayerNotFoundError(FastIGError):
    """The layer to attribute to cannot be found in the model."""


class NonFiniteError(FastIGError):
    """The model's output or gradient is not finite (nan or inf) for some documents: an attribution of
    them would be nonsense. `documents` holds their indices; `result` the Attribution of the other
    documents (each record's .id its document's index; None if none), as an interrupt's: no nan is ever a
    result (it held every document before, the broken ones too)."""

    def __init__(self, message: str, documents: list, result=None):
        super().__init__(message)
        self.documents, self.result = documents, result


class Interrupted(KeyboardInterrupt):
    """An interrupt (Ctrl-C, a notebook's stop) during `Engine.attribute`: still a KeyboardInterrupt, not an
    error, but it keeps what was done. `result` is the Attribution of the documents finished before it (each
    record's .id its document's index in the call), or None."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


def caller_outside_fastig() -> int:
    """warnings.warn's stacklevel, from the function calling this one, of the first frame outside fastig
    and torch's decorators around its calls (Engine.attribute's inference_mode): the user's line, whether
    they called Engine(...), Engine.attribute or Engine.documents."""
    package, frame, level = os.path.dirname(__file__) + os.sep, sys._getframe(2), 2     # 2: the warner's caller
    while frame.f_back is not None and (frame.f_code.co_filename.startswith(package)
                                        or frame.f_code.co_filename.endswith(TORCH_DECORATOR)):
        frame, level = frame.f_back, level + 1
    return level
