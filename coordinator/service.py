"""Thin gRPC servicers: decode, authenticate, call one domain method, encode. No business logic here."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog

from fedprompt.coordinator.audit import AuditTrail
from fedprompt.coordinator.identity import Gate
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.notifier import Notifier
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.tasks import dispatch_state
from fedprompt.errors import InvalidUpdate, StaleRound
from fedprompt.protocol import TaskKind
from fedprompt.v1 import admin_pb2, admin_pb2_grpc, participant_pb2, participant_pb2_grpc
from fedprompt.wire import serde
from fedprompt.wire.payload import ChunkAssembler
from fedprompt.wire.rpc import rpc_method, stream_method

MAX_POLL_S = 30.0

log = structlog.get_logger("coordinator.service")


class ParticipantService(participant_pb2_grpc.ParticipantServiceServicer):
    def __init__(self, jobs: JobManager, gate: Gate, notifier: Notifier, upload_timeout_s: float,
                 max_message_bytes: int = 4 * 1024 * 1024) -> None:
        self.jobs = jobs
        self.gate = gate
        self.notifier = notifier
        self.upload_timeout_s = upload_timeout_s
        self.page_bytes = max_message_bytes // 2  # key material per GetThresholdKeys page, framing aside

    def announce(self, job: JobRuntime) -> None:
        """After a participant's call, and on every tick: wake the job's long-polls if their tasks may have changed
        (``coordinator.tasks.dispatch_state``)."""
        self.notifier.changed(job.job_id, dispatch_state(job))

    @rpc_method("ParticipantService")
    async def DescribeJob(self, request: participant_pb2.DescribeJobRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        description = self.jobs.job(request.job).describe(identity)
        return serde.description_to_pb(dataclasses.replace(description, crl=self.gate.crl()))

    @rpc_method("ParticipantService")
    async def Join(self, request: participant_pb2.JoinRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        job = self.jobs.job(request.job)
        info = job.join(identity, request.num_train_examples, request.num_test_examples, request.vector_size,
                        bytes(request.exchange_public_key), bytes(request.exchange_attestation))
        self.announce(job)
        return serde.join_to_pb(info)

    @rpc_method("ParticipantService")
    async def GetTask(self, request: participant_pb2.GetTaskRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        job = self.jobs.job(request.job_id)
        until = time.monotonic() + min(request.wait_ms / 1000.0, MAX_POLL_S)
        while True:
            task = job.next_task(identity)
            remaining = until - time.monotonic()
            if (task.kind is not TaskKind.WAIT or remaining <= 0 or self.notifier.closed
                    or job.relay.has_members_to_seal_for(identity)):
                return serde.task_to_pb(task)
            await self.notifier.wait(job.job_id, remaining)

    @stream_method("ParticipantService")
    async def DownloadGlobal(self, request: participant_pb2.DownloadGlobalRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        identity = self.gate.participant(context)
        payload = self.jobs.job(request.job_id).global_payload(identity, request.version)
        for message in serde.payload_messages(payload, participant_pb2.DownloadGlobalResponse):
            yield message

    @rpc_method("ParticipantService")
    async def UploadUpdate(self, request_iterator: AsyncIterator[participant_pb2.UploadUpdateRequest],
                           context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        with self.gate.upload(identity):
            try:
                return await asyncio.wait_for(self._receive(identity, request_iterator, context),
                                              self.upload_timeout_s)
            except TimeoutError as exc:
                raise StaleRound(f"upload not completed within {self.upload_timeout_s:g} s") from exc

    async def _receive(self, identity: str, messages: AsyncIterator[participant_pb2.UploadUpdateRequest],
                       context: grpc.aio.ServicerContext) -> Any:
        first = await anext(aiter(messages), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidUpdate("an upload must start with a header")
        header = serde.header_from_pb(first.header)
        job = self.jobs.job(header.job_id)
        if job.uploads.already_received(identity, header):
            log.info("[ParticipantService.UploadUpdate] retry of an update already counted: acknowledged",
                     job_id=header.job_id, round=header.round)
            return participant_pb2.UploadUpdateResponse(sha256_hex=header.sha256.hex(),
                                                        bytes_received=header.total_bytes)
        admission = job.admit(identity, header)
        assembler = ChunkAssembler(header, admission.max_bytes)
        async for message in messages:
            if message.WhichOneof("part") != "chunk":
                raise InvalidUpdate("only chunks may follow the header")
            assembler.add(message.chunk.index, message.chunk.data)
        payload = assembler.finish()
        self.gate.recheck(context)  # a certificate revoked while the stream ran: its update is discarded
        job.accept(admission, payload)
        self.announce(job)
        return participant_pb2.UploadUpdateResponse(sha256_hex=header.sha256.hex(), bytes_received=len(payload.data))

    @rpc_method("ParticipantService")
    async def ReportMetrics(self, request: participant_pb2.ReportMetricsRequest,
                            context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        job = self.jobs.job(request.job_id)
        job.report_metrics(identity, request.version, dict(request.metrics), request.num_examples)
        self.announce(job)
        return participant_pb2.ReportMetricsResponse()

    @rpc_method("ParticipantService")
    async def PublishContext(self, request: participant_pb2.PublishContextRequest,
                             context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        job = self.jobs.job(request.job_id)
        job.relay.publish_context(identity, bytes(request.public_context), bytes(request.key_id), bytes(request.attestation))
        self.announce(job)
        return participant_pb2.PublishContextResponse()

    @rpc_method("ParticipantService")
    async def ShareKey(self, request: participant_pb2.ShareKeyRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        job = self.jobs.job(request.job_id)
        job.relay.share_key(identity, request.recipient_id, bytes(request.sealed_key))
        self.announce(job)
        return participant_pb2.ShareKeyResponse()

    @rpc_method("ParticipantService")
    async def GetKeys(self, request: participant_pb2.GetKeysRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        state = self.jobs.job(request.job_id).relay.key_state(identity)
        return serde.keys_to_pb(dataclasses.replace(state, crl=self.gate.crl()))

    @rpc_method("ParticipantService")
    async def ReportKeyFault(self, request: participant_pb2.ReportKeyFaultRequest,
                             context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        self.jobs.refuse_keys(request.job_id, identity, request.reason)
        self.notifier.notify()
        return participant_pb2.ReportKeyFaultResponse()

    @rpc_method("ParticipantService")
    async def GetThresholdKeys(self, request: participant_pb2.GetThresholdKeysRequest,
                               context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        return serde.threshold_keys_to_pb(self.jobs.job(request.job_id).relay.threshold_keys(
            identity, self.gate.crl(), request.page, self.page_bytes))

    @rpc_method("ParticipantService")
    async def PublishShare(self, request: participant_pb2.PublishShareRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        job = self.jobs.job(request.job_id)
        job.relay.publish_share(identity, bytes(request.share), bytes(request.attestation))
        self.announce(job)
        return participant_pb2.PublishShareResponse()

    @rpc_method("ParticipantService")
    async def DealShares(self, request: participant_pb2.DealSharesRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        job = self.jobs.job(request.job_id)
        job.relay.deal(identity, serde.dealing_from_pb(request))
        self.announce(job)
        return participant_pb2.DealSharesResponse()

    @stream_method("ParticipantService")
    async def DownloadDecryption(self, request: participant_pb2.DownloadDecryptionRequest,
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        identity = self.gate.participant(context)
        payload = self.jobs.job(request.job_id).relay.decryption(identity, request.round)
        for message in serde.payload_messages(payload, participant_pb2.DownloadGlobalResponse):
            yield message

    @rpc_method("ParticipantService")
    async def SubmitShare(self, request: participant_pb2.SubmitShareRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        job = self.jobs.job(request.job_id)
        job.relay.submit_share(identity, request.round, request.attempt, bytes(request.masked_share))
        self.announce(job)
        return participant_pb2.SubmitShareResponse()

    @rpc_method("ParticipantService")
    async def GetGramKeys(self, request: participant_pb2.GetGramKeysRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        return serde.gram_keys_to_pb(self.jobs.job(request.job_id).relay.gram_keys(identity, request.page,
                                                                                   self.page_bytes))

    @rpc_method("ParticipantService")
    async def PublishGramKey(self, request: participant_pb2.PublishGramKeyRequest,
                             context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        job = self.jobs.job(request.job_id)
        job.relay.publish_gram_key(identity, request.round, request.element, bytes(request.message),
                                   bytes(request.attestation))
        self.announce(job)
        return participant_pb2.PublishGramKeyResponse()

    @rpc_method("ParticipantService")
    async def GetGram(self, request: participant_pb2.GetGramRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        return serde.gram_to_pb(self.jobs.job(request.job_id).gram_payload(identity, request.round))

    @rpc_method("ParticipantService")
    async def ReportGram(self, request: participant_pb2.ReportGramRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        job = self.jobs.job(request.job_id)
        job.report_gram(identity, request.round, list(request.scalars))
        self.announce(job)
        return participant_pb2.ReportGramResponse()

    @stream_method("ParticipantService")
    async def DownloadCheck(self, request: participant_pb2.DownloadCheckRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        identity = self.gate.participant(context)
        payload = self.jobs.job(request.job_id).check_bundle(identity, request.round)
        for message in serde.payload_messages(payload, participant_pb2.DownloadGlobalResponse):
            yield message

    @rpc_method("ParticipantService")
    async def ReportCheck(self, request: participant_pb2.ReportCheckRequest,
                          context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        job = self.jobs.job(request.job_id)
        job.report_check(identity, request.round, serde.verdicts_from_pb(request))
        self.announce(job)
        return participant_pb2.ReportCheckResponse()

    @rpc_method("ParticipantService")
    async def Heartbeat(self, request: participant_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        state = self.jobs.job(request.job_id).heartbeat(identity)
        return participant_pb2.HeartbeatResponse(job_state=state.value)

    @rpc_method("ParticipantService")
    async def ReportPrivacy(self, request: participant_pb2.ReportPrivacyRequest,
                            context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.participant(context)
        report = serde.privacy_from_pb(request)
        job = self.jobs.job(report.job_id)
        job.report_privacy(identity, report)
        self.announce(job)
        return participant_pb2.ReportPrivacyResponse()


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    """Admin calls; each one that changes or exports a job is recorded in the audit trail, refused or not."""

    def __init__(self, jobs: JobManager, gate: Gate, notifier: Notifier, audit: AuditTrail) -> None:
        self.jobs = jobs
        self.gate = gate
        self.notifier = notifier
        self.audit = audit

    @rpc_method("AdminService")
    async def CreateJob(self, request: admin_pb2.CreateJobRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.admin(context)
        with self.audit.action(identity, "create", "", config_toml=request.config_toml) as entry:
            entry.job_id = self.jobs.create_job(request.config_toml, request.config_signature)
        return admin_pb2.CreateJobResponse(job_id=entry.job_id)

    @rpc_method("AdminService")
    async def StartJob(self, request: admin_pb2.StartJobRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.admin(context)
        with self.audit.action(identity, "start", request.job_id) as entry:
            job = self.jobs.job(request.job_id)
            entry.job_id = job.job_id
            state = job.start()
        job.tick()
        self.notifier.notify()
        return admin_pb2.StartJobResponse(state=state.value)

    @rpc_method("AdminService")
    async def PauseJob(self, request: admin_pb2.PauseJobRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.admin(context)
        with self.audit.action(identity, "pause", request.job_id) as entry:
            job = self.jobs.job(request.job_id)
            entry.job_id = job.job_id
            state = job.pause()
        return admin_pb2.PauseJobResponse(state=state.value)

    @rpc_method("AdminService")
    async def CancelJob(self, request: admin_pb2.CancelJobRequest, context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.admin(context)
        with self.audit.action(identity, "cancel", request.job_id) as entry:
            job = self.jobs.job(request.job_id)
            entry.job_id = job.job_id
            state = job.cancel()
        self.notifier.notify()
        return admin_pb2.CancelJobResponse(state=state.value)

    @rpc_method("AdminService")
    async def GetJobStatus(self, request: admin_pb2.GetJobStatusRequest, context: grpc.aio.ServicerContext) -> Any:
        self.gate.admin(context)
        return admin_pb2.GetJobStatusResponse(status=serde.job_to_pb(self.jobs.job(request.job_id).view()))

    @rpc_method("AdminService")
    async def ListJobs(self, request: admin_pb2.ListJobsRequest, context: grpc.aio.ServicerContext) -> Any:
        self.gate.admin(context)
        return admin_pb2.ListJobsResponse(jobs=[serde.job_to_pb(v) for v in self.jobs.views()])

    @rpc_method("AdminService")
    async def ListParticipants(self, request: admin_pb2.ListParticipantsRequest,
                               context: grpc.aio.ServicerContext) -> Any:
        self.gate.admin(context)
        people = self.jobs.participants(request.job_id)
        return admin_pb2.ListParticipantsResponse(participants=[serde.participant_to_pb(p) for p in people])

    @rpc_method("AdminService")
    async def ListFlags(self, request: admin_pb2.ListFlagsRequest, context: grpc.aio.ServicerContext) -> Any:
        self.gate.admin(context)
        return serde.flags_to_pb(self.jobs.job(request.job_id).flags())

    @rpc_method("AdminService")
    async def ListAudit(self, request: admin_pb2.ListAuditRequest, context: grpc.aio.ServicerContext) -> Any:
        self.gate.admin(context)
        job_id = self.jobs.job(request.job_id).job_id if request.job_id else ""
        return admin_pb2.ListAuditResponse(entries=[serde.audit_to_pb(a) for a in self.audit.entries(job_id,
                                                                                                    request.limit)])

    @rpc_method("AdminService")
    async def ReleaseParticipant(self, request: admin_pb2.ReleaseParticipantRequest,
                                 context: grpc.aio.ServicerContext) -> Any:
        identity = self.gate.admin(context)
        with self.audit.action(identity, "release", request.job_id, participant_id=request.participant_id) as entry:
            job = self.jobs.job(request.job_id)
            entry.job_id = job.job_id
            state = job.release(request.participant_id)
        self.notifier.notify()
        return admin_pb2.ReleaseParticipantResponse(state=state)

    @stream_method("AdminService")
    async def ExportPrompt(self, request: admin_pb2.ExportPromptRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        identity = self.gate.admin(context)
        version = request.version if request.HasField("version") else None
        with self.audit.action(identity, "export", request.job_id, version=version) as entry:
            job = self.jobs.job(request.job_id)
            entry.job_id = job.job_id
            payload = job.global_payload(None, version)
        for message in serde.payload_messages(payload, admin_pb2.ExportPromptResponse):
            if message.HasField("header"):
                message.job_config_toml = job.config_toml
            yield message
