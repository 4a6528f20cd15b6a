"""The cold-start split: train on the past, rank the items that had no past for each user.

Given a catalogue and a cutoff moment:

* **train** = every interaction strictly before the cutoff (all event types);
* **cold items** = products whose first interaction is on or after the cutoff. A product
  with no interaction at all is cold when its ``launched_at`` is on or after the cutoff
  (a new arrival nobody has touched yet still has to be ranked); a product with neither is
  not an item of this split;
* **test** = interactions on or after the cutoff, whose event is one of ``test_events``,
  with a cold item, by a user who had at least one train interaction (a user with no past
  is a different problem: nothing personal is known about them);
* **truth** = the *set* of cold items each test user had a test event with: a repeated
  purchase (H&M stores quantity as repeated rows) counts once.

On the H&M sample (cutoff 2020-06-22, purchases) this gives 2,110 cold items, 428 test
customers and 2,316 truth pairs, as ``shared/data/hm/README.md`` states.

**Same-product users.** A user whose truth holds another variant of a product they had
before (H&M: the same 7-digit ``product_code``, ``article_id[:7]``) is easy to serve by
matching the product code; a method can look strong on "cold start" only because of them.
The split marks them (``same_product_users``) so results are also reported without them.
How a product's code is found is :class:`SameProductRule`: ``none`` (synthetic data: there
are no variants), ``id-prefix:N`` (the first N characters of the id; H&M is
``id-prefix:7``) or ``attribute:KEY`` (a generic-schema attribute such as ``product_code``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from newarrivals.indexer.catalog.schema import Catalog, EventType, Interaction, Product
from newarrivals.indexer.errors import ConfigError

__all__ = ["ColdStartSplit", "SameProductRule", "parse_cutoff", "parse_events", "split_catalog"]

_ID_PREFIX = "id-prefix:"
_ATTRIBUTE = "attribute:"


def parse_cutoff(value: str | date | datetime) -> datetime:
    """A cutoff as a timezone-aware UTC moment; a date means midnight UTC of that day.

    Raises:
        ConfigError: the string is not an ISO date or datetime.
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConfigError(
                f"cutoff must be an ISO date like 2020-06-22 (or an ISO datetime), got {value!r}."
            ) from None
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_events(value: str | Iterable[str | EventType]) -> tuple[EventType, ...]:
    """Event types from ``"purchase,cart"``, ``"all"`` or an iterable; sorted, strongest last.

    Raises:
        ConfigError: an unknown event name, or none at all.
    """
    names: list[str | EventType]
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return tuple(EventType)
        names = [part.strip() for part in value.split(",") if part.strip()]
    else:
        names = list(value)
    events: set[EventType] = set()
    for name in names:
        try:
            events.add(EventType(name))
        except ValueError:
            raise ConfigError(
                f"unknown event type {name!r}; choose from "
                f"{', '.join(e.value for e in EventType)} (comma-separated) or 'all'."
            ) from None
    if not events:
        raise ConfigError(f"at least one test event type is needed, got {value!r}.")
    order = list(EventType)
    return tuple(sorted(events, key=order.index))


@dataclass(frozen=True)
class SameProductRule:
    """How to tell that two products are variants of one product.

    Args:
        spec: ``"none"``, ``"id-prefix:N"`` (H&M: ``"id-prefix:7"``) or ``"attribute:KEY"``.

    Example:
        >>> SameProductRule("id-prefix:7").code(Product("0111565001"))
        '0111565'
    """

    spec: str = "none"

    def __post_init__(self) -> None:
        spec = self.spec.strip()
        object.__setattr__(self, "spec", spec)
        if spec == "none":
            return
        if spec.startswith(_ID_PREFIX):
            digits = spec[len(_ID_PREFIX) :]
            if digits.isdigit() and int(digits) > 0:
                return
        elif spec.startswith(_ATTRIBUTE) and spec[len(_ATTRIBUTE) :].strip():
            return
        raise ConfigError(
            f"same-product rule must be 'none', 'id-prefix:N' (N > 0) or 'attribute:KEY'; "
            f"got {self.spec!r}."
        )

    def code(self, product: Product) -> str | None:
        """The product's code under this rule; ``None`` when it has none."""
        if self.spec.startswith(_ID_PREFIX):
            return product.product_id[: int(self.spec[len(_ID_PREFIX) :])]
        if self.spec.startswith(_ATTRIBUTE):
            return product.attributes.get(self.spec[len(_ATTRIBUTE) :]) or None
        return None


