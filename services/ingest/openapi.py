"""The OpenAPI 3.1 document of ingest's HTTP side, served at /v1/openapi.json.

The paths are written here; the schemas of the JSON bodies come from the protobuf messages
themselves (their descriptors), as protobuf's JSON mapping writes them with the options
http_routes uses: field names as in the .proto, enums by name, int64 as strings, Timestamps
as RFC 3339 strings, every field without presence always written (so `required`), message
fields only when set."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from imgpipe.v1 import ingest_pb2

Schema = dict[str, Any]

TIMESTAMP = "google.protobuf.Timestamp"
RESPONSES = (
    ingest_pb2.SubmitResponse,
    ingest_pb2.GetStatusResponse,
    ingest_pb2.WatchStatusResponse,
    ingest_pb2.CancelResponse,
    ingest_pb2.GetWebhookSecretsResponse,
    ingest_pb2.RotateWebhookSecretResponse,
)
_SCALARS: dict[int, Schema] = {
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _name(descriptor: Any) -> str:
    """Schema names: the message's name, nested ones prefixed (WebhookDelivery.State)."""
    return str(descriptor.full_name).removeprefix("imgpipe.v1.")


def message_schemas(messages: tuple[Any, ...] = RESPONSES) -> dict[str, Schema]:
    """Schemas of the messages and of every message and enum they use, by name."""
    schemas: dict[str, Schema] = {}
    todo: list[Descriptor] = [m.DESCRIPTOR for m in messages]
    while todo:
        descriptor = todo.pop()
        if _name(descriptor) in schemas:
            continue
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for field in descriptor.fields:
            schema, used = _field_schema(field)
            todo += used
            for enum in [field.enum_type] if field.enum_type is not None else []:
                schemas[_name(enum)] = {"type": "string", "enum": list(enum.values_by_name)}
            properties[field.name] = schema
            if not field.has_presence:
                required.append(field.name)
        schemas[_name(descriptor)] = {
            "type": "object",
            "properties": properties,
            "required": required,
        }
    return dict(sorted(schemas.items()))


def _field_schema(field: FieldDescriptor) -> tuple[Schema, list[Descriptor]]:
    used: list[Descriptor] = []
    if field.message_type is not None and field.message_type.full_name == TIMESTAMP:
        schema: Schema = {"type": "string", "format": "date-time"}
    elif field.message_type is not None:
        schema = _ref(_name(field.message_type))
        used.append(field.message_type)
    elif field.enum_type is not None:
        schema = _ref(_name(field.enum_type))
    elif field.type in _SCALARS:
        schema = dict(_SCALARS[field.type])
    else:
        raise TypeError(f"{field.full_name}: no JSON schema for protobuf type {field.type}")
    if field.is_repeated:
        schema = {"type": "array", "items": schema}
    return schema, used


ERROR_SCHEMA: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {
                    "type": "string",
                    "description": "The gRPC status code's name, as gRPC would answer.",
                    "examples": ["INVALID_ARGUMENT", "NOT_FOUND"],
                },
                "message": {"type": "string"},
                "field_violations": {
                    "type": "array",
                    "description": "google.rpc.BadRequest's field violations, one per problem.",
                    "items": {
                        "type": "object",
                        "required": ["field", "description"],
                        "properties": {
                            "field": {"type": "string", "examples": ["csv.row[3].serial_number"]},
                            "description": {"type": "string"},
                        },
                    },
                },
            },
        }
    },
}

_ERRORS = {
    400: "Invalid argument: a bad CSV, option or request id (`field_violations` name each).",
    401: "A valid `Authorization: Bearer TOKEN` is required.",
    404: "No such request (or not one of this token's).",
    409: "The request's state does not allow it (ALREADY_EXISTS or FAILED_PRECONDITION).",
    413: "The CSV, or the whole body, is larger than the limit.",
    429: "Too many calls from this caller; try again after `Retry-After` seconds.",
    503: "Temporarily unavailable (database, storage, shutting down); try again.",
}


_ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
}


def _errors(*statuses: int) -> dict[str, Schema]:
    return {
        str(status): {
            "description": _ERRORS[status],
            "content": {"application/json": {"schema": _ref("Error")}},
            **({"headers": _ERROR_HEADERS[status]} if status in _ERROR_HEADERS else {}),
        }
        for status in statuses
    }


