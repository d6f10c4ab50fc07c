"""The HTTP API described as OpenAPI 3.1 (served at ``/api/openapi.json``).

Schemas are JSON Schema 2020-12, as OpenAPI 3.1 has them. The tests validate
real responses against this document, so it says what the daemon does.
"""

from __future__ import annotations

from typing import Any

from consentd.call_list import DEFAULT_LIMIT
from consentd.export import AGENT_FIELDS, CALL_FIELDS, MAX_PER_PAGE, OUTCOMES
from consentd.timeline import CALL_KINDS, RECORDING_KINDS

EXPORT_PATHS = (
    "/api/v2/channels/voice/stats/incremental/calls",
    "/api/v2/channels/voice/stats/incremental/calls.json",
)


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_TIME = {"type": "string", "format": "date-time"}
_NULL_TIME = _nullable("string", format="date-time")
_SEGMENT = {
    "type": "object",
    "required": ["start", "end"],
    "properties": {"start": _TIME, "end": _TIME},
    "additionalProperties": False,
}
#: One span of a call's timeline (consentd/timeline.py).
_SPAN = {
    "type": "object",
    "description": "Ordered by start. The recording lane covers the call without gaps; its "
    "recorded spans are recording_segments. cut_short (greeting only): a 3 stopped it.",
    "required": ["lane", "kind", "start", "end", "start_s", "end_s"],
    "properties": {
        "lane": {"enum": ["call", "recording"]},
        "kind": {"enum": [*CALL_KINDS, *RECORDING_KINDS]},
        "start": _TIME,
        "end": _TIME,
        "start_s": {"type": "number", "minimum": 0, "description": "from the call's start"},
        "end_s": {"type": "number", "minimum": 0},
        "cut_short": _BOOL,
    },
    "additionalProperties": False,
    "allOf": [
        {
            "if": {"properties": {"lane": {"const": "call"}}},
            "then": {"properties": {"kind": {"enum": list(CALL_KINDS)}}},
            "else": {"properties": {"kind": {"enum": list(RECORDING_KINDS)}}},
        },
        {
            "if": {"properties": {"kind": {"const": "greeting"}}},
            "then": {"required": ["cut_short"]},
            "else": {"not": {"required": ["cut_short"]}},
        },
    ],
}

#: A call's consent outcome: the caller's latest decision, notice_failed (the consent
#: notice could not be played, so the call was never recorded), or none.
_CONSENT_ACTION: dict[str, Any] = {
    "enum": [*(o for o in OUTCOMES if o != "no_decision"), None],
    "description": "the caller's latest decision; notice_failed: the consent notice "
    "could not be played, so the call was never recorded",
}

#: Every field of an exported call (the hosted product's names first).
_CALL_PROPERTIES: dict[str, Any] = {
    "id": {**_INT, "description": "stable, unique across nodes (the ledger row of its start)"},
    "created_at": {**_TIME, "description": "the call's start, whole seconds"},
    "updated_at": {**_TIME, "description": "when the ledger last stored a row of the call"},
    "direction": {"enum": ["inbound", "outbound"]},
    "phone_number": _nullable("string"),
    "duration": _nullable("integer", minimum=0),
    "wait_time": _nullable("integer", minimum=0),
    "talk_time": _nullable("integer", minimum=0),
    "hold_time": {"type": "null", "description": "not known to consentd"},
    "time_to_answer": _nullable("integer", minimum=0),
    "agent_id": {"type": "null", "description": "agents are names: see agent"},
    "call_group_id": {"type": "null", "description": "groups are names: see group"},
    "voicemail": _BOOL,
    "completion_status": {
        "enum": ["completed", "voicemail", "abandoned_in_queue", "abandoned_in_ivr", None]
    },
    "ivr_action": {"enum": ["group", "voicemail", "phone_number", "menu", "hangup", None]},
    "ivr_hops": _nullable("integer", minimum=0),
    "ivr_routed_to": _nullable("string"),
    "ivr_time_spent": _nullable("integer", minimum=0),
    "exceeded_queue_wait_time": _nullable("boolean"),
    "call_recording_consent": {"enum": ["always", "opt_in", "opt_out", "never", None]},
    "call_recording_consent_action": _CONSENT_ACTION,
    "call_recording_consent_keypress": _nullable("string"),
    "recording_control_interactions": {"type": "integer", "minimum": 0},
    "recording_time": {"type": "integer", "minimum": 0},
    "not_recording_time": {"type": "integer", "minimum": 0},
    "call_id": {**_STR, "description": "the call's id in the ledger (node:channel)"},
    "node": _STR,
    "caller": _nullable("string"),
    "callee": _nullable("string"),
    "agent_name": _nullable("string"),
    "group": _nullable("string"),
    "queue": _nullable("string"),
    "policy_source": _nullable("string"),
    "line": _nullable("string"),
    "started_at": _TIME,
    "ended_at": _NULL_TIME,
    "answered_at": _NULL_TIME,
    "abandoned": _BOOL,
    "consentd_unavailable": _BOOL,
    "recording_segments": {"type": "array", "items": {"$ref": "#/components/schemas/Segment"}},
}
assert tuple(_CALL_PROPERTIES) == CALL_FIELDS

