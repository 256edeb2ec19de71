"""Pictures of results: plots (:mod:`embeval.visual.plots`) and ranked-result images
(:mod:`embeval.visual.ranked`). Pure functions over result objects and embedding sets;
matplotlib (plots) is optional, Pillow (images) is a dependency. Nothing here prints."""
