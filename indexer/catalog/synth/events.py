"""Simulate shoppers with hidden tastes and their history of views, carts and purchases.

:func:`generate` ties the generator together: products, tastes, events, ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from newarrivals.indexer.arrays import F64Array, I64Array
from newarrivals.indexer.catalog.schema import Catalog, EventType, Interaction, Product
from newarrivals.indexer.catalog.synth.config import (
    SECONDS_PER_DAY,
    STREAM_EVENTS,
    STREAM_PRODUCTS,
    STREAM_USERS,
    SynthConfig,
    random_stream,
)
from newarrivals.indexer.catalog.synth.products import make_products
from newarrivals.indexer.catalog.synth.truth import GroundTruth, SyntheticCatalog
from newarrivals.indexer.catalog.synth.vocabulary import (
    APPEAL_SD,
    TASTE_ATTRIBUTES,
    TASTE_SMOOTHING,
    attribute_values,
)

__all__ = ["generate"]


def _make_tastes(config: SynthConfig, rng: np.random.Generator) -> dict[str, F64Array]:
    """Per attribute, an ``(n_users, n_values)`` matrix of taste probabilities."""
    tastes = {}
    for attribute in TASTE_ATTRIBUTES:
        k = len(attribute_values(attribute))
        raw = rng.dirichlet(np.full(k, config.taste_concentration), size=config.n_users)
        tastes[attribute] = (1.0 - TASTE_SMOOTHING) * raw + TASTE_SMOOTHING / k
    return tastes


def _attribute_indices(products: Sequence[Product]) -> dict[str, I64Array]:
    out = {}
    for attribute in TASTE_ATTRIBUTES:
        position = {v: i for i, v in enumerate(attribute_values(attribute))}
        out[attribute] = np.array(
            [position[p.attributes[attribute]] for p in products], dtype=np.int64
        )
    return out


@dataclass(frozen=True, slots=True)
class _Pool:
    """Products sorted by launch, with launch offsets, for prefix sampling by time."""

    order: I64Array
    launch: I64Array

    @classmethod
    def of(cls, indices: I64Array, launch_s: I64Array) -> _Pool:
        order = indices[np.argsort(launch_s[indices], kind="stable")]
        return cls(order, launch_s[order])

    def sample(self, weights: F64Array, times: F64Array, rng: np.random.Generator) -> I64Array:
        """For each time, a product launched by then, drawn ∝ weight; -1 where none exists.

        A cumulative sum over launch order turns "launched by t" into a prefix, so each
        draw is a binary search instead of a renormalised softmax per event.
        """
        if len(self.order) == 0:
            return np.full(len(times), -1, dtype=np.int64)
        cum = np.cumsum(weights[self.order])
        k = np.searchsorted(self.launch, times, side="right")
        totals = cum[np.maximum(k - 1, 0)]
        pos = np.searchsorted(cum, rng.random(len(times)) * totals, side="right")
        chosen = self.order[np.minimum(pos, np.maximum(k - 1, 0))]
        return np.where(k > 0, chosen, -1).astype(np.int64)


def _simulate_user(
    config: SynthConfig,
    utility: F64Array,
    old: _Pool,
    new: _Pool,
    rng: np.random.Generator,
) -> list[tuple[float, int, EventType]]:
    """One shopper's events as (seconds from start, product index, event type)."""
    total_s = config.n_days * SECONDS_PER_DAY
    cutoff_s = (config.n_days - config.holdout_days) * SECONDS_PER_DAY
    events_per_view = 1.0 + config.cart_rate * (1.0 + config.purchase_rate)
    # Gamma-mixed Poisson: a few heavy shoppers and many light ones, as in real logs.
    rate = config.events_per_user / events_per_view * rng.gamma(2.0, 0.5)
    n_views = max(1, int(rng.poisson(rate)))
    times = np.sort(rng.uniform(0.0, total_s, size=n_views))

    weights = np.exp((utility - utility.max()) / config.temperature)
    from_old = old.sample(weights, times, rng)
    from_new = new.sample(weights, times, rng)
    want_new = (times >= cutoff_s) & (rng.random(n_views) < config.new_arrival_share)
    chosen = np.where(want_new & (from_new >= 0), from_new, from_old)

    carted = rng.random(n_views) < config.cart_rate
    bought = carted & (rng.random(n_views) < config.purchase_rate)
    cart_delay = rng.uniform(60.0, 1800.0, size=n_views)
    buy_delay = rng.uniform(60.0, 3600.0, size=n_views)
    last = float(total_s - 1)
    events: list[tuple[float, int, EventType]] = []
    for j in np.flatnonzero(chosen >= 0):
        t, p = float(times[j]), int(chosen[j])
        events.append((t, p, EventType.VIEW))
        if carted[j]:
            t_cart = min(t + cart_delay[j], last)
            events.append((t_cart, p, EventType.CART))
            if bought[j]:
                events.append((min(t_cart + buy_delay[j], last), p, EventType.PURCHASE))
    return events