def _json(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(description: str, media_type: str) -> Schema:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


SSE_EVENT: Schema = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The sequence."},
        "event": {"const": "status"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": _ref("WatchStatusResponse"),
        },
    },
}
REQUEST_ID: Schema = {
    "name": "request_id",
    "in": "path",
    "required": True,
    "description": "The request's id, a UUID.",
    "schema": {"type": "string", "format": "uuid"},
}
_OPTION_PROPERTIES: dict[str, Schema] = {
    "webhook_url": {
        "type": "string",
        "description": "An absolute http(s) URL, called with a POST once the request is done.",
    },
    "quality": {
        "type": "integer",
        "minimum": 0,
        "maximum": 95,
        "description": "JPEG quality 1-95; 0 or absent: the default, 50.",
    },
    "idempotency_key": {
        "type": "string",
        "maxLength": 256,
        "description": "The same key with the same CSV and options returns the same request.",
    },
}
OPEN: list[Schema] = []  # `security` of the routes anyone may call
EXAMPLE_CSV = (
    "S. No.,Product Name,Input Image Urls\r\n"
    '1,Trail Running Shoe,"https://cdn.example/shoe-front.jpg, '
    'https://cdn.example/shoe-side.jpg"\r\n'
    "2,Ceramic Mug,https://cdn.example/mug.jpg\r\n"
)


def _submit(operation_id: str, summary: str) -> Schema:
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": "Either a multipart form with the CSV in `file`, or the CSV as the "
        "body (`text/csv`, e.g. `curl --data-binary @products.csv -H 'Content-Type: "
        "text/csv'`) with the options as query parameters. All or nothing: a bad CSV stores "
        "nothing and is answered 400 with one field violation per problem.",
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in _OPTION_PROPERTIES.items()
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            **_OPTION_PROPERTIES,
                        },
                        "additionalProperties": False,
                    },
                    "example": {"file": EXAMPLE_CSV, "quality": 50},
                },
                "text/csv": {"schema": {"type": "string"}, "example": EXAMPLE_CSV},
            },
        },
        "responses": {
            "202": {
                **_json("Accepted: the request is queued.", _ref("SubmitResponse")),
                "links": {
                    name: {
                        "operationId": operation,
                        "parameters": {"request_id": "$response.body#/request_id"},
                    }
                    for name, operation in (
                        ("GetStatus", "getStatus"),
                        ("WatchStatus", "watchStatus"),
                        ("GetResultCsv", "getResultCsv"),
                        ("Cancel", "cancel"),
                        ("DeleteRequest", "deleteRequest"),
                    )
                },
                "headers": {
                    "Location": {
                        "description": "The request's status: /v1/requests/{request_id}.",
                        "schema": {"type": "string"},
                    }
                },
            },
            **_errors(400, 401, 409, 413, 429, 503),
        },
    }


def _get_status(operation_id: str, summary: str, parameter: Schema) -> Schema:
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [
            parameter,
            {
                "name": "page_size",
                "in": "query",
                "required": False,
                "description": "Most images in the answer (0 or none: 1,000).",
                "schema": {"type": "integer", "minimum": 0, "maximum": 10_000},
            },
            {
                "name": "page_token",
                "in": "query",
                "required": False,
                "description": "next_page_token of the previous answer.",
                "schema": {"type": "string"},
            },
        ],
        "responses": {
            "200": _json("The request's status.", _ref("GetStatusResponse")),
            **_errors(400, 401, 404, 503),
        },
    }


def _page_file(operation_id: str, summary: str, content_type: str) -> Schema:
    return {
        "operationId": operation_id,
        "summary": summary,
        "security": OPEN,
        "responses": {"200": _text(summary, content_type)},
    }


COMPAT = "Compatibility route of the Express services imgpipe replaces: an alias of "


