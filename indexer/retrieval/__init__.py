"""Retrieval: user vectors from interactions, the popular fallback, and search."""
