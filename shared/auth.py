"""Bearer tokens (IMGPIPE_AUTH_TOKENS, IMGPIPE_AUTH_TOKENS_FILE): one check for gRPC metadata
and HTTP headers alike."""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc

from imgpipe.common.errors import Unauthenticated
from imgpipe.common.grpc_interceptors import Context, WrappingInterceptor

ANONYMOUS = ""
# The principal of the current gRPC call, set by AuthInterceptor.
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("imgpipe_caller", default=ANONYMOUS)
# Methods anyone may call: health checks (probes carry no token) and reflection.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def principal_of(token: str) -> str:
    """A stable, non-secret name for a token: what requests are owned by and logs show."""
    return "tok_" + hashlib.sha256(token.encode()).hexdigest()[:16]


class TokenAuth:
    """Accepts `Bearer TOKEN` for any configured token; open (anonymous) when none are.

    Tokens are known by their SHA-256 only, each with the principal it authenticates."""

    def __init__(self, credentials: Iterable[tuple[bytes, str]]) -> None:
        self._credentials = list(credentials)

    @property
    def enabled(self) -> bool:
        return bool(self._credentials)

    def authenticate(self, authorization: str | None) -> str:
        """The caller's principal; raises Unauthenticated unless a configured token is given.

        The hash of the presented token is compared with every configured one, in constant
        time, whatever matches first."""
        if not self._credentials:
            return ANONYMOUS
        scheme, _, presented = (authorization or "").partition(" ")
        # Tokens are ASCII; anything else (a header of raw bytes too) cannot match one.
        stripped = presented.strip()
        if scheme.lower() != "bearer" or not stripped or not stripped.isascii():
            raise Unauthenticated("a valid `authorization: Bearer TOKEN` is required")
        candidate = hashlib.sha256(stripped.encode()).digest()
        matched: str | None = None
        for digest, principal in self._credentials:
            if hmac.compare_digest(digest, candidate):
                matched = principal
        if matched is None:
            raise Unauthenticated("a valid `authorization: Bearer TOKEN` is required")
        return matched


class AuthInterceptor(WrappingInterceptor):
    """Authenticates every call but health and reflection; the principal goes in CALLER.

    A call without a valid token is refused from its metadata, before its request message
    is read: the handler put in its place is client-streaming and never reads, so the
    transport holds no more of the body than its flow-control window."""

    def __init__(self, auth: TokenAuth) -> None:
        self._auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method = handler_call_details.method
        if not method.startswith(OPEN_METHOD_PREFIXES):
            metadata = dict(handler_call_details.invocation_metadata or ())
            try:
                self._auth.authenticate(_text(metadata.get("authorization")))
            except Unauthenticated as exc:
                handler = await continuation(handler_call_details)
                return None if handler is None else _refusal(handler, exc.message)
        return await super().intercept_service(continuation, handler_call_details)

    def around(
        self, method: str, request: Any, context: Context
    ) -> AbstractAsyncContextManager[None] | None:
        if method.startswith(OPEN_METHOD_PREFIXES):
            return None
        return self._authenticated(context)

    @asynccontextmanager
    async def _authenticated(self, context: Context) -> AsyncIterator[None]:
        metadata = dict(context.invocation_metadata() or ())
        caller = self._auth.authenticate(_text(metadata.get("authorization")))
        token = CALLER.set(caller)
        try:
            yield
        finally:
            CALLER.reset(token)


def _text(value: str | bytes | None) -> str | None:
    """A metadata value as text; a binary one (only `-bin` keys carry bytes) is no token."""
    return value if isinstance(value, str) or value is None else ""


def _refusal(handler: Any, message: str) -> Any:
    """A handler of the same response kind that answers UNAUTHENTICATED without reading."""

    async def refuse(_requests: Any, context: Context) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(_requests: Any, context: Context) -> AsyncIterator[None]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - abort raises

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            refuse_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_unary_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
