"""What the web page needs beyond the API proper: photos, a public status line, a user list."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse

from newarrivals.indexer.errors import UnknownProductError
from newarrivals.service.api.deps import RuntimeDep, StateDep
from newarrivals.service.api.routers._responses import errors
from newarrivals.service.api.schemas import IndexStatusPublic, UserListPublic, UserSummaryPublic

__all__ = ["read_router", "user_list_router"]

read_router = APIRouter(prefix="/v1", tags=["web page"])
user_list_router = APIRouter(prefix="/v1", tags=["users (privacy)"])

ProductId = Annotated[str, Path(min_length=1, max_length=256, examples=["P000001"])]
#: Photo types served; anything else a catalogue points at is not sent.
_PHOTO_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
}
#: The page's "new arrivals" default: products launched in the last this-many days of the
#: catalogue (not of the wall clock: a catalogue may be a snapshot of another year).
NEW_ARRIVAL_DAYS = 30


@read_router.get(
    "/products/{product_id}/photo",
    response_class=FileResponse,
    responses={
        200: {"content": {t: {} for t in sorted(set(_PHOTO_TYPES.values()))}},
        **errors(401, 404, 503),
    },
    summary="A catalogue product's photo",
)
def product_photo(product_id: ProductId, state: StateDep) -> FileResponse:
    """The photo file the catalogue names for this product (404 when it has none)."""
    with state.lock.read():
        product = state.products.get(product_id) if product_id in state.store else None
    if product is None:
        raise UnknownProductError(f"product {product_id!r} is not in the index.")
    path = FsPath(product.image) if product.image else None
    media = _PHOTO_TYPES.get(path.suffix.lower()) if path else None
    if path is None or media is None or not path.is_file():
        raise UnknownProductError(f"product {product_id!r} has no photo file to serve.")
    return FileResponse(path, media_type=media)


@read_router.get(
    "/status",
    response_model=IndexStatusPublic,
    responses=errors(401, 503),
    summary="The served index in one line (public: no manifest details, no user data)",
)
def index_status(state: StateDep, runtime: RuntimeDep) -> IndexStatusPublic:
    manifest = state.version.manifest
    with state.lock.read():
        launches = [p.launched_at for p in state.products.values() if p.launched_at]
        products, users = len(state.store), len(state.users.user_ids())
    newest = max(launches) if launches else None
    image = manifest.encoders.image
    return IndexStatusPublic(
        version=state.version.version,
        products=products,
        users=users,
        built_at=manifest.built_at,
        build_seconds=manifest.stage_seconds,
        image_model=None if image is None else image.model,
        ranker_loaded=runtime.ranker is not None,
        journal_seq=state.applied_seq,
        new_arrivals_after=(newest - timedelta(days=NEW_ARRIVAL_DAYS)).date() if newest else None,
    )


@user_list_router.get(
    "/users",
    response_model=UserListPublic,
    responses=errors(401, 503),
    summary="Known users, most active first (for pickers; user data, so keyed)",
)
def list_users(
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="How many users.")] = 100,
) -> UserListPublic:
    with state.lock.read():
        counts = []
        for user_id in state.users.user_ids():
            st = state.users.state(user_id)
            if st is not None:
                counts.append((st.n_events, len(st.purchased), user_id))
    counts.sort(key=lambda c: (-c[0], c[2]))
    return UserListPublic(
        total=len(counts),
        users=[UserSummaryPublic(user_id=u, events=n, purchases=b) for n, b, u in counts[:limit]],
    )
