"""What every ranker shares, whatever runs its forward pass (torch or ONNX Runtime).

:class:`Ranker` is the small interface serving relies on (``encode_context`` then
``rank``); :func:`newarrivals.ranker.load_ranker` returns one whatever the artifact holds.
:class:`PairRanker` implements it once: the user context is tokenised once per request,
each candidate's token ids come from a per-product cache (:class:`CandidateTokenCache`,
filled at load with :meth:`PairRanker.warm_cache` or on first use), every candidate is
scored in **one** batched forward pass, and the raw scores ``z`` become a softmax over the
list, ``p_i = exp(z_i / T) / sum_j exp(z_j / T)``. Subclasses only provide
:meth:`PairRanker.score_batch`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from newarrivals.indexer.arrays import F64Array
from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.errors import ConfigError, NewArrivalsError, UnknownProductError
from newarrivals.indexer.index.filters import Candidate
from newarrivals.indexer.validation import require_int
from newarrivals.ranker.config import RankerConfig
from newarrivals.ranker.context import (
    PairBatch,
    TokenizerLike,
    UserContext,
    candidate_text,
    encode_context,
    encode_texts,
    pair_batch,
)

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "CandidateTokenCache",
    "PairRanker",
    "Ranker",
    "RankingInputError",
    "ScoredCandidate",
    "softmax",
]

#: Products whose candidate token ids a ranker keeps (about 75 MB at 24 tokens each).
DEFAULT_CACHE_SIZE: Final = 200_000


class RankingInputError(NewArrivalsError, ValueError):
    """A ranking request cannot be scored (e.g. an empty or duplicated candidate list)."""


@dataclass(frozen=True)
class ScoredCandidate:
    """One re-ranked candidate.

    Attributes:
        product_id: The product.
        probability: Its softmax probability over the request's candidate list.
        raw_score: The cross-encoder's logit ``z`` (before the temperature).
        retrieval_score: The retrieval stage's score it arrived with.
    """

    product_id: str
    probability: float
    raw_score: float
    retrieval_score: float


def softmax(scores: npt.ArrayLike, temperature: float = 1.0) -> F64Array:
    """A numerically stable softmax of ``scores / temperature`` over the last axis."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: F64Array = e / e.sum(axis=-1, keepdims=True)
    return out


@runtime_checkable
class Ranker(Protocol):
    """What serving needs from a ranker, whichever runtime scores the pairs.

    Example:
        >>> ranker = load_ranker(Path("artifacts/ranker"))  # doctest: +SKIP
        >>> context = ranker.encode_context([products["p1"], products["p7"]])  # doctest: +SKIP
        >>> ranked = ranker.rank(context, candidates, products)  # doctest: +SKIP
    """

    @property
    def config(self) -> RankerConfig: ...

    @property
    def temperature(self) -> float: ...

    def encode_context(self, recent: Sequence[Product]) -> UserContext: ...

    def warm_cache(self, products: Iterable[Product]) -> int: ...

    def rank(
        self,
        context: UserContext,
        candidates: Sequence[Candidate],
        products: Mapping[str, Product],
    ) -> list[ScoredCandidate]: ...


class CandidateTokenCache:
    """Candidate token ids per product, bounded (least recently used out), thread-safe.

    An entry remembers a hash of the text it was made from, so a product whose text
    changed (a catalogue refresh) is tokenised again instead of served stale.

    Args:
        tokenizer: The ranker's tokenizer.
        budget: Candidate token budget.
        max_size: Products kept; ``0`` disables caching (every lookup tokenises).
        lock: Serialises tokenizer calls (Hugging Face fast tokenizers refuse concurrent
            calls with different truncation settings); shared with the context encoder.
    """

    def __init__(
        self,
        tokenizer: TokenizerLike,
        budget: int,
        max_size: int = DEFAULT_CACHE_SIZE,
        *,
        lock: threading.Lock | None = None,
    ) -> None:
        require_int("max_size", max_size, minimum=0)
        self._tokenizer = tokenizer
        self._budget = budget
        self._max_size = max_size
        # product id -> (hash of its text, token ids as int32: ~4x smaller than a tuple)
        self._entries: OrderedDict[str, tuple[int, npt.NDArray[np.int32]]] = OrderedDict()
        self._lock = lock or threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def max_size(self) -> int:
        return self._max_size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def token_ids(self, products: Sequence[Product]) -> list[tuple[int, ...]]:
        """Each product's candidate token ids (no special tokens), cut to the budget."""
        texts = [candidate_text(p) for p in products]
        out: list[tuple[int, ...] | None] = [None] * len(products)
        missing: list[int] = []
        with self._lock:
            for i, (product, text) in enumerate(zip(products, texts, strict=True)):
                entry = self._entries.get(product.product_id)
                if entry is not None and entry[0] == hash(text):
                    self._entries.move_to_end(product.product_id)
                    out[i] = tuple(entry[1].tolist())
                else:
                    missing.append(i)
            self.hits += len(products) - len(missing)
            self.misses += len(missing)
            if missing:
                # One tokenizer call for all misses.
                encoded = encode_texts(self._tokenizer, [texts[i] for i in missing], self._budget)
                for i, ids in zip(missing, encoded, strict=True):
                    token_ids = tuple(ids)
                    out[i] = token_ids
                    if self._max_size:
                        packed = np.asarray(token_ids, dtype=np.int32)
                        self._entries[products[i].product_id] = (hash(texts[i]), packed)
                        self._entries.move_to_end(products[i].product_id)
                while len(self._entries) > self._max_size:
                    self._entries.popitem(last=False)
        return [ids for ids in out if ids is not None]

    def warm(self, products: Iterable[Product], chunk: int = 4096) -> int:
        """Tokenise ``products`` into the cache ahead of requests; returns how many."""
        batch: list[Product] = []
        count = 0
        for product in products:
            batch.append(product)
            if len(batch) == chunk:
                count += len(self.token_ids(batch))
                batch = []
        if batch:
            count += len(self.token_ids(batch))
        return count


