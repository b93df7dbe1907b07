"""Domain exceptions <-> gRPC status codes, in one table used by servers (to abort) and clients (to raise)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from fedprompt import errors

log = structlog.get_logger("fedprompt.rpc")

# Server side: each domain error (or its nearest listed base class) aborts with this status.
STATUS: dict[type[errors.FedPromptError], grpc.StatusCode] = {
    errors.InvalidUpdate: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidQuery: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.DuplicateUpdate: grpc.StatusCode.ALREADY_EXISTS,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}

# Client side: a status becomes the error class that names exactly what the status means.
FROM_STATUS: dict[grpc.StatusCode, type[errors.FedPromptError]] = {}
for _exc, _code in STATUS.items():
    FROM_STATUS.setdefault(_code, _exc)


def status_for(exc: errors.FedPromptError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def error_from_rpc(exc: grpc.RpcError) -> errors.FedPromptError:
    """Turn a failed call into the domain error it stands for (details carry the server's reason)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return FROM_STATUS.get(code, errors.FedPromptError)(f"{code.name}: {details}")


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def rpc_method(service: str) -> Callable[[F], F]:
    """Decorate an async servicer method: domain errors abort with their status and a log line naming why."""

    def decorate(fn: F) -> F:
        name = f"[{service}.{fn.__name__}]"

        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            structlog.contextvars.clear_contextvars()
            try:
                return await fn(self, request, context)
            except errors.FedPromptError as exc:
                code = status_for(exc)
                log.warning(f"{name} rejected", status=code.name, reason=str(exc))
                await context.abort(code, str(exc))

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
            except errors.FedPromptError as exc:
                code = status_for(exc)
                log.warning(f"{name} rejected", status=code.name, reason=str(exc))
                await context.abort(code, str(exc))

        return wrapper

    return decorate