def _paths(objects: bool) -> dict[str, Schema]:
    paths: dict[str, Schema] = {
        "/v1/requests": {
            "post": _submit(
                "submit", "Submit a CSV of products and image URLs (IngestService.Submit)."
            )
        },
        "/v1/requests/{request_id}": {
            "get": _get_status(
                "getStatus",
                "A request's state, progress, products and images, a page at a time "
                "(IngestService.GetStatus).",
                REQUEST_ID,
            ),
            "delete": {
                "operationId": "deleteRequest",
                "summary": "Delete a request: cancel it if it is running, delete its rows and "
                "every object it stored (IngestService.DeleteRequest).",
                "description": "Afterwards the request is 404, and so is deleting it again.",
                "parameters": [REQUEST_ID],
                "responses": {
                    "204": {"description": "Deleted."},
                    **_errors(400, 401, 404, 503),
                },
            },
        },
        "/v1/webhook-secrets": {
            "get": {
                "operationId": "getWebhookSecrets",
                "summary": "The caller's webhook signing secrets, the current one first "
                "(IngestService.GetWebhookSecrets).",
                "responses": {
                    "200": _json("The secrets.", _ref("GetWebhookSecretsResponse")),
                    **_errors(401, 503),
                },
            }
        },
        "/v1/webhook-secrets/rotate": {
            "post": {
                "operationId": "rotateWebhookSecret",
                "summary": "A new current webhook secret; the replaced one keeps signing for "
                "the overlap (IngestService.RotateWebhookSecret).",
                "parameters": [
                    {
                        "name": "overlap_seconds",
                        "in": "query",
                        "required": False,
                        "description": "How long the replaced secret keeps signing "
                        "(default 86400, at most 30 days).",
                        "schema": {"type": "number", "minimum": 0, "maximum": 2592000},
                    }
                ],
                "responses": {
                    "200": _json("The secrets.", _ref("RotateWebhookSecretResponse")),
                    **_errors(400, 401, 409, 503),
                },
            }
        },
        "/upload": {"post": _submit("upload", COMPAT + "POST /v1/requests.")},
        "/status": {
            "get": _get_status(
                "getStatusByQuery",
                COMPAT + "GET /v1/requests/{request_id}.",
                {**REQUEST_ID, "in": "query"},
            )
        },
        "/status/{request_id}": {
            "get": _get_status(
                "getStatusByPath", COMPAT + "GET /v1/requests/{request_id}.", REQUEST_ID
            )
        },
        "/": {"get": _page_file("page", "The web page: upload a CSV, watch it.", "text/html")},
        "/ui/page.css": {"get": _page_file("pageStyle", "The page's style sheet.", "text/css")},
        "/ui/page.js": {
            "get": _page_file("pageScript", "The page's script (a module).", "text/javascript")
        },
        "/v1/requests/{request_id}/cancel": {
            "post": {
                "operationId": "cancel",
                "summary": "Cancel a request (IngestService.Cancel).",
                "parameters": [REQUEST_ID],
                "responses": {
                    "200": _json("The request after cancelling.", _ref("CancelResponse")),
                    **_errors(400, 401, 404, 409, 503),
                },
            }
        },
        "/v1/requests/{request_id}/events": {
            "get": {
                "operationId": "watchStatus",
                "summary": "Server-Sent Events, one per WatchStatus message "
                "(IngestService.WatchStatus).",
                "description": "Each event has `id:` the message's sequence, `event: status` "
                "and `data:` the WatchStatusResponse as JSON. The stream ends after the "
                "message that carries a terminal state. `Last-Event-ID` (or `after_sequence`) "
                "resumes: exactly the events after it follow. A comment line is sent every "
                "15 s or so while nothing else is.",
                "parameters": [
                    REQUEST_ID,
                    {
                        "name": "after_sequence",
                        "in": "query",
                        "required": False,
                        "description": "Resume after this sequence (0: start with a snapshot).",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                    },
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "Set by EventSource on reconnection; wins over "
                        "after_sequence.",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The event stream (the schema describes one event, "
                        "as OpenAPI 3.1 tools read it): `data` is a WatchStatusResponse.",
                        "content": {"text/event-stream": {"schema": SSE_EVENT}},
                    },
                    "204": {"description": "Nothing after Last-Event-ID: the request is done."},
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/v1/requests/{request_id}/result.csv": {
            "get": {
                "operationId": "getResultCsv",
                "summary": "The result CSV: the input rows with an Output Image Urls column.",
                "parameters": [REQUEST_ID],
                "responses": {
                    "200": _text("The result CSV (UTF-8).", "text/csv"),
                    **_errors(400, 401, 404, 409, 503),
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document.",
                "responses": {
                    "200": _json("The OpenAPI document.", {"type": "object"}),
                    **_errors(401),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Alive.",
                "security": OPEN,
                "responses": {"200": _json("Alive.", {"type": "object"})},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Serving: started and not shutting down.",
                "security": OPEN,
                "responses": {
                    "200": _json("Ready.", {"type": "object"}),
                    "503": _json("Not ready.", {"type": "object"}),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics.",
                "security": OPEN,
                "responses": {"200": _text("Prometheus text format.", "text/plain")},
            }
        },
    }
    if objects:
        paths["/objects/{key}"] = {
            "get": {
                "operationId": "getObject",
                "summary": "A stored object (file:// storage only): an output image or a "
                "result CSV. Keys are unguessable, so no token is needed.",
                "security": OPEN,
                "parameters": [
                    {
                        "name": "key",
                        "in": "path",
                        "required": True,
                        "description": "The object key, e.g. REQUEST_ID/10-0.jpg (may hold /).",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The object.",
                        "content": {
                            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(404),
                },
            }
        }
    return paths


def document(*, objects: bool, auth: bool) -> dict[str, Any]:
    """The document for a server with (or without) /objects/ and bearer tokens."""
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "imgpipe ingest HTTP API",
            "version": "v1",
            "description": "The HTTP side of imgpipe.v1.IngestService: the same operations, "
            "errors and messages, as protobuf's JSON mapping (field names as in the .proto, "
            "enums by name, int64 as strings).",
        },
        "paths": _paths(objects),
        "components": {
            "schemas": {**message_schemas(), "Error": ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    if auth:
        doc["security"] = [{"bearer": []}]
    return doc
