"""The OpenAPI document (app/openapi.yaml): valid OpenAPI 3.1, exactly the app's routes,
served as kept. The answers' conformance is fuzzed in tests/fuzz/test_schemathesis.py."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from openapi_spec_validator import OpenAPIV31SpecValidator

from app import create_app

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "app" / "openapi.yaml"
# Flask adds HEAD to every GET route, and OPTIONS unless a view says not to (the webhooks
# do: OPTIONS is their 405); neither is an operation of its own.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
_CONVERTER = re.compile(r"<(?:[a-z]+:)?([A-Za-z_][A-Za-z0-9_]*)>")


def load_document() -> dict[str, Any]:
    return yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))


def every_route_on(make_settings: Callable[..., Any], redis: Any) -> Flask:
    """The app with every optional route registered: both mParticle routes and the admin."""
    return create_app(make_settings(
        {"customerio": {"dry_run": True}},
        MPARTICLE_WEBHOOK_AUTHORIZATION="Bearer openapi-test-authorization",
        MPARTICLE_AUDIENCE_ACCESS_KEY="openapi-test-firehose-access-key",
    ), redis_client=redis)


def app_operations(app: Flask) -> set[tuple[str, str]]:
    """(METHOD, OpenAPI path) of every URL rule: ``<path:x>`` and ``<x>`` read ``{x}``."""
    operations = set()
    for rule in app.url_map.iter_rules():
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        for method in (rule.methods or set()) - IMPLICIT_METHODS:
            operations.add((method, path))
    return operations


def document_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {(method.upper(), path) for path, item in document["paths"].items()
            for method in item if method in methods}


def test_the_document_is_valid_openapi_3_1() -> None:
    document = load_document()
    assert document["openapi"].startswith("3.1.")
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
              for error in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []


def test_the_document_has_every_route_and_no_other(
    make_settings: Callable[..., Any], redis: Any
) -> None:
    app = every_route_on(make_settings, redis)
    in_app = app_operations(app)
    documented = document_operations(load_document())
    assert sorted(in_app - documented) == [], "routes the document does not describe"
    assert sorted(documented - in_app) == [], "operations the app does not serve"


def test_path_parameters_are_named_as_in_the_routes() -> None:
    for path, item in load_document()["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for method, operation in item.items():
            declared = {parameter["name"] for parameter in operation.get("parameters", [])
                        if parameter.get("in") == "path"}
            assert declared == names, f"{method.upper()} {path}"


def test_every_operation_has_an_id_and_documents_its_answers() -> None:
    ids = []
    for path, item in load_document()["paths"].items():
        for method, operation in item.items():
            ids.append(operation["operationId"])
            assert operation["responses"], f"{method.upper()} {path}"
    assert len(ids) == len(set(ids))


def test_the_admin_api_documents_its_refusals() -> None:
    """Bearer auth; 401, 429 with Retry-After, 404 when the admin is off."""
    document = load_document()
    for path, item in document["paths"].items():
        if not path.startswith("/admin/") or path.startswith("/admin/console") or path == "/admin/":
            continue
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            assert operation["security"] == [{"adminBearer": []}], where
            assert {"401", "404", "429"} <= set(operation["responses"]), where
    locked_out = document["components"]["responses"]["AdminLockedOut"]
    assert locked_out["headers"]["Retry-After"] == {"$ref": "#/components/headers/RetryAfter"}


@pytest.mark.parametrize("path", ["/webhooks/customerio", "/webhooks/mparticle",
                                  "/webhooks/mparticle/audiences"])
def test_the_webhooks_answer_405_to_other_methods_as_documented(
    make_settings: Callable[..., Any], redis: Any, path: str
) -> None:
    """The 405 the document lists for each webhook (never the POST's answer) is real."""
    client = every_route_on(make_settings, redis).test_client()
    documented = load_document()["paths"][path]["post"]["responses"]
    assert "405" in documented
    for method in ("GET", "PUT", "OPTIONS"):
        response = client.open(path, method=method)
        assert response.status_code == 405, method
        assert set(response.get_json()) == {"error", "details"}
        assert response.headers["Allow"] == "POST"


def test_the_app_serves_the_document_as_kept(client: Any) -> None:
    response = client.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.mimetype == "application/yaml"
    assert response.get_data() == DOCUMENT.read_bytes()


def test_the_document_is_packaged_with_the_app() -> None:
    """A non-editable install ships it too (the blueprint reads it as package data)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "openapi.yaml" in pyproject["tool"]["setuptools"]["package-data"]["app"]
