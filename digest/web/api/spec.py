"""The API's operations, declared once: each view is registered with its route, the
scope it needs and pydantic models for its query, body and responses. The same models
check the requests and build the OpenAPI 3.1 document (pydantic's JSON Schema is JSON
Schema 2020-12, which OpenAPI 3.1 uses), so the document and the behaviour cannot drift.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_origin

from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from digest.operations.api_tokens import SCOPES, allows
from digest.operations.problems import MEDIA_TYPE, TITLES, Problem
from digest.store.base import MAX_ID

bp = Blueprint("api", __name__, url_prefix="/api/v1")
VERSION = "1.0.0"
_PARAM = re.compile(r"\{(\w+)\}")
# Media types a response may have that is not a JSON model.
Body = type[BaseModel] | str


@dataclass
class Operation:
    method: str
    path: str
    endpoint: str
    need: str
    summary: str
    tag: str
    description: str = ""
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    raw_body: tuple[str, ...] = ()
    responses: dict[int, Body] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    links: dict[int, dict[str, Any]] = field(default_factory=dict)


OPERATIONS: list[Operation] = []


class FieldError(BaseModel):
    field: str
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details: every error of the API has this shape."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[FieldError] | None = None


def _problem_of(exc: ValidationError, where: str) -> Problem:
    errors = []
    for error in exc.errors(include_url=False, include_input=False):
        # A query parameter is named alone (`status`, not `status.0` for a repeated one).
        path = error["loc"][:1] if where == "query" else error["loc"]
        loc = ".".join(str(p) for p in path) or where
        errors.append({"field": loc, "message": str(error["msg"])})
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return Problem(400, detail or f"{where}: not valid", errors)


def _check_query_names(model: type[BaseModel] | None) -> None:
    """Unknown query parameters are a 400 that names them (a typo must not pass)."""
    known = set(model.model_fields) if model is not None else set()
    unknown = sorted(set(request.args) - known)
    if unknown:
        name = unknown[0][:40]
        raise Problem(
            400,
            f"{name}: no such query parameter",
            [{"field": name, "message": "no such query parameter"}],
        )


def _query(model: type[BaseModel]) -> BaseModel:
    """The query string as the model: a list field takes every value of a repeated
    parameter (`?status=a&status=b`); any other field given twice is a 400."""
    values: dict[str, Any] = request.args.to_dict()
    for name, info in model.model_fields.items():
        given = request.args.getlist(name)
        if get_origin(info.annotation) is list:
            if given:
                values[name] = given
        elif len(given) > 1:
            message = "give it once"
            raise Problem(400, f"{name}: {message}", [{"field": name, "message": message}])
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise _problem_of(exc, "query") from None


def _body(model: type[BaseModel]) -> BaseModel:
    if request.mimetype != "application/json":
        raise Problem(415, "send the body as application/json")
    try:
        return model.model_validate_json(request.get_data() or b"")
    except ValidationError as exc:
        raise _problem_of(exc, "body") from None


def operation(
    method: str,
    path: str,
    *,
    need: str,
    summary: str,
    tag: str,
    responses: dict[int, Body],
    query: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    raw_body: tuple[str, ...] = (),
    errors: tuple[int, ...] = (),
    links: dict[int, dict[str, Any]] | None = None,
    max_bytes: int | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a view as an API operation (route, scope, models, document entry)."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        from digest.web.api.auth import require

        op = Operation(
            method=method,
            path=path,
            endpoint=view.__name__,
            need=need,
            summary=summary,
            tag=tag,
            description=(view.__doc__ or "").strip(),
            query=query,
            body=body,
            raw_body=raw_body,
            responses=responses,
            errors=errors,
            links=links or {},
        )

        @functools.wraps(view)
        def wrapper(**kwargs: Any) -> Any:
            if max_bytes is not None:
                request.max_content_length = max_bytes  # above the app's 64 KiB for forms
            g.api_token = require(need)
            for name, value in kwargs.items():
                if not 0 < value <= MAX_ID:
                    raise Problem(404, f"no such {name.removesuffix('_id')}: {value}")
            _check_query_names(query)
            if query is not None:
                kwargs["query"] = _query(query)
            if body is not None:
                kwargs["body"] = _body(body)
            result = view(**kwargs)
            if isinstance(result, Response):
                return result
            payload, status = result if isinstance(result, tuple) else (result, 200)
            if isinstance(payload, BaseModel):
                payload = payload.model_dump(mode="json")
            return jsonify(payload), status

        rule = _PARAM.sub(r"<int:\1>", path)
        bp.add_url_rule(rule, endpoint=view.__name__, view_func=wrapper, methods=[method])
        OPERATIONS.append(op)
        return wrapper

    return decorate


def _parameters(op: Operation, schemas: dict[Any, Any]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        }
        for name in _PARAM.findall(op.path)
    ]
    if op.query is not None:
        schema = op.query.model_json_schema(mode="validation")
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            prop = dict(prop)
            description = prop.pop("description", None)
            prop.pop("title", None)
            deprecated = prop.pop("deprecated", False)
            param = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if description:
                param["description"] = description
            if deprecated:
                param["deprecated"] = True
            params.append(param)
    return params


def _content(body: Body, refs: dict[Any, Any], mode: str) -> dict[str, Any]:
    if isinstance(body, str):
        return {body: {"schema": {"type": "string"}}}
    return {"application/json": {"schema": refs[(body, mode)]}}


def document(base_path: str = "/api/v1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every registered operation."""
    models: list[tuple[type[BaseModel], Any]] = [(ProblemDetails, "serialization")]
    for op in OPERATIONS:
        if op.body is not None:
            models.append((op.body, "validation"))
        models += [(m, "serialization") for m in op.responses.values() if not isinstance(m, str)]
    refs, defs = models_json_schema(
        list(dict.fromkeys(models)), ref_template="#/components/schemas/{model}"
    )
    problem = {MEDIA_TYPE: {"schema": refs[(ProblemDetails, "serialization")]}}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {}
        for status, body in op.responses.items():
            entry: dict[str, Any] = {"description": _describe(status), "content": {}}
            entry["content"] = _content(body, refs, "serialization")
            if status in op.links:
                entry["links"] = op.links[status]
            responses[str(status)] = entry
        codes = {401, 403, 429, 400, 404, *op.errors}
        if op.body is not None or op.raw_body:
            codes |= {413, 415}
        for code in sorted(codes):
            responses[str(code)] = {"description": TITLES[code], "content": problem}
        scopes = [scope for scope in SCOPES if allows(scope, op.need)]
        entry = {
            "operationId": op.endpoint,
            "summary": op.summary,
            "tags": [op.tag],
            "parameters": _parameters(op, refs),
            "responses": responses,
            "security": [{"bearer": []}],
            "x-token-scopes": scopes,
        }
        entry["description"] = (op.description + "\n\n" if op.description else "") + (
            "Token scopes: " + ", ".join(f"`{scope}`" for scope in scopes) + "."
        )
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": _content(op.body, refs, "validation"),
            }
        elif op.raw_body:
            entry["requestBody"] = {
                "required": True,
                "content": {m: {"schema": {"type": "string"}} for m in op.raw_body},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "digest API",
            "version": VERSION,
            "description": (
                "The JSON API of digest for the publisher's own site and systems. Send a "
                "token as `Authorization: Bearer <token>`; make one with "
                "`digest api-tokens add NAME --scope read|write|subscribe`. Errors are "
                "RFC 9457 problem details (application/problem+json)."
            ),
        },
        "servers": [{"url": base_path}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _describe(status: int) -> str:
    return {200: "OK", 201: "Created", 202: "Accepted"}.get(status, "OK")
