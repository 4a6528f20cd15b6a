"""The text a cross-encoder reads: the user's context and a candidate, and how pairs are built.

A pair is ``[CLS] context [SEP] candidate [SEP]`` with segment ids 0 then 1 (BERT's
sentence-pair layout, which MiniLM was pre-trained with). The context is tokenised **once
per request** (:func:`encode_context`) and its token ids are reused for every candidate;
each side is truncated to its own token budget, so a long context never crowds out the
candidate's text.

User context text: the recent products, newest first, each as its title plus key
attributes (category leaf, brand, attribute values), joined by `` | ``. Truncating to the
budget therefore drops the oldest products first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from newarrivals.indexer.arrays import I64Array
from newarrivals.indexer.catalog.schema import Product, product_document

__all__ = [
    "PairBatch",
    "TokenizerLike",
    "UserContext",
    "candidate_text",
    "context_item_text",
    "context_text",
    "encode_context",
    "encode_texts",
    "pair_batch",
]

CONTEXT_SEPARATOR = " | "


class TokenizerLike(Protocol):
    """What the builders need from a Hugging Face tokenizer."""

    cls_token_id: int
    sep_token_id: int
    pad_token_id: int

    def __call__(self, text: list[str], **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class UserContext:
    """A user's context, tokenised once per request.

    Attributes:
        text: The context text before truncation.
        token_ids: Its token ids (no special tokens), cut to the context budget.
        product_ids: The products it was built from, newest first.
    """

    text: str
    token_ids: tuple[int, ...]
    product_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class PairBatch:
    """Padded model inputs for a batch of (context, candidate) pairs, ``(n, length)`` each."""

    input_ids: I64Array
    token_type_ids: I64Array
    attention_mask: I64Array

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def context_item_text(product: Product) -> str:
    """One recent product in the context: its title and key attributes, compactly.

    Example:
        >>> context_item_text(Product("p", title="Red tee", category=("Tops", "T-shirt"),
        ...                           brand="Acme", attributes={"colour": "red"}))
        'Red tee (T-shirt, Acme, red)'
    """
    title = product.title.strip()
    keys = [product.category[-1]] if product.category else []
    if product.brand:
        keys.append(product.brand)
    keys.extend(v for _, v in sorted(product.attributes.items()) if v)
    lowered = title.lower()
    keys = [k for k in dict.fromkeys(keys) if k.lower() not in lowered]
    if not title:
        return ", ".join(keys)
    return f"{title} ({', '.join(keys)})" if keys else title


def context_text(recent: Sequence[Product], max_items: int) -> str:
    """The context text of ``recent`` products (newest first), at most ``max_items`` of them."""
    parts = (context_item_text(p) for p in recent[:max_items])
    return CONTEXT_SEPARATOR.join(p for p in parts if p)


def candidate_text(product: Product) -> str:
    """A candidate's text: :func:`product_document` (title, category, brand, attributes,
    description), or, for a product without title and description, what is left of it."""
    document = product_document(product)
    if document:
        return document
    parts = [product.category_path, product.brand]
    parts.extend(f"{k}: {v}" for k, v in sorted(product.attributes.items()) if v)
    return ". ".join(p for p in parts if p)


def encode_texts(tokenizer: TokenizerLike, texts: Sequence[str], budget: int) -> list[list[int]]:
    """Token ids of each text without special tokens, cut to ``budget`` tokens (one call)."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=budget)
    return [list(ids)[:budget] for ids in encoded["input_ids"]]


def encode_context(
    tokenizer: TokenizerLike, recent: Sequence[Product], *, max_items: int, budget: int
) -> UserContext:
    """Tokenise a user's context once: ``recent`` products newest first, cut to ``budget``."""
    text = context_text(recent, max_items)
    ids = encode_texts(tokenizer, [text], budget)[0] if text else []
    return UserContext(
        text=text,
        token_ids=tuple(ids),
        product_ids=tuple(p.product_id for p in recent[:max_items]),
    )


def pair_batch(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> PairBatch:
    """``[CLS] context [SEP] candidate [SEP]`` for each pair, right-padded to the longest."""
    lengths = [len(c) + len(d) + 3 for c, d in pairs]
    width = max(lengths, default=3)
    n = len(pairs)
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    token_type = np.zeros((n, width), dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    for row, ((ctx, cand), length) in enumerate(zip(pairs, lengths, strict=True)):
        first = len(ctx) + 2
        input_ids[row, :length] = [cls_id, *ctx, sep_id, *cand, sep_id]
        token_type[row, first:length] = 1
        mask[row, :length] = 1
    return PairBatch(input_ids=input_ids, token_type_ids=token_type, attention_mask=mask)
