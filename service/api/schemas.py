"""Request (``*Request``, ``*Query``, ``*Form``) and response (``*Public``) models.

Validation lives here so that a bad value gets a field-level 422 naming the field. Limits
that come from settings (``k``, events per request) are checked by the routes and written
into the OpenAPI document by :func:`newarrivals.service.api.app.create_app`.

JSON bodies are validated strictly (``"5"`` is not an integer, ``0`` is not a boolean), as
the schema says; query strings and form fields are text, so they are converted.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from newarrivals.indexer.catalog.schema import EventType

__all__ = [
    "AudienceUserPublic",
    "ColdStartForm",
    "ColdStartPublic",
    "ColdStartRequest",
    "ErasurePublic",
    "ErrorPublic",
    "EventRequest",
    "EventsAcceptedPublic",
    "EventsRequest",
    "FilterFields",
    "HealthPublic",
    "IndexStatusPublic",
    "ProductDeletedPublic",
    "ProductPublic",
    "ProductUpsertRequest",
    "ProductWrittenPublic",
    "ReachPublic",
    "ReadyPublic",
    "ReasonPublic",
    "RecommendationItemPublic",
    "RecommendationsPublic",
    "ReloadPublic",
    "ReloadQuery",
    "SessionEventRequest",
    "SessionRecommendationRequest",
    "SimilarItemPublic",
    "SimilarProductsPublic",
    "SimilarQuery",
    "UserListPublic",
    "UserPublic",
    "UserRecommendationQuery",
    "UserSummaryPublic",
    "VersionPublic",
    "parse_category",
]

#: Hard ceilings of the schema; the configured limits (settings) are at most these.
K_CEILING = 10_000
EVENTS_CEILING = 100_000

#: Product and user ids are opaque strings (kept exactly as sent).
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ShortText = Annotated[str, StringConstraints(max_length=1_000)]
LongText = Annotated[str, StringConstraints(max_length=20_000)]
Price = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]


def _iso_text(value: object) -> object:
    if isinstance(value, str | datetime):
        return value
    raise ValueError("must be an ISO-8601 date or date-time string, e.g. 2024-04-01")


def _as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


#: A date or date-time given as ISO-8601 text (also inside strict JSON bodies); one without
#: a zone is taken as UTC.
IsoDateTime = Annotated[
    datetime, Field(strict=False), BeforeValidator(_iso_text), AfterValidator(_as_utc)
]
#: An enum value given as its string (also inside strict JSON bodies).
Event = Annotated[EventType, Field(strict=False)]


def parse_category(value: str | list[str] | None) -> tuple[str, ...]:
    """``"Women > Tops"``, ``"Women/Tops"`` or ``["Women", "Tops"]`` -> a path tuple."""
    if value is None:
        return ()
    parts = value if isinstance(value, list) else value.replace("/", ">").split(">")
    return tuple(p.strip() for p in parts if p.strip())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: JSON bodies: unknown fields and wrongly typed values are refused.
_BODY = ConfigDict(extra="forbid", strict=True)


class FilterFields(_Strict):
    """Which products a recommendation may contain (shared by the recommendation routes)."""

    k: int = Field(default=10, ge=1, le=K_CEILING, description="How many products to return.")
    launched_after: IsoDateTime | None = Field(
        default=None,
        description="New arrivals only: launched strictly after this date or time (UTC if "
        "no zone is given).",
        examples=["2024-04-01"],
    )
    new_within_days: int | None = Field(
        default=None,
        ge=1,
        le=3650,
        description="New arrivals only: launched within this many days before now.",
    )
    category: str | None = Field(
        default=None,
        min_length=1,
        max_length=300,
        description="Category path prefix, whole segments, case-insensitive.",
        examples=["Women > Tops"],
    )
    min_price: Price | None = Field(default=None, description="Inclusive lower price bound.")
    max_price: Price | None = Field(default=None, description="Inclusive upper price bound.")
    available_only: bool = Field(
        default=True,
        description="Leave out unavailable products (the default; set false only for "
        "merchandising previews).",
    )
    exclude: list[Identifier] = Field(
        default_factory=list, max_length=1000, description="Product ids never to return."
    )

    @field_validator("category")
    @classmethod
    def _category_has_a_segment(cls, value: str | None) -> str | None:
        if value is not None and not parse_category(value):
            raise ValueError("must name a category path such as 'Women > Tops'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.launched_after is not None and self.new_within_days is not None:
            raise ValueError("give launched_after or new_within_days, not both")
        if (
            self.min_price is not None
            and self.max_price is not None
            and self.min_price > self.max_price
        ):
            raise ValueError(
                f"min_price ({self.min_price}) is greater than max_price ({self.max_price})"
            )
        return self

    def launch_cutoff(self, now: datetime) -> datetime | None:
        if self.new_within_days is not None:
            return now - timedelta(days=self.new_within_days)
        return self.launched_after


class UserRecommendationQuery(FilterFields):
    """Query parameters of ``GET /v1/users/{user_id}/recommendations``."""

    rerank: bool = Field(default=False, description="Re-score candidates with the ranker.")
    include_purchased: bool = Field(
        default=False, description="Allow products the user already bought."
    )


class SimilarQuery(FilterFields):
    """Query parameters of ``GET /v1/products/{product_id}/similar``."""


class ReloadQuery(_Strict):
    """Query parameters of ``POST /v1/admin/reload``."""

    force: bool = Field(
        default=False, description="Reload even when the newest version is the one served."
    )


class SessionEventRequest(_Strict):
    model_config = _BODY

    product_id: Identifier
    event: Event = EventType.VIEW
    timestamp: IsoDateTime | None = Field(
        default=None, description="When it happened; default: list order, newest first."
    )


class SessionRecommendationRequest(FilterFields):
    """An anonymous visitor's recent products (or events) and the same filters."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"product_ids": ["P000012", "P000007"], "k": 5, "launched_after": "2024-04-01"},
                {"events": [{"product_id": "P000012", "event": "cart"}], "k": 5},
            ]
        },
    )

    product_ids: list[Identifier] = Field(
        default_factory=list, max_length=200, description="Recently viewed, newest first."
    )
    events: list[SessionEventRequest] = Field(
        default_factory=list, max_length=200, description="Recent events, newest first."
    )
    rerank: bool = False
    include_purchased: bool = False
    exclude_seen: bool = Field(default=True, description="Leave out the session's own products.")


