"""The index: bulk build, the product store and its ANN backends, published versions and
the embedding cache."""
