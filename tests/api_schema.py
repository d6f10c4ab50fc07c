"""Validate the daemon's real responses against its OpenAPI document (``/api/openapi.json``).

The document's schemas are JSON Schema 2020-12 (OpenAPI 3.1), so jsonschema checks a
body against the response schema of its route, status and content type, with the
document as the root that ``#/components/...`` references resolve in.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def validate_response(
    doc: dict[str, Any],
    path: str,
    method: str,
    status: int,
    body: Any,
    content_type: str = "application/json",
) -> None:
    """Raise jsonschema.ValidationError unless ``body`` is what ``doc`` promises."""
    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path}: status {status} is not documented"
    pointer = "/".join(
        ["#", "paths", _escape(path), method.lower(), "responses", str(status), "content",
         _escape(content_type), "schema"]
    )  # fmt: skip
    validator = Draft202012Validator(
        {**doc, "$ref": pointer}, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    validator.validate(body)


def check_document(doc: dict[str, Any]) -> None:
    """Every schema in the document is itself valid JSON Schema 2020-12."""
    assert doc["openapi"].startswith("3.1.")
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for item in doc["paths"].values():
        for operation in item.values():
            for response in operation["responses"].values():
                for media in response.get("content", {}).values():
                    Draft202012Validator.check_schema(media["schema"])
