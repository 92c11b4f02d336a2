"""Torch-free: images, how predictions combine, the bundle's runtime; the bundle's predict.py is these three."""
