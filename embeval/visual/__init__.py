"""Pictures of results: every figure (:mod:`embeval.visual.figures`) and ranked-result images
(:mod:`embeval.visual.ranked`). Pure functions over result objects and embedding sets;
matplotlib (plots) is optional, Pillow (images) is a dependency. Nothing here prints."""
