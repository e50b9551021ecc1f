"""Contrastive losses: temporal InfoNCE, multi-positive InfoNCE, false-negative elimination."""
