"""Distillation: point-in-time training rows (``replay``), the shallow model with a scoring and a
ranking head (``shallow_model``), its training loop (``trainer``) and the candidates of ranking
rows (``candidates``)."""