def _simulate_events(
    config: SynthConfig,
    products: Sequence[Product],
    launch_s: I64Array,
    new_idx: I64Array,
    tastes: Mapping[str, F64Array],
    appeal: F64Array,
    user_ids: Sequence[str],
    rng: np.random.Generator,
) -> list[Interaction]:
    is_new = np.zeros(len(products), dtype=bool)
    is_new[new_idx] = True
    old = _Pool.of(np.flatnonzero(~is_new).astype(np.int64), launch_s)
    new = _Pool.of(new_idx, launch_s)
    index = _attribute_indices(products)
    log_tastes = {a: np.log(tastes[a]) for a in TASTE_ATTRIBUTES}

    interactions = []
    for u, user_id in enumerate(user_ids):
        utility = appeal + sum(log_tastes[a][u][index[a]] for a in TASTE_ATTRIBUTES)
        for seconds, p, event in _simulate_user(config, utility, old, new, rng):
            interactions.append(
                Interaction(
                    user_id=user_id,
                    product_id=products[p].product_id,
                    event=event,
                    timestamp=config.start + timedelta(seconds=math.floor(seconds)),
                )
            )
    interactions.sort(key=lambda e: (e.timestamp, e.user_id))
    return interactions


def generate(config: SynthConfig) -> SyntheticCatalog:
    """Generate the catalogue, shoppers and history in memory (photos are not drawn yet).

    Args:
        config: What to generate; the same config always gives identical output.

    Returns:
        The catalogue (products and interactions) and its ground truth.

    Example:
        >>> synth = generate(SynthConfig(n_products=40, n_users=3, seed=7))
        >>> {e.event.value for e in synth.catalog.interactions} <= {"view", "cart", "purchase"}
        True
    """
    products, launch_s, new_idx = make_products(config, random_stream(config.seed, STREAM_PRODUCTS))
    user_rng = random_stream(config.seed, STREAM_USERS)
    tastes = _make_tastes(config, user_rng)
    appeal = user_rng.normal(0.0, APPEAL_SD, size=config.n_products)
    width = max(5, len(str(config.n_users)))
    user_ids = [f"U{u + 1:0{width}d}" for u in range(config.n_users)]
    interactions = _simulate_events(
        config,
        products,
        launch_s,
        new_idx,
        tastes,
        appeal,
        user_ids,
        random_stream(config.seed, STREAM_EVENTS),
    )
    truth = GroundTruth(
        config=config,
        cutoff=config.cutoff,
        new_arrival_ids=tuple(products[i].product_id for i in new_idx),
        user_tastes={
            user_id: {
                a: {v: float(tastes[a][u, k]) for k, v in enumerate(attribute_values(a))}
                for a in TASTE_ATTRIBUTES
            }
            for u, user_id in enumerate(user_ids)
        },
        product_attributes={p.product_id: dict(p.attributes) for p in products},
        product_appeal={p.product_id: float(appeal[i]) for i, p in enumerate(products)},
    )
    return SyntheticCatalog(
        catalog=Catalog(products=products, interactions=interactions), truth=truth
    )
