"""Retrieval queries over a loaded index version: for a user, and for a product."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .errors import NewArrivalsError, UnknownProductError
from .store import Candidate, ProductIndex, SearchFilter
from .users import UserVectors

__all__ = ["ColdUserError", "retrieve_for_user", "similar_products"]


class ColdUserError(NewArrivalsError, LookupError):
    """The user has no usable history (the cold-user fallback is not built yet)."""


def retrieve_for_user(
    store: ProductIndex,
    users: UserVectors,
    user_id: str,
    k: int,
    search_filter: SearchFilter | None = None,
    *,
    exclude_purchased: bool = True,
) -> list[Candidate]:
    """The ``k`` products nearest the user's vector that pass the filter.

    Raises:
        ColdUserError: when the user has no event on an indexed product.
    """
    vec = users.vector(user_id)
    if vec is None:
        raise ColdUserError(
            f"user {user_id!r} has no event on an indexed product, so there is no user vector; "
            "pass a user with history (a cold-user fallback is planned)."
        )
    flt = search_filter or SearchFilter()
    state = users.state(user_id)
    if exclude_purchased and state is not None and state.purchased:
        flt = replace(flt, exclude_ids=frozenset(flt.exclude_ids | state.purchased))
    return store.search(vec[None, :].astype(np.float32), k, flt)[0]


def similar_products(
    store: ProductIndex, product_id: str, k: int, search_filter: SearchFilter | None = None
) -> list[Candidate]:
    """Products nearest a given product (itself excluded)."""
    if product_id not in store:
        raise UnknownProductError(f"product {product_id!r} is not in the index.")
    flt = search_filter or SearchFilter()
    flt = replace(flt, exclude_ids=frozenset(flt.exclude_ids | {product_id}))
    return store.search(store.vector(product_id)[None, :].astype(np.float32), k, flt)[0]
