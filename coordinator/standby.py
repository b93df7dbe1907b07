"""A standby replica's face while it waits for the lease (``coordinator.lease``): a gRPC server on the replica's
own address that answers the standard health service NOT_SERVING, so a liveness probe sees a live process and a
readiness probe keeps traffic away, and refuses every participant and admin call with UNAVAILABLE
(``errors.NotActive``), which a participant's link takes as its cue to try its next coordinator address
(``participant.grpc_link``).  It reads nothing of the store's jobs.  Once the lease is this replica's, it stops
and the replica's real server binds the same address (``coordinator.server``).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedprompt.errors import NotActive
from fedprompt.v1 import admin_pb2, participant_pb2
from fedprompt.wire.rpc import reject

#: The services a standby refuses: every call of the two a participant or an admin makes.
REFUSED: tuple[ServiceDescriptor, ...] = (participant_pb2.DESCRIPTOR.services_by_name["ParticipantService"],
                                          admin_pb2.DESCRIPTOR.services_by_name["AdminService"])


def refusing_handlers(replica: str) -> list[grpc.GenericRpcHandler]:
    """A handler per method of ``REFUSED``, of the method's own streaming kind, that refuses it with
    UNAVAILABLE, naming this replica (the request itself is never decoded)."""
    handlers = []
    for service in REFUSED:
        methods: dict[str, grpc.RpcMethodHandler] = {}
        for method in service.methods:
            name = f"[{service.name}.{method.name}]"

            async def refuse(request: Any, context: grpc.aio.ServicerContext, name: str = name) -> None:
                await reject(context, name, NotActive(f"coordinator replica {replica} is standing by (another "
                                                      "replica holds the lease): try another coordinator address"))

            kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                    (False, True): grpc.unary_stream_rpc_method_handler,
                    (True, False): grpc.stream_unary_rpc_method_handler,
                    (True, True): grpc.stream_stream_rpc_method_handler}[(method.client_streaming,
                                                                           method.server_streaming)]
            methods[method.name] = kind(refuse)
        handlers.append(grpc.method_handlers_generic_handler(service.full_name, methods))
    return handlers


class StandbyServer:
    """Serves health NOT_SERVING and refuses the rest on ``listen`` until ``stop``."""

    def __init__(self, replica: str, services: tuple[str, ...]) -> None:
        self.replica = replica
        self.services = services  # health service names to answer NOT_SERVING for ("" is the whole server)
        self.server: grpc.aio.Server | None = None

    async def start(self, listen: str, credentials: grpc.ServerCredentials | None,
                    options: list[tuple[str, Any]]) -> int:
        """Bind ``listen`` (with the replica's own TLS credentials, or none for ``insecure``); the bound port."""
        self.server = grpc.aio.server(options=options)
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        self.server.add_generic_rpc_handlers(refusing_handlers(self.replica))
        port = (self.server.add_insecure_port(listen) if credentials is None
                else self.server.add_secure_port(listen, credentials))
        for service in self.services:
            await servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        return port

    async def stop(self) -> None:
        """Stop at once (calls to a standby are refused anyway), freeing the address for the active server."""
        if self.server is not None:
            await self.server.stop(0)
            await self.server.wait_for_termination()
            self.server = None
