"""Fused kernels of fastig: one file per operation, each with a Triton kernel and a torch reference.

Nothing here imports triton at import time: CPU-only installs import fastig cleanly.
"""
