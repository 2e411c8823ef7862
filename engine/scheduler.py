"""How many integration steps go into one model call."""

from .errors import InputError

# About 8k token-steps per call kept a 4-layer Longformer-base-shaped model near its best
# CPU throughput while its activations for one call stay under ~2 GiB.
TOKEN_STEPS_PER_CALL = 8192


def chunk_size_for(length: int, n_steps: int, chunk_size: int | None = None) -> int:
    """Steps per model call for a document of `length` layer positions."""
    if chunk_size is None:
        return max(1, min(n_steps, TOKEN_STEPS_PER_CALL // max(length, 1)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size={chunk_size!r} must be a positive integer (steps per model call) or None")
    return min(chunk_size, n_steps)