class ProductFields(_Strict):
    """A product's descriptive fields (what the encoders read)."""

    model_config = _BODY

    title: ShortText = ""
    description: LongText = ""
    category: Annotated[list[ShortText], Field(max_length=20)] | ShortText | None = Field(
        default=None, examples=["Women > Tops > T-shirt"]
    )
    brand: ShortText = ""
    price: Price | None = None
    attributes: dict[Annotated[str, StringConstraints(max_length=100)], ShortText] = Field(
        default_factory=dict, max_length=100, examples=[{"colour": "red", "material": "linen"}]
    )


class ProductUpsertRequest(ProductFields):
    """A product to add or overwrite; encoded and searchable by the next request."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "title": "Red linen shirt",
                    "description": "A relaxed shirt in washed linen.",
                    "category": "Men > Shirts > Shirt",
                    "brand": "Marlow & Finch",
                    "price": 49.0,
                    "attributes": {"colour": "red", "material": "linen"},
                    "launched_at": "2024-05-02T09:00:00Z",
                    "available": True,
                }
            ]
        },
    )

    launched_at: IsoDateTime | None = None
    available: bool = True
    image_base64: str | None = Field(
        default=None, description="The product photo, base64 (standard alphabet)."
    )


class _ColdStartOptions(_Strict):
    nearest_k: int = Field(default=10, ge=1, le=K_CEILING, description="Catalogue neighbours.")
    audience_size: int = Field(
        default=10, ge=1, le=10_000, description="Users to list, most likely first."
    )
    reach_k: int = Field(
        default=10, ge=1, le=1000, description="Reach counts users whose top reach_k it enters."
    )


class ColdStartRequest(ProductFields, _ColdStartOptions):
    """A brand-new product (not necessarily in the catalogue): its text and optional photo."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "title": "Red linen shirt",
                    "category": "Men > Shirts > Shirt",
                    "attributes": {"colour": "red"},
                    "audience_size": 5,
                }
            ]
        },
    )

    image_base64: str | None = Field(default=None, description="Photo, base64.")


