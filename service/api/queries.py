"""What the read routes compute, over one :class:`ServingState`.

Searches and vector reads happen under the state's shared lock; the ranker runs after it
is released (on a snapshot of the candidates' metadata), so a slow re-rank never holds
back a write.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

import numpy as np

from newarrivals.indexer.catalog.schema import EventType, Product
from newarrivals.indexer.errors import NewArrivalsError
from newarrivals.indexer.index.filters import Candidate, SearchFilter
from newarrivals.indexer.retrieval.search import (
    SESSION_USER,
    UserQuery,
    search_query,
    session_query,
    session_vectors,
    similar_products,
    user_query,
)
from newarrivals.indexer.retrieval.users import UserVectors
from newarrivals.ranker.base import softmax
from newarrivals.service.api.live import EncodedProduct, Runtime
from newarrivals.service.api.schemas import (
    AudienceUserPublic,
    ColdStartPublic,
    FilterFields,
    ReachPublic,
    ReasonPublic,
    RecommendationItemPublic,
    RecommendationsPublic,
    SessionRecommendationRequest,
    SimilarItemPublic,
    SimilarProductsPublic,
    UserPublic,
    UserRecommendationQuery,
)
from newarrivals.service.api.state import ServingState

if TYPE_CHECKING:
    from newarrivals.ranker.serving.request import RequestBlend

__all__ = [
    "RankerMissingError",
    "cold_start",
    "recommendations_for_session",
    "recommendations_for_user",
    "search_filter",
    "similar_to_product",
    "user_profile",
]


class RankerMissingError(NewArrivalsError):
    """Re-ranking was asked for but no ranker is loaded."""


def search_filter(params: FilterFields, now: datetime, exclude: Iterable[str] = ()) -> SearchFilter:
    return SearchFilter(
        category=params.category,
        min_price=params.min_price,
        max_price=params.max_price,
        launched_after=params.launch_cutoff(now),
        available_only=params.available_only,
        exclude_ids=frozenset(params.exclude).union(exclude),
    )


@dataclass(frozen=True)
class _BlendInputs:
    """What the blend reads besides the ranker's scores, copied out of the locked state."""

    blend: RequestBlend
    candidates: np.ndarray  # (n, dim) fused vectors, in candidate order
    recent: np.ndarray  # (h, dim) fused vectors of the user's recent products
    user: np.ndarray | None  # the user's own vector; None for the cold-user fallback


@dataclass(frozen=True)
class _Retrieved:
    """Candidates and everything needed to answer, copied out of the locked state."""

    candidates: list[Candidate]
    products: dict[str, Product]
    reasons: dict[str, ReasonPublic]
    context: list[Product]
    index_version: str
    blend: _BlendInputs | None = None


def _reasons(
    state: ServingState,
    candidates: Sequence[Candidate],
    candidate_vectors: np.ndarray,
    live: Sequence[str],
    live_vectors: np.ndarray,
) -> dict[str, ReasonPublic]:
    """For each candidate, the recent product it is closest to (read lock held)."""
    if not candidates or not live:
        return {}
    sims = candidate_vectors @ live_vectors.T
    best = sims.argmax(axis=1)
    out: dict[str, ReasonPublic] = {}
    for i, (c, j) in enumerate(zip(candidates, best.tolist(), strict=True)):
        pid = live[j]
        product = state.products.get(pid)
        title = product.title if product is not None and product.title else pid
        sim = float(sims[i, j])
        out[c.product_id] = ReasonPublic(
            closest_recent_product_id=pid,
            closest_recent_title=title,
            similarity=sim,
            text=f"closest to {title!r}, which you recently looked at (similarity {sim:.2f})",
        )
    return out


