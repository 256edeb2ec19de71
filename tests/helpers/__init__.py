"""What the tests share: running the command line (:mod:`.cli`), image files (:mod:`.images`),
tiny models (:mod:`.models`), synthetic sets (:mod:`.data`) and the float64 reference
(:mod:`.oracle`, which imports nothing of embeval)."""
