"""GET /openapi.yaml: the OpenAPI 3.1 document of every route, as kept in the package.

The document is ``app/openapi.yaml`` (package data), served byte for byte: nothing is
generated from the routes at run time. ``tests/test_openapi.py`` holds it to the app's
routes, ``tests/fuzz/test_schemathesis.py`` the app's answers to it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from flask import Blueprint, Response

DOCUMENT_PATH = "/openapi.yaml"
# RFC 9512's media type for YAML.
MEDIA_TYPE = "application/yaml"

blueprint = Blueprint("api_doc", __name__)


@cache
def document() -> bytes:
    """The document's bytes, read from the package once per process."""
    return resources.files("app").joinpath("openapi.yaml").read_bytes()


@blueprint.get(DOCUMENT_PATH)
def openapi_document() -> Response:
    """The OpenAPI document (public: it names routes, never a secret)."""
    return Response(document(), mimetype=MEDIA_TYPE)
