"""A refusal that says when to retry (``wire.rpc.RETRY_AFTER``, sent with ``RateLimited``) is retried no sooner
than it says; the same status without it (an oversized payload) is not retried at all; and a hint beyond the
caller's patience ends the call at once with the limit's own error.  The INTERNAL status grpc's asyncio client
makes up for a write into an ended call (a coordinator killed mid-upload) reaches the retries from the synthetic
participants' asyncio stub as the blocking stub's UNAVAILABLE and is retried; an INTERNAL a server sent is not."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest

from fedprompt.app.synthetic import blocking_status
from fedprompt.errors import FedPromptError, ResourceExhausted
from fedprompt.participant.grpc_link import CoordinatorUnreachable, call_with_retry
from fedprompt.wire.rpc import RETRY_AFTER, retry_after


class Refused(grpc.RpcError):
    """What a refused call raises on the client: a status, its details and its trailing metadata."""

    def __init__(self, details: str, hint_ms: str | None) -> None:
        self._details = details
        self._trailing = ((RETRY_AFTER, hint_ms),) if hint_ms is not None else ()

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing


def refused_then_ok(refusals: list[grpc.RpcError]) -> Callable[[], str]:
    def call() -> str:
        if refusals:
            raise refusals.pop(0)
        return "ok"
    return call


def call(fn: Callable[[], str], patience: float) -> str:
    return call_with_retry(fn, what="UploadUpdate", service="coordinator", target="test:1", retry_initial_s=0.01,
                           retry_max_s=0.05, give_up_after_s=patience, unreachable=CoordinatorUnreachable)


def test_a_busy_refusal_is_retried_no_sooner_than_it_asks() -> None:
    began = time.monotonic()
    assert call(refused_then_ok([Refused("busy", "300"), Refused("busy", "300")]), patience=10) == "ok"
    assert time.monotonic() - began >= 0.6


def test_the_same_status_without_a_hint_is_not_retried() -> None:
    fn = refused_then_ok([Refused("upload of 9 bytes exceeds 8", None)])
    with pytest.raises(ResourceExhausted, match="exceeds 8"):
        call(fn, patience=10)
    assert fn() == "ok"  # the one refusal was consumed: no second attempt was made


def test_a_hint_beyond_the_callers_patience_ends_the_call_with_the_limits_error() -> None:
    began = time.monotonic()
    with pytest.raises(ResourceExhausted, match="calls per second"):
        call(refused_then_ok([Refused("more than 0.01 calls per second", "100000")]), patience=2)
    assert time.monotonic() - began < 1


@pytest.mark.parametrize(("hint", "seconds"), [("1500", 1.5), ("1", 0.001), ("999999999", 60.0), ("x", None)])
def test_the_hint_is_read_in_milliseconds_and_capped(hint: str, seconds: float | None) -> None:
    assert retry_after(Refused("busy", hint)) == seconds


def aio_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """A failed call as ``LoopStub`` hands it to the retries."""
    return blocking_status(grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details))


def test_the_asyncio_clients_internal_for_a_write_into_an_ended_call_is_retried() -> None:
    failures: list[grpc.RpcError] = [aio_error(grpc.StatusCode.INTERNAL, "Internal error from Core")]
    assert call(refused_then_ok(failures), patience=10) == "ok" and not failures


def test_an_internal_status_with_a_servers_reason_is_not_retried() -> None:
    fn = refused_then_ok([aio_error(grpc.StatusCode.INTERNAL, "state store failed")])
    with pytest.raises(FedPromptError, match="^INTERNAL: state store failed$"):
        call(fn, patience=10)
    assert fn() == "ok"  # the one failure was consumed: no second attempt was made
