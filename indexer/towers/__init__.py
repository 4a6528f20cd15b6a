"""Trained towers: the image tower aligned to the text space and the user tower."""