def _retrieve(
    runtime: Runtime,
    state: ServingState,
    query: UserQuery,
    recent: Sequence[str],
    params: UserRecommendationQuery | SessionRecommendationRequest,
    now: datetime,
) -> _Retrieved:
    """The indexer's first stage, then copy out metadata, reasons and, when the re-rank
    will blend, the vectors the blend reads (read lock held by the caller).

    With ``NEWARRIVALS_RETRIEVAL=late-max`` and recent products to compare with,
    :func:`~newarrivals.indexer.retrieval.search.search_query` runs the late-fusion search;
    otherwise the index's search with the query vector.
    """
    rerank = params.rerank
    depth = max(params.k, runtime.settings.rerank_depth) if rerank else params.k
    late = runtime.settings.retrieval == "late-max"
    # The recent products' and the candidates' vectors are read once, for the late search,
    # the reasons and the blend alike.
    live = [p for p in recent if p in state.store]
    live_vectors = (
        state.store.vectors_for(live) if live else np.zeros((0, state.store.dim), np.float32)
    )
    candidates = search_query(
        state.store,
        query,
        depth,
        search_filter(params, now),
        layout=state.layout if late else None,
        recent_vectors=live_vectors,
    )
    products = {c.product_id: state.products[c.product_id] for c in candidates}
    context = [state.products[p] for p in recent if p in state.products]
    blending = rerank and state.rerank_blend is not None and bool(candidates)
    candidate_vectors = (
        state.store.vectors_for([c.product_id for c in candidates])
        if candidates and (live or blending)
        else np.zeros((len(candidates), state.store.dim), np.float32)
    )
    blend = None
    if blending and state.rerank_blend is not None:
        blend = _BlendInputs(
            blend=state.rerank_blend,
            candidates=candidate_vectors,
            recent=live_vectors,
            user=query.user_vector,
        )
    return _Retrieved(
        candidates=candidates,
        products=products,
        reasons=_reasons(state, candidates, candidate_vectors, live, live_vectors),
        context=context,
        index_version=state.version.version,
        blend=blend,
    )


def _items(
    runtime: Runtime, got: _Retrieved, k: int, rerank: bool
) -> list[RecommendationItemPublic]:
    """Re-rank (outside the state lock) and shape the top ``k``."""
    probability: dict[str, float] = {}
    blended: dict[str, float] = {}
    ordered = got.candidates
    if rerank and got.candidates:
        ranker = runtime.ranker
        if ranker is None:  # checked earlier; kept for the type checker
            raise RankerMissingError("no ranker is loaded.")
        with runtime.ranking():
            context = ranker.encode_context(got.context)
            ranked = ranker.rank(context, got.candidates, got.products)
        by_id = {c.product_id: c for c in got.candidates}
        ordered = [by_id[r.product_id] for r in ranked]
        probability = {r.product_id: r.probability for r in ranked}
        if got.blend is not None:
            raw = {r.product_id: r.raw_score for r in ranked}
            b = got.blend
            scores = b.blend.score(
                [raw[c.product_id] for c in got.candidates],
                b.candidates,
                [c.score for c in got.candidates],
                b.recent,
                b.user,
            )
            chance = softmax(scores)
            blended = {c.product_id: float(chance[i]) for i, c in enumerate(got.candidates)}
            # A stable sort keeps the retrieval order among equal blend scores.
            order = np.argsort(-scores, kind="stable")
            ordered = [got.candidates[i] for i in order.tolist()]
    items = []
    for c in ordered[:k]:
        p = got.products[c.product_id]
        items.append(
            RecommendationItemPublic(
                product_id=c.product_id,
                title=p.title,
                category=p.category_path,
                price=p.price,
                launched_at=p.launched_at,
                retrieval_score=c.score,
                ranker_probability=probability.get(c.product_id),
                blend_probability=blended.get(c.product_id),
                reason=got.reasons.get(c.product_id),
            )
        )
    return items


def _reranked_by(got: _Retrieved, rerank: bool) -> Literal["blend", "ranker"] | None:
    if not rerank or not got.candidates:
        return None
    return "blend" if got.blend is not None else "ranker"


def _require_ranker(runtime: Runtime, rerank: bool) -> None:
    if rerank and runtime.ranker is None:
        raise RankerMissingError(
            "re-ranking was requested but no ranker is loaded; start the service with "
            "NEWARRIVALS_RANKER=DIR (or `newarrivals serve --ranker DIR`), or send rerank=false."
        )


def _answer(
    runtime: Runtime,
    got: _Retrieved,
    query: UserQuery,
    params: UserRecommendationQuery | SessionRecommendationRequest,
    *,
    user_id: str | None,
    ignored: Sequence[str] = (),
) -> RecommendationsPublic:
    """Re-rank (outside the state lock) and shape the response."""
    return RecommendationsPublic(
        user_id=user_id,
        fallback=query.fallback,
        fallback_reason=query.reason or None,
        reranked=params.rerank,
        reranked_by=_reranked_by(got, params.rerank),
        index_version=got.index_version,
        items=_items(runtime, got, params.k, params.rerank),
        ignored_product_ids=list(ignored),
    )


def _recent(users: UserVectors, user_id: str) -> list[str]:
    st = users.state(user_id)
    return list(st.recent) if st is not None else []


