"""Early-exit generation through a lens: confidence exits and lossless self-speculative decoding.

- :func:`generate_greedy` / :func:`generate_reference`: our greedy loop and ``model.generate``;
- :func:`generate_speculative`: draft with blocks 1..E + a lens, verify with blocks E+1..K on the
  draft's cached lower blocks; output identical to greedy;
- :func:`generate_confidence`: exit at the first chosen level whose lens is confident enough;
- :mod:`.auto`: measure acceptance and costs on a few prompts and pick the fastest mode that keeps
  the requested quality (``onejump generate --exit auto``).
"""

from .api import generate
from .common import (
    GenerationInterrupted,
    GenerationResult,
    generate_greedy,
    generate_reference,
    max_positions,
)
from .confidence import generate_confidence
from .speculative import generate_speculative

__all__ = [
    "GenerationInterrupted",
    "GenerationResult",
    "generate",
    "generate_confidence",
    "generate_greedy",
    "generate_reference",
    "generate_speculative",
    "max_positions",
]