@dataclass(frozen=True)
class ColdStartSplit:
    """The split of one catalogue at one cutoff (see the module docstring for the rules).

    ``history`` holds each test user's train interactions, oldest first; ``truth`` the set
    of cold items each test user must find. Both are keyed by the users in ``test_users``
    (sorted), and ``cold_ids`` is sorted, so the split is the same however rows were ordered.
    """

    cutoff: datetime
    test_events: tuple[EventType, ...]
    train: tuple[Interaction, ...]
    cold_ids: tuple[str, ...]
    test_users: tuple[str, ...]
    history: Mapping[str, tuple[Interaction, ...]]
    truth: Mapping[str, frozenset[str]]
    same_product_users: frozenset[str]
    n_test_events: int
    same_product_rule: SameProductRule = field(default_factory=SameProductRule)

    @property
    def n_truth_pairs(self) -> int:
        return sum(len(items) for items in self.truth.values())

    def truth_indices(self) -> list[frozenset[int]]:
        """Each test user's truth as positions in ``cold_ids``, in ``test_users`` order."""
        position = {pid: i for i, pid in enumerate(self.cold_ids)}
        return [frozenset(position[p] for p in self.truth[u]) for u in self.test_users]

    def summary(self) -> dict[str, object]:
        """Counts for the report and the README check."""
        return {
            "cutoff": self.cutoff.isoformat(),
            "test_events": [e.value for e in self.test_events],
            "train_interactions": len(self.train),
            "cold_items": len(self.cold_ids),
            "test_users": len(self.test_users),
            "test_events_count": self.n_test_events,
            "truth_pairs": self.n_truth_pairs,
            "same_product_users": len(self.same_product_users),
            "same_product_rule": self.same_product_rule.spec,
        }


def split_catalog(
    catalog: Catalog,
    cutoff: str | date | datetime,
    *,
    test_events: Sequence[EventType] = (EventType.PURCHASE,),
    same_product: SameProductRule | None = None,
) -> ColdStartSplit:
    """Split a catalogue at ``cutoff`` into train history, cold items and per-user truth.

    Args:
        catalog: products and interactions (interaction order does not matter).
        cutoff: the first moment of the test period (a date is midnight UTC).
        test_events: which post-cutoff events make an item relevant to a user (H&M:
            purchases; the synthetic catalogue defaults to purchases and carts).
        same_product: how to find variants of one product (default: no rule).

    Returns:
        The split; it may have no test users (then there is nothing to evaluate).

    Raises:
        ConfigError: ``test_events`` is empty.
    """
    moment = parse_cutoff(cutoff)
    events = parse_events(test_events)
    rule = same_product or SameProductRule()
    relevant = frozenset(events)

    first_seen: dict[str, datetime] = {}
    for item in catalog.interactions:
        seen = first_seen.get(item.product_id)
        if seen is None or item.timestamp < seen:
            first_seen[item.product_id] = item.timestamp
    products = {p.product_id: p for p in catalog.products}
    cold: set[str] = {pid for pid, seen in first_seen.items() if seen >= moment}
    cold.update(
        p.product_id
        for p in catalog.products
        if p.product_id not in first_seen and p.launched_at is not None and p.launched_at >= moment
    )

    train = sorted(
        (item for item in catalog.interactions if item.timestamp < moment),
        key=lambda item: (item.timestamp, item.user_id, item.product_id),
    )
    history: dict[str, list[Interaction]] = defaultdict(list)
    for item in train:
        history[item.user_id].append(item)

    truth: dict[str, set[str]] = defaultdict(set)
    n_test_events = 0
    for item in catalog.interactions:
        if (
            item.timestamp >= moment
            and item.event in relevant
            and item.product_id in cold
            and item.user_id in history
        ):
            truth[item.user_id].add(item.product_id)
            n_test_events += 1

    test_users = tuple(sorted(truth))
    same_product_users = frozenset(
        user for user in test_users if _has_same_product(rule, products, history[user], truth[user])
    )
    return ColdStartSplit(
        cutoff=moment,
        test_events=events,
        train=tuple(train),
        cold_ids=tuple(sorted(cold)),
        test_users=test_users,
        history={user: tuple(history[user]) for user in test_users},
        truth={user: frozenset(truth[user]) for user in test_users},
        same_product_users=same_product_users,
        n_test_events=n_test_events,
        same_product_rule=rule,
    )


def _has_same_product(
    rule: SameProductRule,
    products: Mapping[str, Product],
    past: Sequence[Interaction],
    future: Iterable[str],
) -> bool:
    if rule.spec == "none":
        return False

    def code(product_id: str) -> str | None:
        product = products.get(product_id)
        # An id-prefix rule needs no product row (H&M ids carry the code).
        return rule.code(product if product is not None else Product(product_id))

    past_codes = {c for item in past if (c := code(item.product_id)) is not None}
    return any(code(pid) in past_codes for pid in future)
