"""Pictures of results: every figure (:mod:`embeval.visual.figures`) and ranked-result images
(:mod:`embeval.visual.ranked`). Pure functions over result objects and embedding sets;
matplotlib (plots) and Pillow (images) are dependencies, imported lazily. Nothing here prints."""
