"""fastig: fast, memory-bounded Integrated Gradients for Hugging Face transformer classifiers.

The core: importing fastig imports neither triton nor captum, queries no GPU, and loads none of
the application (fastig.app: the command line, data sets, reports, the demo) or the benchmarks.
Its names load on first use (`fastig.Engine` imports torch and the engine), so that the command line,
a module of this package, starts without torch: `fastig --help` took 3.6 s, 2.6 of them importing torch.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from .errors import (BaselineError, DataError, EmptyTextError, FastIGError, InputError, Interrupted, LayerNotFoundError,
                     MemoryBudgetError, MethodError, ModelLoadError, NonFiniteError, OutputError, TargetError)

__version__ = "0.2.1"

# name -> the module that defines it, imported when the name is first read (PEP 562); the same imports below
# for type checkers and editors, which do not run __getattr__
_LAZY = {"Engine": ".engine", "TruncationWarning": ".inputs", "load_classifier": ".models",
         "PrecisionWarning": ".precision", "Attribution": ".result", "DocumentResult": ".result",
         "RunStats": ".result", "retain_freed_cpu_memory": ".scheduler"}
if TYPE_CHECKING:
    from .engine import Engine
    from .inputs import TruncationWarning
    from .models import load_classifier
    from .precision import PrecisionWarning
    from .result import Attribution, DocumentResult, RunStats
    from .scheduler import retain_freed_cpu_memory


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'fastig' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def patch_captum():
    """captum.attr.LayerIntegratedGradients becomes fastig.captum's drop-in everywhere (see
    fastig.captum.patch_captum); also a context manager that undoes it on exit."""
    from .captum import patch_captum as patch
    return patch()


def unpatch_captum() -> None:
    """Captum's own LayerIntegratedGradients again, wherever patch_captum() put fastig's."""
    from .captum import unpatch_captum as unpatch
    unpatch()


__all__ = ["Attribution", "DocumentResult", "Engine", "RunStats", "FastIGError", "InputError", "EmptyTextError",
           "TargetError", "MethodError", "BaselineError", "DataError", "ModelLoadError", "LayerNotFoundError",
           "MemoryBudgetError", "NonFiniteError", "OutputError", "Interrupted", "TruncationWarning", "PrecisionWarning",
           "load_classifier", "patch_captum", "unpatch_captum", "retain_freed_cpu_memory", "__version__"]
