"""fastig: fast, memory-bounded Integrated Gradients for Hugging Face transformer classifiers.

The core: importing fastig imports neither triton nor captum, queries no GPU, and loads none of
the application (fastig.app: the command line, data sets, reports, the demo) or the benchmarks.
"""

from .engine import Engine
from .errors import (BaselineError, DataError, EmptyTextError, FastIGError, InputError, Interrupted, LayerNotFoundError,
                     MemoryBudgetError, MethodError, ModelLoadError, NonFiniteError, OutputError, TargetError)
from .inputs import TruncationWarning
from .models import load_classifier
from .precision import PrecisionWarning
from .result import Attribution, DocumentResult, RunStats
from .scheduler import retain_freed_cpu_memory

__version__ = "0.2.1"


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
