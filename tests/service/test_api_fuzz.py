"""Fuzz the OpenAPI schema with schemathesis (bounded examples): no 5xx, documented answers.

Every operation gets a few positive (schema-valid) and negative (schema-breaking) cases;
each response must be a documented status whose body matches its schema, and negative
cases must be refused. (schemathesis' lazy pytest fixture loader does not run under pytest
9, so the operations are driven through their Hypothesis strategies here.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from newarrivals.service.api import ServeSettings, create_app

EXAMPLES = 20

#: Operations with rules JSON Schema cannot state (min_price <= max_price; launched_after
#: or new_within_days, not both; a product needs text or a photo): a schema-valid request
#: may rightly get a 422 there, so "schema-valid data is accepted" is not checked.
CROSS_FIELD_RULES = {
    "GET /v1/users/{user_id}/recommendations",
    "POST /v1/sessions/recommendations",
    "GET /v1/products/{product_id}/similar",
    "PUT /v1/products/{product_id}",
    "POST /v1/cold-start",
    "POST /v1/cold-start/upload",
}


def _fuzz(operation: Any, mode: GenerationMode, api_key: str) -> Callable[[], None]:
    """A Hypothesis test sending ``EXAMPLES`` generated cases of one operation."""
    excluded = [positive_data_acceptance] if operation.label in CROSS_FIELD_RULES else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        # The real key replaces a generated one; a case that leaves the header out
        # (negative mode) is sent without it.
        keyed = case.headers is not None and "X-API-Key" in case.headers
        headers = {"X-API-Key": api_key} if keyed else None
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    return run


def test_the_api_honours_its_schema(
    make_settings: Callable[..., ServeSettings], api_key: str
) -> None:
    app = create_app(make_settings(max_k=20, audience_max_users=10, max_events_per_request=5))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: dict[str, str] = {}
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) >= 14
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, api_key)()
            except Unsatisfiable:
                continue  # nothing to break in an operation without inputs
            except (Exception, BaseExceptionGroup) as exc:  # collect all, then report
                failures[f"{operation.label} ({mode.value})"] = str(exc)[:1500]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
