"""Domain exceptions <-> gRPC status codes, in one table used by servers (to abort) and clients (to raise).

Also the server's first line: ``DecodeGuard`` refuses requests that do not parse or carry an oversized string
(``wire.bounds``) before any servicer code runs, and ``reject`` bounds every status message it sends.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from fedprompt import errors
from fedprompt.crypto import errors as crypto_errors
from fedprompt.wire import bounds

log = structlog.get_logger("fedprompt.wire.rpc")

# Server side: each domain error (or its nearest listed base class) aborts with this status.
STATUS: dict[type[Exception], grpc.StatusCode] = {
    crypto_errors.AttestationError: grpc.StatusCode.INVALID_ARGUMENT,
    crypto_errors.InvalidCiphertext: grpc.StatusCode.INVALID_ARGUMENT,
    crypto_errors.InvalidValue: grpc.StatusCode.INVALID_ARGUMENT,
    crypto_errors.ParameterError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidUpdate: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.RelayRefused: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.DuplicateUpdate: grpc.StatusCode.ALREADY_EXISTS,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    # A standby or deposed replica: the caller tries another coordinator address (``participant.grpc_link``).
    errors.NotActive: grpc.StatusCode.UNAVAILABLE,
}

# Client side: a status becomes the error class that names exactly what the status means.  Not UNAVAILABLE: the
# transport says it too (a coordinator down), so it stays a plain error naming the status.
FROM_STATUS: dict[grpc.StatusCode, type[errors.FedPromptError]] = {}
for _exc, _code in STATUS.items():
    if issubclass(_exc, errors.FedPromptError) and _code is not grpc.StatusCode.UNAVAILABLE:
        FROM_STATUS.setdefault(_code, _exc)


def status_for(exc: Exception) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


def error_from_rpc(exc: grpc.RpcError) -> errors.FedPromptError:
    """Turn a failed call into the domain error it stands for (details carry the server's reason)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return FROM_STATUS.get(code, errors.FedPromptError)(f"{code.name}: {details}")


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: The most UTF-8 bytes of a status message and of a logged reason.  gRPC sends the message percent-encoded
#: in a header (up to 3 bytes per byte) and drops the call with RESOURCE_EXHAUSTED above its metadata limit
#: (8 KiB by default): 1 KiB keeps every refusal readable by the caller whatever the error quotes.
MAX_STATUS_BYTES = 1024

#: Trailing metadata of a refusal the caller may retry (``errors.RateLimited``): milliseconds to wait first.
#: RESOURCE_EXHAUSTED alone does not say it: an oversized payload gets it too, and retrying that is futile.
RETRY_AFTER = "x-fedprompt-retry-after-ms"


async def reject(context: grpc.aio.ServicerContext, name: str, exc: Exception) -> None:
    """Abort the call with the error's status, logging the RPC, the reason and the caller (bound by the gate).
    The reason is clipped to ``MAX_STATUS_BYTES`` in both places; a retryable refusal says when to retry."""
    code = status_for(exc)
    reason = errors.clip(str(exc), MAX_STATUS_BYTES)
    log.warning(f"{name} rejected", rpc=name.strip("[]"), status=code.name, reason=reason)
    hint = ((RETRY_AFTER, str(max(1, round(exc.retry_after_s * 1000)))),) \
        if isinstance(exc, errors.RateLimited) else ()
    await context.abort(code, reason, trailing_metadata=hint)


def retry_after(exc: grpc.RpcError) -> float | None:
    """Seconds a refused call asks its caller to wait before retrying, or None if retrying it cannot help."""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == RETRY_AFTER:
            try:
                return min(float(value) / 1000, 60.0)
            except ValueError:
                return None
    return None


class _Refused:
    """Stands in for a request refused while it was decoded (bytes that do not parse, an oversized string),
    so the call can be refused like any bad input once the method runs."""

    def __init__(self, error: errors.InvalidRequest) -> None:
        self.error = error


UNDECODABLE = errors.InvalidRequest("request is not a valid protobuf message")


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Requests that are not valid protobuf, or hold a string over its field's limit (``bounds.check``), get
    INVALID_ARGUMENT and a log line (gRPC alone answers UNKNOWN with a traceback to the first): the deserializer
    returns a marker, the method refuses it before any servicer code runs."""

    async def intercept_service(self, continuation: Callable[..., Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        name = f"[{details.method.rsplit('/', 2)[-2].rsplit('.', 1)[-1]}.{details.method.rsplit('/', 1)[-1]}]"
        decode = handler.request_deserializer

        def safe(data: bytes) -> Any:
            try:
                message = decode(data)
            except Exception:  # protobuf raises DecodeError, and others on some malformed inputs
                return _Refused(UNDECODABLE)
            try:
                bounds.check(message)
            except errors.InvalidRequest as exc:
                return _Refused(exc)
            return message

        async def refuse(request: _Refused, context: grpc.aio.ServicerContext) -> None:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(peer=context.peer())
            await reject(context, name, request.error)

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Refused):
                    await refuse(request, context)
                return await inner(request, context)

            return handler._replace(unary_unary=unary, request_deserializer=safe)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Refused):
                    await refuse(request, context)
                async for item in inner_stream(request, context):
                    yield item

            return handler._replace(unary_stream=unary_stream, request_deserializer=safe)
        if handler.stream_unary is not None:
            inner_upload = handler.stream_unary

            async def checked(requests: Any) -> Any:
                async for request in requests:
                    if isinstance(request, _Refused):
                        raise request.error  # inside the servicer: its decorator refuses the call
                    yield request

            async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                return await inner_upload(checked(requests), context)

            return handler._replace(stream_unary=stream_unary, request_deserializer=safe)
        return handler


def rpc_method(service: str) -> Callable[[F], F]:
    """Decorate an async servicer method: domain errors abort with their status and a log line naming why."""

    def decorate(fn: F) -> F:
        name = f"[{service}.{fn.__name__}]"

        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            structlog.contextvars.clear_contextvars()
            try:
                return await fn(self, request, context)
            except errors.ERRORS as exc:
                await reject(context, name, exc)

        return wrapper  # type: ignore[return-value]

    return decorate


def stream_method(service: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Like ``rpc_method`` for server-streaming methods (async generators)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = f"[{service}.{fn.__name__}]"

        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            structlog.contextvars.clear_contextvars()
            try:
                async for item in fn(self, request, context):
                    yield item
            except errors.ERRORS as exc:
                await reject(context, name, exc)

        return wrapper

    return decorate
