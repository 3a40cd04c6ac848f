"""onejump inside other tools: lenses on levels read in an nnsight trace (:mod:`.nnsight`, the ``nnsight`` extra).

transformers' ``generate`` with a lens as its draft head is :class:`onejump.generation.assistant.LensAssistant`.
"""
