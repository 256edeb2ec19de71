"""The embedding file format (:mod:`.store`), sets of several files (:mod:`.concat`) and the
deterministic safetensors writer every output uses (:mod:`.safetensors_io`)."""