class ColdStartForm(_ColdStartOptions):
    """The multipart form of a cold-start lookup (the photo is the ``photo`` file part)."""

    # A form model's extra setting covers the file parts too: "forbid" would refuse the photo.
    model_config = ConfigDict(extra="ignore")

    title: ShortText = ""
    description: LongText = ""
    category: ShortText | None = None
    brand: ShortText = ""
    price: Price | None = None
    attributes: str | None = Field(
        default=None, max_length=20_000, description="A JSON object of strings."
    )

    @field_validator("attributes")
    @classmethod
    def _json_object(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            data = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"must be a JSON object of strings ({exc.msg})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError('must be a JSON object of strings, e.g. {"colour": "red"}')
        return value

    def attribute_map(self) -> dict[str, str]:
        return {} if self.attributes is None else dict(json.loads(self.attributes))


class EventRequest(_Strict):
    model_config = _BODY

    user_id: Identifier
    product_id: Identifier
    event: Event
    timestamp: IsoDateTime | None = Field(default=None, description="Default: now.")


class EventsRequest(_Strict):
    """Events to journal and fold into their users' vectors."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {"user_id": "U00001", "product_id": "P000012", "event": "view"},
                        {"user_id": "U00001", "product_id": "P000012", "event": "purchase"},
                    ]
                }
            ]
        },
    )

    events: list[EventRequest] = Field(min_length=1, max_length=EVENTS_CEILING)


# ------------------------------------------------------------------------------ responses


class ErrorPublic(BaseModel):
    detail: str


class ReasonPublic(BaseModel):
    """Why a product was recommended: the recent product it is closest to."""

    closest_recent_product_id: str
    closest_recent_title: str
    similarity: float
    text: str


class RecommendationItemPublic(BaseModel):
    product_id: str
    title: str
    category: str
    price: float | None
    launched_at: datetime | None
    retrieval_score: float = Field(
        description="The first stage's score: the inner product with the query vector "
        "(retrieval 'mean', and every cold-user fallback), or the late-fusion score, a mean "
        "of per-modality z-scores (retrieval 'late-max')."
    )
    ranker_probability: float | None = Field(
        description="The cross-encoder's softmax probability over the re-ranked list; null "
        "when not re-ranked."
    )
    blend_probability: float | None = Field(
        default=None,
        description="Softmax probability over the re-ranked list of the blend (the ranker's "
        "score with the retrieval stage's signals, fitted by listwise likelihood); the list "
        "is in this order when set, null when the blend is not applied.",
    )
    reason: ReasonPublic | None


class RecommendationsPublic(BaseModel):
    user_id: str | None
    fallback: bool = Field(description="True when the cold-user fallback answered.")
    fallback_reason: str | None
    reranked: bool
    reranked_by: Literal["blend", "ranker"] | None = Field(
        default=None,
        description="What ordered a re-ranked list: the blend (when it holds for the served "
        "index) or the ranker's probabilities alone; null when not re-ranked or empty.",
    )
    index_version: str
    items: list[RecommendationItemPublic]
    ignored_product_ids: list[str] = Field(
        default_factory=list, description="Session products that are not indexed."
    )


class SimilarItemPublic(BaseModel):
    product_id: str
    title: str
    category: str
    score: float


class SimilarProductsPublic(BaseModel):
    product_id: str
    index_version: str
    items: list[SimilarItemPublic]


class AudienceUserPublic(BaseModel):
    user_id: str
    score: float = Field(description="The retrieval score the product would get for them.")
    probability: float = Field(
        description="Softmax share among the user's top reach_k plus this product."
    )
    in_top_k: bool
    rank_if_added: int


class ReachPublic(BaseModel):
    k: int
    users_in_top_k: int = Field(description="Users whose top k it would enter.")
    users_considered: int
    share: float
    expected_picks: float = Field(description="Sum of the users' probabilities.")
    temperature: float


class ColdStartPublic(BaseModel):
    index_version: str
    encoded_from_text: bool
    encoded_from_photo: bool
    nearest_products: list[SimilarItemPublic]
    audience: list[AudienceUserPublic]
    reach: ReachPublic


class ProductPublic(BaseModel):
    product_id: str
    title: str
    description: str
    category: str
    brand: str
    price: float | None
    attributes: dict[str, str]
    launched_at: datetime | None
    available: bool


class ProductWrittenPublic(BaseModel):
    product_id: str
    seq: int = Field(description="Journal sequence number of the write.")
    index_size: int


class ProductDeletedPublic(BaseModel):
    product_id: str
    seq: int
    index_size: int


class EventsAcceptedPublic(BaseModel):
    accepted: int
    last_seq: int


class UserPublic(BaseModel):
    user_id: str
    known: bool
    events: int
    recent_product_ids: list[str]
    purchased_product_ids: list[str]


class ErasurePublic(BaseModel):
    user_id: str
    erased: bool = Field(description="Whether anything of the user's was held.")
    journal_rows_deleted: int


class ReloadPublic(BaseModel):
    swapped: bool
    previous_version: str
    current_version: str
    seconds: float
    replayed_entries: int


class VersionPublic(BaseModel):
    version: str
    path: str
    loaded_at: datetime
    products: int
    users: int
    journal_seq: int
    ranker_loaded: bool
    ranker_note: str | None = Field(
        default=None,
        description="Set when the order rerank=true uses (blend or ranker alone) ordered the "
        "ranker's holdout lists worse than retrieval did: re-ranking is likely to lower "
        "quality.",
    )
    retrieval: Literal["mean", "late-max"] = Field(
        default="mean", description="The first stage of recommendations (NEWARRIVALS_RETRIEVAL)."
    )
    rerank_order: Literal["blend", "ranker"] | None = Field(
        default=None,
        description="What orders a re-ranked list on this version; null without a ranker.",
    )
    rerank_note: str | None = Field(
        default=None, description="Why the ranker's blend is not applied to this version."
    )
    manifest: dict[str, Any]


class HealthPublic(BaseModel):
    status: str


class ReadyPublic(BaseModel):
    status: str
    version: str | None = None
    detail: str | None = None


class IndexStatusPublic(BaseModel):
    """The served index for the web page's status panel (public: no user data)."""

    version: str
    products: int
    users: int
    built_at: datetime | None
    build_seconds: float = Field(description="Sum of the build's stage times.")
    image_model: str | None
    ranker_loaded: bool
    journal_seq: int = Field(description="Last journal entry applied.")
    new_arrivals_after: date | None = Field(
        description="A default 'new arrivals' date: 30 days before the newest launch."
    )


class UserSummaryPublic(BaseModel):
    user_id: str
    events: int
    purchases: int


class UserListPublic(BaseModel):
    total: int
    users: list[UserSummaryPublic]
