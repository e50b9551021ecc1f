"""Training and evaluation of the edgeav encoders (needs the ``train`` extra: torch)."""