def recommendations_for_user(
    runtime: Runtime,
    state: ServingState,
    user_id: str,
    params: UserRecommendationQuery,
    now: datetime,
) -> RecommendationsPublic:
    """Top products for a known user; an unknown one gets the flagged cold-user fallback."""
    _require_ranker(runtime, params.rerank)
    with state.lock.read():
        query = user_query(
            state.users, user_id, state.fallback, exclude_purchased=not params.include_purchased
        )
        recent = _recent(state.users, user_id)
        got = _retrieve(runtime, state, query, recent, params, now)
    return _answer(runtime, got, query, params, user_id=user_id)


def recommendations_for_session(
    runtime: Runtime,
    state: ServingState,
    body: SessionRecommendationRequest,
    now: datetime,
) -> RecommendationsPublic:
    """Top products for an anonymous session (its products or events, newest first)."""
    _require_ranker(runtime, body.rerank)
    # Untimed entries are spaced a second apart, newest first, so their order counts.
    events = [
        (e.product_id, e.event, e.timestamp or now - timedelta(seconds=i))
        for i, e in enumerate(body.events)
    ]
    offset = len(events)
    events += [
        (pid, EventType.VIEW, now - timedelta(seconds=offset + i))
        for i, pid in enumerate(body.product_ids)
    ]
    with state.lock.read():
        ignored = sorted({e[0] for e in events if e[0] not in state.store})
        session = session_vectors(state.store, events, state.users.config)
        query = session_query(
            session,
            state.fallback,
            exclude_purchased=not body.include_purchased,
            exclude_seen=body.exclude_seen,
        )
        got = _retrieve(runtime, state, query, _recent(session, SESSION_USER), body, now)
    return _answer(runtime, got, query, body, user_id=None, ignored=ignored)


def similar_to_product(
    state: ServingState, product_id: str, params: FilterFields, now: datetime
) -> SimilarProductsPublic:
    """Products nearest a product (itself excluded), through the indexer's
    :func:`~newarrivals.indexer.retrieval.search.similar_products`.

    Raises:
        UnknownProductError: naming the id.
    """
    with state.lock.read():
        candidates = similar_products(state.store, product_id, params.k, search_filter(params, now))
        items = [_similar_item(state, c) for c in candidates]
        version = state.version.version
    return SimilarProductsPublic(product_id=product_id, index_version=version, items=items)


def _similar_item(state: ServingState, c: Candidate) -> SimilarItemPublic:
    p = state.products[c.product_id]
    return SimilarItemPublic(
        product_id=c.product_id, title=p.title, category=p.category_path, score=c.score
    )


def cold_start(
    runtime: Runtime,
    state: ServingState,
    encoded: EncodedProduct,
    *,
    nearest_k: int,
    audience_size: int,
    reach_k: int,
) -> ColdStartPublic:
    """Nearest catalogue products, likeliest users and reach of a new product vector."""
    s = runtime.settings
    vector = encoded.vector
    with state.lock.read():
        nearest = state.store.search(vector[None, :].astype(np.float32), nearest_k)[0]
        items = [_similar_item(state, c) for c in nearest]
        result = state.audience.score(
            vector,
            k=reach_k,
            temperature=s.audience_temperature,
            top=audience_size,
            store=state.store,
            purchased=state.purchased,
        )
        version = state.version.version
    considered = result.users_considered
    return ColdStartPublic(
        index_version=version,
        encoded_from_text=encoded.from_text,
        encoded_from_photo=encoded.from_photo,
        nearest_products=items,
        audience=[
            AudienceUserPublic(
                user_id=u.user_id,
                score=u.score,
                probability=u.probability,
                in_top_k=u.in_top_k,
                rank_if_added=u.rank_if_added,
            )
            for u in result.users
        ],
        reach=ReachPublic(
            k=result.k,
            users_in_top_k=result.reach,
            users_considered=considered,
            share=result.reach / considered if considered else 0.0,
            expected_picks=result.expected_picks,
            temperature=result.temperature,
        ),
    )


def user_profile(state: ServingState, user_id: str) -> UserPublic:
    """What the service holds about a user (right of access)."""
    with state.lock.read():
        st = state.users.state(user_id)
        if st is None:
            return UserPublic(
                user_id=user_id,
                known=False,
                events=0,
                recent_product_ids=[],
                purchased_product_ids=[],
            )
        return UserPublic(
            user_id=user_id,
            known=True,
            events=st.n_events,
            recent_product_ids=list(st.recent),
            purchased_product_ids=sorted(st.purchased),
        )
