"""Trained towers: the image tower aligned to the text space, the user tower, and the
time-budget, best-snapshot training loop every trainer shares (:mod:`.training_loop`)."""
