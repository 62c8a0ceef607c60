"""Hostile labels files sent through a real HTTP server: refused with a fixed 422, no job row and
no file left, the service still answering."""

from __future__ import annotations

import pytest

from tests.conftest import SAMPLE_SVS
from tests.hostile import deeply_nested_json

from .conftest import KOMBU_NOLOAD, Service, refused

pytestmark = [pytest.mark.integration, KOMBU_NOLOAD]


@pytest.mark.parametrize(
    ("labels", "what"),
    [
        (deeply_nested_json(100_000), "deeply nested JSON"),
        (b'{"type": "FeatureCollection", "features": 5}', "features not a list"),
        (b'{"type": "FeatureCollection", "features": [{"properties": [1]}]}', "properties"),
        (
            b'{"type": "Feature", "properties": {"classification": {"name": "IDC"}}, '
            b'"geometry": {"type": "Polygon", "coordinates": [[[1, 2], 3]]}}',
            "a ring holding a number",
        ),
        (
            b'{"type": "Feature", "properties": {"classification": {"name": "IDC"}}, '
            b'"geometry": {"type": "Polygon", "coordinates": [[[1]]]}}',
            "a position of one number",
        ),
        (
            b'{"type": "Feature", "properties": {"classification": {"name": "IDC"}}, '
            b'"geometry": [1]}',
            "a geometry that is a list",
        ),
        (b"x,y,label\n,,1\n", "a CSV row with no position"),
        (b"row,col,label\n" + b"1" * 200_000 + b",2,1\n", "an over-long CSV field"),
        (b'\xef\xbb\xbf{"type": "Feature"', "truncated JSON"),
        (b"row,col,label\n1,2,\xff\n", "a CSV that is not UTF-8"),
    ],
)
def test_malformed_labels_are_a_4xx(service: Service, labels: bytes, what: str) -> None:
    """L2: labels that raised RecursionError, AttributeError or KeyError are a fixed 422."""
    files = {"labels": ("labels.json", labels)}
    response = service.submit(service.add_client(), SAMPLE_SVS, files=files)
    refused(service, response, 422, "bad-labels")