#: Where a recording lives: the node (its PBX) and the path as that Asterisk sees it.
_LOCATION = {
    "type": "string",
    "pattern": "^asterisk://[^/]+/",
    "description": "asterisk://NODE/PATH: the file on the PBX's Asterisk, as Asterisk "
    "names it (ARI's stored recording is PATH under /var/spool/asterisk/recording, "
    "without the extension)",
}

#: A call's details (consentd calls --json, /calls, /api/calls/{id}'s details); the
#: fields about recordings are spelled out, the rest is described in the README.
_CALL_DETAILS: dict[str, Any] = {
    "type": "object",
    "required": ["id", "node", "recordings", "recording_locations", "segments"],
    "properties": {
        "id": _STR,
        "node": _STR,
        "call_recording_consent_action": _CONSENT_ACTION,
        "recordings": {
            "type": "array",
            "items": _STR,
            "description": "the kept audio files (voicemail included) as paths on the "
            "consentd host (under CONSENTD_ASTERISK_ROOT)",
        },
        "recording_locations": {
            "type": "array",
            "items": _LOCATION,
            "description": "the same files, in the same order, where they live",
        },
        "segments": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["segment", "file", "location", "kept"],
                "properties": {
                    "segment": {"type": "integer", "minimum": 1},
                    "file": _STR,
                    "location": _LOCATION,
                    "started_at": _NULL_TIME,
                    "stopped_at": _NULL_TIME,
                    "kept": _BOOL,
                },
            },
        },
    },
}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["id", "message"],
            "properties": {"id": _STR, "message": _STR, "parameter": _STR},
            "additionalProperties": False,
        }
    },
    "additionalProperties": False,
}


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json("Error")}


_UNAUTHORIZED = _error("no or a wrong `Authorization: Bearer` token")
_UNAVAILABLE = _error("the database cannot be reached")


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}  # fmt: skip


_FORMAT = _query("format", {"enum": ["json", "csv"]}, "json (default) or csv")

_EXPORT = {
    "get": {
        "summary": "Incremental calls export (the hosted product's interface)",
        "description": (
            "Calls that ended, or changed after ending, at or after start_time, oldest "
            "first. Pages hold whole seconds of updated_at: at most per_page calls, unless "
            "one second alone holds more (then that second, whole). Ask again with "
            "start_time=end_time, or follow next_page: no call is skipped or repeated. "
            "end_of_stream: true means nothing more is available now (next_page is null)."
        ),
        "parameters": [
            _query("start_time", {"type": "integer", "minimum": 0}, "epoch seconds (0)"),
            _query(
                "per_page",
                {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE},
                f"calls per page ({MAX_PER_PAGE})",
            ),
            _FORMAT,
        ],
        "responses": {
            "200": {
                "description": "a page of calls",
                "content": {
                    **_json("ExportPage"),
                    "text/csv": {"schema": {"type": "string"}},
                },
            },
            "400": _error("a parameter that cannot be used (the error names it)"),
            "401": _UNAUTHORIZED,
            "503": _UNAVAILABLE,
        },
    }
}


