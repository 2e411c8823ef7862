"""fastig: fast, memory-bounded Integrated Gradients for Hugging Face transformer classifiers.

Importing fastig imports neither triton nor captum, and queries no GPU.
"""

from .engine import Attribution, Engine
from .errors import (BaselineError, EmptyTextError, FastIGError, InputError, LayerNotFoundError, MemoryBudgetError,
                     MethodError, ModelLoadError, TargetError)
from .models import load_classifier

__version__ = "0.1.0"

__all__ = ["Attribution", "Engine", "FastIGError", "InputError", "EmptyTextError", "TargetError", "MethodError",
           "BaselineError", "ModelLoadError", "LayerNotFoundError", "MemoryBudgetError",
           "load_classifier", "__version__"]
