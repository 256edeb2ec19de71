"""Option vocabularies and constants the command line needs before the core loads.

Importing this module costs nothing (no torch, numpy or PIL): the CLI renders ``--help`` and
validates arguments from these names, and the core modules take them from here too, so there
is one definition of each.
"""

from __future__ import annotations

__all__ = ["LAYOUTS", "IMAGENET_MEAN", "IMAGENET_STD", "BACKBONE_NAMES"]

#: image set layouts that ``embeval.extract.images.list_images`` reads
LAYOUTS = ("auto", "imagefolder", "regex", "market1501", "csv")
#: ImageNet normalisation of [0, 1] RGB pixels
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the built-in backbones: ``embeval.extract.architectures.BACKBONES`` keys (a test keeps them equal)
BACKBONE_NAMES = ("embeval-small",)
