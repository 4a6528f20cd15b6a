"""Products: read one, similar products (read routes); upsert and delete (write routes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.errors import UnknownProductError
from newarrivals.service.api import queries
from newarrivals.service.api.deps import ClockDep, RuntimeDep, SettingsDep, StateDep, check_limit
from newarrivals.service.api.photos import decode_base64_photo
from newarrivals.service.api.routers._responses import errors
from newarrivals.service.api.schemas import (
    ProductDeletedPublic,
    ProductPublic,
    ProductUpsertRequest,
    ProductWrittenPublic,
    SimilarProductsPublic,
    SimilarQuery,
    parse_category,
)

__all__ = ["read_router", "write_router"]

read_router = APIRouter(prefix="/v1/products", tags=["products"])
write_router = APIRouter(prefix="/v1/products", tags=["products (write)"])

ProductId = Annotated[str, Path(min_length=1, max_length=256, examples=["P000001"])]


@read_router.get(
    "/{product_id}",
    response_model=ProductPublic,
    responses=errors(401, 404, 503),
    summary="One product's metadata",
)
async def get_product(product_id: ProductId, state: StateDep) -> ProductPublic:
    with state.lock.read():
        product = state.products.get(product_id) if product_id in state.store else None
    if product is None:
        raise UnknownProductError(f"product {product_id!r} is not in the index.")
    return ProductPublic(
        product_id=product.product_id,
        title=product.title,
        description=product.description,
        category=product.category_path,
        brand=product.brand,
        price=product.price,
        attributes=dict(product.attributes),
        launched_at=product.launched_at,
        available=product.available,
    )


@read_router.get(
    "/{product_id}/similar",
    response_model=SimilarProductsPublic,
    responses=errors(401, 404, 503),
    summary="Products similar to a product",
)
async def similar_products(
    product_id: ProductId,
    params: Annotated[SimilarQuery, Query()],
    state: StateDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> SimilarProductsPublic:
    """The products nearest this one in the product space (itself excluded)."""
    # On the event loop, like a recommendation without re-ranking: one search.
    check_limit(("query", "k"), params.k, settings.max_k, "NEWARRIVALS_MAX_K")
    return queries.similar_to_product(state, product_id, params, clock())


@write_router.put(
    "/{product_id}",
    response_model=ProductWrittenPublic,
    responses=errors(400, 401, 413, 503),
    summary="Add or overwrite a product",
)
def upsert_product(
    product_id: ProductId,
    body: ProductUpsertRequest,
    runtime: RuntimeDep,
    settings: SettingsDep,
) -> ProductWrittenPublic:
    """Encodes the product (text and optional photo) as the index version would, journals
    it durably and indexes it: it is searchable by the next request. An unavailable
    product is kept but never recommended."""
    photo_bytes, photo = decode_base64_photo(
        body.image_base64, loc=("body", "image_base64"), max_pixels=settings.max_image_pixels
    )
    product = Product(
        product_id=product_id,
        title=body.title,
        description=body.description,
        category=parse_category(body.category),
        brand=body.brand,
        price=body.price,
        attributes=dict(body.attributes),
        launched_at=body.launched_at,
        available=body.available,
    )
    seq = runtime.upsert_product(product, photo, photo_bytes)
    return ProductWrittenPublic(
        product_id=product_id, seq=seq, index_size=len(runtime.require_state().store)
    )


@write_router.delete(
    "/{product_id}",
    response_model=ProductDeletedPublic,
    responses=errors(401, 404, 503),
    summary="Delist a product",
)
def delete_product(product_id: ProductId, runtime: RuntimeDep) -> ProductDeletedPublic:
    """Removes the product from the index (durably): it is never recommended again."""
    seq = runtime.delete_product(product_id)
    return ProductDeletedPublic(
        product_id=product_id, seq=seq, index_size=len(runtime.require_state().store)
    )
