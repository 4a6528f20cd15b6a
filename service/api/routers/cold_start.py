"""Cold-start lookups: a brand-new product's neighbours, likeliest users and reach."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from PIL import Image

from newarrivals.indexer.catalog.schema import Product
from newarrivals.service.api import queries
from newarrivals.service.api.deps import RuntimeDep, SettingsDep, StateDep, check_limit
from newarrivals.service.api.live import Runtime
from newarrivals.service.api.photos import decode_base64_photo, decode_uploaded_photo
from newarrivals.service.api.routers._responses import errors
from newarrivals.service.api.schemas import (
    ColdStartForm,
    ColdStartPublic,
    ColdStartRequest,
    parse_category,
)
from newarrivals.service.api.settings import ServeSettings
from newarrivals.service.api.state import ServingState

__all__ = ["router"]

router = APIRouter(prefix="/v1/cold-start", tags=["cold start"])


def _check(settings: ServeSettings, nearest_k: int, audience: int, reach_k: int) -> None:
    check_limit(("body", "nearest_k"), nearest_k, settings.max_k, "NEWARRIVALS_MAX_K")
    check_limit(
        ("body", "audience_size"),
        audience,
        settings.audience_max_users,
        "NEWARRIVALS_AUDIENCE_MAX_USERS",
    )
    check_limit(("body", "reach_k"), reach_k, settings.audience_max_k, "NEWARRIVALS_AUDIENCE_MAX_K")


def _answer(
    runtime: Runtime,
    state: ServingState,
    product: Product,
    photo: Image.Image | None,
    *,
    nearest_k: int,
    audience_size: int,
    reach_k: int,
) -> ColdStartPublic:
    encoded = runtime.encode(state, product, photo)
    return queries.cold_start(
        runtime,
        state,
        encoded,
        nearest_k=nearest_k,
        audience_size=audience_size,
        reach_k=reach_k,
    )


@router.post(
    "",
    response_model=ColdStartPublic,
    responses=errors(400, 401, 413, 503),
    summary="Who would want a new product (JSON, optional base64 photo)",
)
def cold_start_json(
    body: ColdStartRequest, runtime: RuntimeDep, state: StateDep, settings: SettingsDep
) -> ColdStartPublic:
    """Encodes the product as the index would (nothing is stored) and returns its nearest
    catalogue products, the users most likely to want it with probabilities, and its
    reach: how many users' top ``reach_k`` it would enter."""
    _check(settings, body.nearest_k, body.audience_size, body.reach_k)
    _, photo = decode_base64_photo(
        body.image_base64, loc=("body", "image_base64"), max_pixels=settings.max_image_pixels
    )
    product = Product(
        product_id="cold-start",
        title=body.title,
        description=body.description,
        category=parse_category(body.category),
        brand=body.brand,
        price=body.price,
        attributes=dict(body.attributes),
    )
    return _answer(
        runtime,
        state,
        product,
        photo,
        nearest_k=body.nearest_k,
        audience_size=body.audience_size,
        reach_k=body.reach_k,
    )


@router.post(
    "/upload",
    response_model=ColdStartPublic,
    responses=errors(400, 401, 413, 503),
    summary="Who would want a new product (multipart upload with a photo)",
)
def cold_start_upload(
    form: Annotated[ColdStartForm, Form()],
    runtime: RuntimeDep,
    state: StateDep,
    settings: SettingsDep,
    photo: Annotated[UploadFile | None, File(description="The product photo.")] = None,
) -> ColdStartPublic:
    """The same lookup as ``POST /v1/cold-start``, with the photo as a file part."""
    _check(settings, form.nearest_k, form.audience_size, form.reach_k)
    image = None
    if photo is not None:
        image = decode_uploaded_photo(
            photo.file.read(), loc=("body", "photo"), max_pixels=settings.max_image_pixels
        )
    product = Product(
        product_id="cold-start",
        title=form.title,
        description=form.description,
        category=parse_category(form.category),
        brand=form.brand,
        price=form.price,
        attributes=form.attribute_map(),
    )
    return _answer(
        runtime,
        state,
        product,
        image,
        nearest_k=form.nearest_k,
        audience_size=form.audience_size,
        reach_k=form.reach_k,
    )
