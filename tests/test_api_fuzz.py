"""Schemathesis against the API's own OpenAPI document, over HTTP to the running app.

For every operation (the endless live stream aside, which `test_api.py` covers) it generates
valid and invalid parameters and bodies and checks: no 5xx, every response conforms to the
documented schema, status code and content type.  As admin (who may call everything) and as
a partner (who must get 404s, not errors, for what is not its own).

The operations are driven through hypothesis directly (``operation.as_strategy()``), so the
run does not depend on schemathesis' pytest plugin.
"""

from __future__ import annotations

import pytest
import schemathesis
from api_system import ApiSystem
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
SKIP = {"/api/v1/live/stream"}  # endless by design


@pytest.mark.parametrize("who", ["admin", "partner:novo"])
def test_api_conforms_to_its_schema(api_system: ApiSystem, who: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_system.base_url}/openapi.json")
    headers = api_system.headers(who)
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in SKIP:
            continue
        tested += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=api_system.base_url, headers=headers, checks=CHECKS, timeout=60
            )

        try:
            fuzz()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert tested >= 15, f"only {tested} operations found in the OpenAPI document"
    assert not failures, "\n\n".join(failures)
