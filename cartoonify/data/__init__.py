"""Data: image folders and captions, the DreamBooth dataset and sampler, class images, the demo drawings,
and the collect step (:mod:`.collect`). Submodules are imported where used; this package imports nothing.
"""
