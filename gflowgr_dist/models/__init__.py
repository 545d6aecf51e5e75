"""Models: generative backbones and the ranking baselines (popularity, SASRec) they must beat."""
