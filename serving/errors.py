"""Every error the service sends, in one shape ``{"code", "message", "detail"}`` with a 4xx for user mistakes.

Two parts, both here so the mapping lives in one file:

* :func:`error_response` / :func:`rejection_out` turn a ``SiteNetError`` (via ``sitenet.predict.Rejection``)
  or a request-level problem into the body and status; ``serving/service.py`` returns these.
* :class:`RequestGuard`, an ASGI middleware in front of BentoML, refuses before any parsing a body over
  the size limit (413), the wrong content type for the route (415) and malformed JSON (400), and rewrites
  BentoML's own error bodies -- ``{"error", "detail"}`` for validation, ``[{"error"}]`` for exceptions,
  plain-text 404/405 -- into the same shape (stack-notes §1, pitfall 3).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

from serving.schemas import ErrorOut
from sitenet.predict import Rejection

logger = logging.getLogger("sitenet.serving")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Code used when BentoML, Starlette or the guard refuse a request, by HTTP status.
STATUS_CODES: dict[int, str] = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
                                408: "timeout", 413: "request_too_large", 415: "unsupported_media_type",
                                422: "invalid_request", 429: "too_many_requests", 500: "internal_error",
                                503: "service_unavailable"}


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "detail": detail}


def error_response(status: int, code: str, message: str, detail: Any = None) -> JSONResponse:
    """A whole-request error."""
    if status >= 500:
        logger.error("%s %s: %s", status, code, message)
    return JSONResponse(error_body(code, message, detail), status_code=status)


def overloaded_response(message: str, retry_after_s: int, detail: Any = None) -> JSONResponse:
    """503 ``overloaded``: come back in ``retry_after_s`` seconds. Not logged one by one: under overload that
    would be hundreds of lines a second just when the CPU has least to spare (/metrics counts them)."""
    return JSONResponse(error_body("overloaded", message, {**(detail or {}), "retry_after_s": retry_after_s}),
                        status_code=503, headers={"Retry-After": str(retry_after_s)})


def rejection_out(rejection: Rejection) -> ErrorOut:
    """A per-item error (batch entries)."""
    return ErrorOut(code=rejection.code, message=rejection.message, detail=_jsonable(rejection.detail))


def rejection_response(rejection: Rejection) -> JSONResponse:
    """A single-CIF request whose CIF was refused: the error's own status (400/413/415/422)."""
    return error_response(rejection.http_status, rejection.code, rejection.message, _jsonable(rejection.detail))


def _jsonable(detail: Any) -> Any:
    try:
        json.dumps(detail)
        return detail
    except (TypeError, ValueError):
        return str(detail)


class RequestGuard:
    """ASGI middleware: size, content-type and JSON checks before BentoML; one error shape after it.

    Args:
        app: the BentoML ASGI app.
        max_request_bytes: largest request body accepted.
        routes: path -> "json" or "multipart", the body each API expects.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], *, max_request_bytes: int, routes: dict[str, str]) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = self.routes.get(scope["path"]) if scope["method"] == "POST" else None
        if kind is not None:
            refusal, body = await self._check(scope, receive, kind)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, _reshaping(send, scope))

    async def _check(self, scope: Scope, receive: Receive, kind: str) -> tuple[JSONResponse | None, bytes]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        expected = "multipart/form-data" if kind == "multipart" else "application/json"
        if media != expected:
            how = ("upload files as multipart/form-data, e.g. curl -F cif=@x.cif" if kind == "multipart"
                   else "send a JSON body with Content-Type: application/json")
            return error_response(415, "unsupported_media_type", f"{scope['path']} expects {expected}, got "
                                  f"{media or 'no Content-Type'}: {how}", {"expected": expected, "got": media}), b""
        limit = self.max_request_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _too_large(int(declared), limit), b""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return _too_large(size, limit), b""
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if kind == "json":
            try:
                json.loads(body)
            except (ValueError, UnicodeDecodeError) as err:
                return error_response(400, "malformed_json", f"the request body is not valid JSON: {err}"), b""
        return None, body


def _too_large(size: int, limit: int) -> JSONResponse:
    return error_response(413, "request_too_large", f"the request body is {size} bytes or more, more than the "
                          f"limit of {limit}", {"bytes": size, "max": limit})


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read by the guard, then the server's own messages, so a client's disconnect still shows (the
    admission queue drops a waiting request whose client has gone)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _reshaping(send: Send, scope: Scope) -> Send:
    """Buffer error responses (status >= 400) and rewrite any body not already ``{"code","message",...}``."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        status, body = start["status"], b"".join(chunks)
        new_body = _reshape(status, body, f"{scope['method']} {scope['path']}")
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-length", str(len(new_body)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": new_body, "more_body": False})

    return wrapped


def _reshape(status: int, body: bytes, request: str) -> bytes:
    try:
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        data = body.decode("utf-8", "replace").strip() or None
    if isinstance(data, dict) and {"code", "message"} <= data.keys():
        return body
    code = STATUS_CODES.get(status, "internal_error" if status >= 500 else "invalid_request")
    detail = None
    if isinstance(data, list) and data and isinstance(data[0], dict):  # BentoMLException: [{"error": ...}]
        data = data[0]
    if isinstance(data, dict):
        message, detail = str(data.get("error", data)), data.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict) and "msg" in detail[0]:
            first = detail[0]  # pydantic: say which field and why
            where = ".".join(str(p) for p in first.get("loc", ()))
            message = f"{message}: {where}: {first['msg']}" if where else f"{message}: {first['msg']}"
    elif status == 404:
        message = f"no endpoint for {request}; the API is described at GET /docs.json"
    elif status == 405:
        message = f"{request} is not allowed; the prediction endpoints take POST"
    else:
        message = f"{request} failed: {data or f'HTTP {status}'}"
    # a 503 from /readyz is a state that probes poll (workers loading or restarting), not an error to log
    if status >= 500 and not (status == 503 and request.endswith(" /readyz")):
        logger.error("%s %s: %s", status, code, message)
    return json.dumps(error_body(code, message, _jsonable(detail))).encode()
