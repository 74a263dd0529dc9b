"""The tiny random Mixtral the tests load (built by `adapters.tiny_moe`, as `moe-router tiny-moe` does)."""

from adapters.tiny_moe import LAYERS, NUM_EXPERTS, build_tiny_moe, cached_tiny_moe

__all__ = ["LAYERS", "NUM_EXPERTS", "build_tiny_moe", "cached_tiny_moe"]