class PairRanker(ABC):
    """Shared request path of the cross-encoder rankers (see the module docstring).

    Args:
        tokenizer: A Hugging Face tokenizer (the model's vocabulary).
        config: Token budgets and context size.
        temperature: Softmax temperature ``T`` (fitted on validation lists).
        cache_size: Products whose candidate token ids are kept (0 disables the cache).
    """

    def __init__(
        self,
        tokenizer: Any,
        config: RankerConfig,
        *,
        temperature: float = 1.0,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._tokenizer = tokenizer
        self._config = config
        self.temperature = temperature
        self._tokenizer_lock = threading.Lock()
        self._cache = CandidateTokenCache(
            tokenizer, config.candidate_tokens, cache_size, lock=self._tokenizer_lock
        )

    # -- properties -----------------------------------------------------------------

    @property
    def config(self) -> RankerConfig:
        return self._config

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def token_cache(self) -> CandidateTokenCache:
        return self._cache

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not np.isfinite(value)
            or value <= 0
        ):
            raise ConfigError(f"temperature must be a finite number > 0, got {value!r}.")
        self._temperature = float(value)

    # -- text -----------------------------------------------------------------------

    def encode_context(self, recent: Sequence[Product]) -> UserContext:
        """Tokenise a user's context once per request (``recent`` newest first)."""
        with self._tokenizer_lock:
            return encode_context(
                self._tokenizer,
                recent,
                max_items=self._config.max_context_items,
                budget=self._config.context_tokens,
            )

    def encode_candidates(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of candidate texts, cut to the candidate budget (not cached)."""
        with self._tokenizer_lock:
            return encode_texts(self._tokenizer, texts, self._config.candidate_tokens)

    def candidate_token_ids(self, products: Sequence[Product]) -> list[tuple[int, ...]]:
        """Candidate token ids of ``products`` through the per-product cache."""
        return self._cache.token_ids(products)

    def warm_cache(self, products: Iterable[Product]) -> int:
        """Tokenise a catalogue's products once, at load, so requests only look them up.

        Returns:
            How many products were processed.
        """
        return self._cache.warm(products)

    def pairs(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> PairBatch:
        """Model inputs for (context ids, candidate ids) pairs."""
        tok = self._tokenizer
        return pair_batch(
            pairs, cls_id=tok.cls_token_id, sep_id=tok.sep_token_id, pad_id=tok.pad_token_id
        )

    # -- scoring --------------------------------------------------------------------

    @abstractmethod
    def score_batch(self, batch: PairBatch) -> F64Array:
        """Raw scores ``(len(batch),)`` of a prepared batch (inference, no autograd)."""

    def raw_scores(self, context: UserContext, candidate_ids: Sequence[Sequence[int]]) -> F64Array:
        """Raw scores of one request: the context's pairs with each candidate, one pass.

        Subclasses that can share the context's computation across candidates override it.
        """
        return self.score_batch(self.pairs([(context.token_ids, c) for c in candidate_ids]))

    def score(self, context: UserContext, candidate_texts: Sequence[str]) -> F64Array:
        """Raw scores of each candidate text for this context: one batched forward pass.

        Raises:
            RankingInputError: when there is no candidate.
        """
        if not candidate_texts:
            raise RankingInputError(
                "the candidate list is empty; pass the retrieval stage's candidates "
                "(at least one) to score."
            )
        return self.raw_scores(context, self.encode_candidates(candidate_texts))

    def rank(
        self,
        context: UserContext,
        candidates: Sequence[Candidate],
        products: Mapping[str, Product],
    ) -> list[ScoredCandidate]:
        """Re-order retrieval candidates with softmax probabilities over the list.

        Args:
            context: The user's context from :meth:`encode_context`.
            candidates: The retrieval stage's candidates (ids and retrieval scores).
            products: The catalogue, to read each candidate's text.

        Returns:
            The candidates, most probable first (ties keep the retrieval order); the
            probabilities sum to 1.

        Raises:
            RankingInputError: for an empty list or a product listed twice.
            UnknownProductError: naming a candidate that is not in ``products``.
        """
        if not candidates:
            raise RankingInputError(
                "the candidate list is empty; retrieve candidates for the user first "
                "(retrieve_for_user or recommend_for_user) and pass at least one."
            )
        seen: set[str] = set()
        found: list[Product] = []
        for c in candidates:
            if c.product_id in seen:
                raise RankingInputError(
                    f"product {c.product_id!r} is listed twice among the candidates; "
                    "deduplicate the candidate list."
                )
            seen.add(c.product_id)
            product = products.get(c.product_id)
            if product is None:
                raise UnknownProductError(
                    f"candidate product {c.product_id!r} is not in the catalogue passed to "
                    "rank(); pass the catalogue the index was built from."
                )
            found.append(product)
        raw = self.raw_scores(context, self.candidate_token_ids(found))
        probs = softmax(raw, self.temperature)
        order = np.argsort(-probs, kind="stable")
        return [
            ScoredCandidate(
                product_id=candidates[i].product_id,
                probability=float(probs[i]),
                raw_score=float(raw[i]),
                retrieval_score=float(candidates[i].score),
            )
            for i in order.tolist()
        ]
