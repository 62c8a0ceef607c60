"""Fuzzing the HTTP API (security issue 9): schemathesis generates requests for every operation of
the OpenAPI document the service itself serves, valid and invalid, and sends them with a real
admin key to a real server over SQLite and PostgreSQL. No answer may be a 5xx; every answer must
be one the document declares, with its declared media type and body schema; a request the
document calls invalid must be refused, and one without its key must not be served.

The default run is bounded (`EXAMPLES` valid and as many invalid requests per operation, well
under a minute); `pytest -m fuzz` runs the same checks with many more examples. Each operation
gets its own Hypothesis run (`as_strategy`); schemathesis' pytest loader (`from_fixture`) does not
work with pytest 9.2.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from idcscan.api.auth import new_key
from idcscan.core.db import Client, Role, transaction
from idcscan.core.settings import Settings

from .conftest import KOMBU_NOLOAD, Service

pytestmark = [pytest.mark.integration, KOMBU_NOLOAD]

EXAMPLES = 12
THOROUGH_EXAMPLES = 300
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
    negative_data_rejection,
]
# Far from the small ids the fuzzer favours: revoking or rotating its own key would leave the
# rest of the run to 401s.
FUZZER_CLIENT_ID = 1_987_654_321


@pytest.fixture
def fuzzed(serve: Callable[[Settings], Service], service_settings: Settings) -> Service:
    # Limits high enough that the fuzzer's burst is not answered 429 throughout.
    return serve(
        service_settings.model_copy(
            update={"rate_limit": "100000/minute", "rate_limit_per_address": "100000/minute"}
        )
    )


@pytest.fixture
def fuzzer_key(fuzzed: Service) -> str:
    key, prefix, digest = new_key()
    with transaction(fuzzed.db) as session:
        session.add(
            Client(
                id=FUZZER_CLIENT_ID,
                name="fuzzer",
                key_prefix=prefix,
                key_hash=digest,
                role=Role.ADMIN.value,
            )
        )
    return key


def _described(exc: BaseException) -> str:
    """The failure and, for a group (schemathesis' and Hypothesis' own), each failure in it."""
    if isinstance(exc, BaseExceptionGroup):
        inner = "\n".join(_described(e) for e in exc.exceptions)
        return f"{exc}\n{inner}"
    return f"{type(exc).__name__}: {exc}"


def fuzz(service: Service, key: str, examples: int) -> tuple[list[str], Counter[str]]:
    """Every operation of the served document, with valid and with invalid requests: the
    failures found (each with its operation and the smallest failing request), and how many
    requests each operation got."""
    document = schemathesis.openapi.from_url(service.url + "/openapi.json")
    failures = []
    sent: Counter[str] = Counter()
    for result in document.get_all_operations():
        operation = result.ok()
        sent[operation.label] += 0
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
            )
            def call(case: Case) -> None:
                sent[case.operation.label] += 1
                case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

            try:
                call()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing in it can be made invalid
            except (Exception, FailureGroup) as exc:  # with the request that caused it
                failures.append(f"{operation.label} ({mode.value}): {_described(exc)}")
    return failures, sent


def _fuzzed_everything(service: Service, key: str, examples: int) -> None:
    failures, sent = fuzz(service, key, examples)
    assert not failures, "\n\n".join(failures)
    assert len(sent) >= 18, sorted(sent)  # every documented operation...
    assert min(sent.values()) > 0, sent  # ...was called


def test_every_operation_answers_as_documented(fuzzed: Service, fuzzer_key: str) -> None:
    _fuzzed_everything(fuzzed, fuzzer_key, EXAMPLES)


@pytest.mark.fuzz
@pytest.mark.timeout(3600)
def test_every_operation_answers_as_documented_thoroughly(fuzzed: Service, fuzzer_key: str) -> None:
    _fuzzed_everything(fuzzed, fuzzer_key, THOROUGH_EXAMPLES)