#: The dashboard's routes: its page, its recent calls and its live feed.
_DASHBOARD = {
    "/": {
        "get": {
            "summary": "The dashboard (no token: the page holds no data and asks for the token)",
            "security": [],
            "responses": {
                "200": {
                    "description": "the page; its script and style are /dashboard/app.js, .css",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/api/calls": {
        "get": {
            "summary": "The most recently started calls, in progress included, newest first",
            "description": "Each call is an export record (ended_at null while in progress).",
            "parameters": [
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE},
                    f"calls ({DEFAULT_LIMIT})",
                ),
                _query("number", _STR, "a number the DID, the caller or the callee contains"),
                _query("outcome", {"enum": list(OUTCOMES)}, "the latest consent decision"),
                _query("agent", _STR, "the agent who answered (or placed) the call"),
            ],
            "responses": {
                "200": {"description": "the calls", "content": _json("CallList")},
                "400": _error("a parameter that cannot be used (the error names it)"),
                "401": _UNAUTHORIZED,
                "503": _UNAVAILABLE,
            },
        }
    },
    "/api/events": {
        "get": {
            "summary": "Server-sent events: `ready` once subscribed, `calls` when the ledger "
            "stored new rows (load the calls again), a comment every 15 s",
            "responses": {
                "200": {
                    "description": "an event stream that stays open",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "401": _UNAUTHORIZED,
                "503": _error("too many open streams"),
            },
        }
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "consentd",
            "version": "1",
            "description": "Call-recording consent for Asterisk: health, metrics, calls, "
            "reports, agents' recording controls and the dashboard. Every route but /healthz "
            "and the dashboard's page (/, /dashboard/app.js, /dashboard/app.css) needs "
            "`Authorization: Bearer <api_token>`.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Readiness (no token)",
                    "security": [],
                    "responses": {
                        "200": {"description": "ready", "content": _json("Health")},
                        "503": {"description": "not ready", "content": _json("Health")},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/calls": {
                "get": {
                    "summary": "Details of the most recently started calls, newest first",
                    "parameters": [
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "20")
                    ],
                    "responses": {
                        "200": {
                            "description": "call details",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/CallDetails"},
                                    }
                                }
                            },
                        },
                        "400": _error("a bad limit"),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/reload": {
                "post": {
                    "summary": "Re-read the daemon's policy file",
                    "responses": {
                        "200": {"description": "reloaded", "content": _json("Reloaded")},
                        "401": _UNAUTHORIZED,
                        "422": {"description": "refused", "content": _json("ReloadRefused")},
                    },
                }
            },
            "/api/calls/{id}/recording/{action}": {
                "post": {
                    "summary": "Pause or resume a call's recording",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": _STR},
                        {
                            "name": "action",
                            "in": "path",
                            "required": True,
                            "schema": {"enum": ["pause", "resume"]},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "the recording's new state",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["id", "recording"],
                                        "properties": {"id": _STR, "recording": _STR},
                                    }
                                }
                            },
                        },
                        "401": _UNAUTHORIZED,
                        "404": _error("no such call in progress on this node"),
                        "409": _error("the recording is not in a state for this"),
                    },
                }
            },
            EXPORT_PATHS[0]: _EXPORT,
            EXPORT_PATHS[1]: _EXPORT,
            "/api/calls/{id}": {
                "get": {
                    "summary": "One call: its export record, details, timeline and ledger rows",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": _STR,
                            "description": "the call's id in the ledger, or its integer id",
                        }
                    ],
                    "responses": {
                        "200": {"description": "the call", "content": _json("CallView")},
                        "401": _UNAUTHORIZED,
                        "404": _error("no such call"),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/reports/agents": {
                "get": {
                    "summary": "Per agent: calls, recording controls, recorded time, consent",
                    "parameters": [
                        _query("from", _STR, "ISO 8601 or epoch seconds (a day before to)"),
                        _query("to", _STR, "ISO 8601 or epoch seconds (now)"),
                        _FORMAT,
                    ],
                    "responses": {
                        "200": {
                            "description": "one row per agent",
                            "content": {
                                **_json("AgentReport"),
                                "text/csv": {"schema": {"type": "string"}},
                            },
                        },
                        "400": _error("a parameter that cannot be used (the error names it)"),
                        "401": _UNAUTHORIZED,
                        "503": _UNAVAILABLE,
                    },
                }
            },
            **_DASHBOARD,
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "401": _UNAUTHORIZED,
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "Segment": _SEGMENT,
                "Span": _SPAN,
                "CallDetails": _CALL_DETAILS,
                "Health": {
                    "type": "object",
                    "required": ["ready", "ari", "ami", "database", "active_calls"],
                    "properties": {
                        "ready": _BOOL,
                        "ari": _STR,
                        "ami": _STR,
                        "database": _STR,
                        "active_calls": _INT,
                        "ledger_backlog": _INT,
                        "calls_unserved": _INT,
                    },
                },
                "Reloaded": {
                    "type": "object",
                    "required": ["file", "summary", "added", "removed", "changed"],
                    "properties": {"file": _STR, "summary": _STR},
                },
                "ReloadRefused": {
                    "type": "object",
                    "required": ["file", "errors"],
                    "properties": {"file": _STR, "errors": {"type": "array", "items": _STR}},
                },
                "Call": {
                    "type": "object",
                    "required": list(CALL_FIELDS),
                    "properties": _CALL_PROPERTIES,
                    "additionalProperties": False,
                },
                "ExportPage": {
                    "type": "object",
                    "required": ["calls", "count", "end_time", "next_page", "end_of_stream"],
                    "properties": {
                        "calls": {"type": "array", "items": {"$ref": "#/components/schemas/Call"}},
                        "count": {"type": "integer", "minimum": 0},
                        "end_time": {"type": "integer", "minimum": 0},
                        "next_page": _nullable("string", format="uri"),
                        "end_of_stream": _BOOL,
                    },
                    "additionalProperties": False,
                },
                "LedgerRow": {
                    "type": "object",
                    "required": ["seq", "kind", "occurred_at", "stored_at", "node", "data"],
                    "properties": {
                        "seq": _INT,
                        "kind": _STR,
                        "occurred_at": _TIME,
                        "stored_at": _TIME,
                        "node": _STR,
                        "data": {"type": "object"},
                    },
                    "additionalProperties": False,
                },
                "CallView": {
                    "type": "object",
                    "description": "Sections of one call; each is derived from events alone.",
                    "required": ["call", "details", "recording_segments", "timeline", "events"],
                    "properties": {
                        "call": {"$ref": "#/components/schemas/Call"},
                        "details": {"$ref": "#/components/schemas/CallDetails"},
                        "recording_segments": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Segment"},
                        },
                        "timeline": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Span"},
                        },
                        "events": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/LedgerRow"},
                        },
                    },
                    "additionalProperties": False,
                },
                "AgentRow": {
                    "type": "object",
                    "required": list(AGENT_FIELDS),
                    "properties": {
                        "agent": _STR,
                        "calls_answered": {"type": "integer", "minimum": 0},
                        "calls_placed": {"type": "integer", "minimum": 0},
                        "recording_control_interactions": {"type": "integer", "minimum": 0},
                        "recording_time": {"type": "integer", "minimum": 0},
                        "not_recording_time": {"type": "integer", "minimum": 0},
                        "consent_outcomes": {
                            "type": "object",
                            "required": list(OUTCOMES),
                            "properties": {o: {"type": "integer", "minimum": 0} for o in OUTCOMES},
                            "additionalProperties": False,
                        },
                    },
                    "additionalProperties": False,
                },
                "CallList": {
                    "type": "object",
                    "required": ["calls", "count"],
                    "properties": {
                        "calls": {"type": "array", "items": {"$ref": "#/components/schemas/Call"}},
                        "count": {"type": "integer", "minimum": 0},
                    },
                    "additionalProperties": False,
                },
                "AgentReport": {
                    "type": "object",
                    "required": ["from", "to", "agents"],
                    "properties": {
                        "from": _TIME,
                        "to": _TIME,
                        "agents": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/AgentRow"},
                        },
                    },
                    "additionalProperties": False,
                },
            },
        },
    }
