"""The only meeting point of protobuf messages and domain types (``fedprompt.protocol``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

import numpy as np

from fedprompt.crypto.audit import Verdict
from fedprompt.errors import InvalidRequest
from fedprompt.protocol import (
    AuditView,
    FlagsView,
    FlagView,
    GramKeyState,
    JobDescription,
    JobView,
    JoinInfo,
    KeyState,
    ModelInfo,
    ParticipantView,
    Payload,
    PayloadHeader,
    PrivacyReport,
    RoundView,
    ScoreQuery,
    ScoreResult,
    Task,
    TaskKind,
    ThresholdKeyState,
)
from fedprompt.v1 import admin_pb2, common_pb2, model_service_pb2, participant_pb2
from fedprompt.wire.payload import CHUNK_BYTES, chunks

_TASK_TO_PB = {
    TaskKind.WAIT: participant_pb2.TASK_KIND_WAIT,
    TaskKind.TRAIN: participant_pb2.TASK_KIND_TRAIN,
    TaskKind.EVALUATE: participant_pb2.TASK_KIND_EVALUATE,
    TaskKind.DONE: participant_pb2.TASK_KIND_DONE,
    TaskKind.DECRYPT: participant_pb2.TASK_KIND_DECRYPT,
    TaskKind.CHECK: participant_pb2.TASK_KIND_CHECK,
    TaskKind.SHARE: participant_pb2.TASK_KIND_SHARE,
}
_PB_TO_TASK = {v: k for k, v in _TASK_TO_PB.items()}


def header_to_pb(h: PayloadHeader) -> common_pb2.PayloadHeader:
    return common_pb2.PayloadHeader(job_id=h.job_id, round=h.round, encoding=h.encoding, total_bytes=h.total_bytes,
                                    num_chunks=h.num_chunks, sha256=h.sha256, num_examples=h.num_examples,
                                    vector_size=h.vector_size)


def header_from_pb(pb: common_pb2.PayloadHeader) -> PayloadHeader:
    return PayloadHeader(job_id=pb.job_id, round=pb.round, encoding=pb.encoding, vector_size=pb.vector_size,
                         num_examples=pb.num_examples, total_bytes=pb.total_bytes, num_chunks=pb.num_chunks,
                         sha256=bytes(pb.sha256))


class PayloadStreamMessage(Protocol):
    """Any stream message with a ``oneof part { header, chunk }`` (uploads, downloads, exports)."""

    def __init__(self, *, header: common_pb2.PayloadHeader | None = None,
                 chunk: common_pb2.PayloadChunk | None = None) -> None: ...


M = TypeVar("M", bound=PayloadStreamMessage)


def payload_messages(payload: Payload, message: type[M], chunk_bytes: int = CHUNK_BYTES) -> Iterator[M]:
    """A payload as stream messages of type ``message``: the header first, then its chunks in order."""
    yield message(header=header_to_pb(payload.header(chunk_bytes)))
    for index, data in enumerate(chunks(payload.data, chunk_bytes)):
        yield message(chunk=common_pb2.PayloadChunk(index=index, data=data))


def task_to_pb(task: Task) -> participant_pb2.GetTaskResponse:
    return participant_pb2.GetTaskResponse(kind=_TASK_TO_PB[task.kind], round=task.round,
                                           global_version=task.global_version, deadline_unix=task.deadline,
                                           reason=task.reason, attempt=task.attempt)


def task_from_pb(pb: participant_pb2.GetTaskResponse) -> Task:
    return Task(_PB_TO_TASK.get(pb.kind, TaskKind.WAIT), pb.round, pb.global_version, pb.deadline_unix, pb.reason,
                pb.attempt)


def description_to_pb(d: JobDescription) -> participant_pb2.DescribeJobResponse:
    return participant_pb2.DescribeJobResponse(job_id=d.job_id, job_name=d.job_name, job_config_toml=d.config_toml,
                                               gram_defence=d.gram_defence, config_signature=d.config_signature,
                                               crl=d.crl)


def description_from_pb(pb: participant_pb2.DescribeJobResponse) -> JobDescription:
    return JobDescription(pb.job_id, pb.job_name, pb.job_config_toml, pb.gram_defence, pb.config_signature, pb.crl)


def join_to_pb(info: JoinInfo) -> participant_pb2.JoinResponse:
    return participant_pb2.JoinResponse(job_id=info.job_id, participant_id=info.participant_id,
                                        provide_initial_prompt=info.provide_initial_prompt, deal_keys=info.deal_keys)


def join_from_pb(pb: participant_pb2.JoinResponse) -> JoinInfo:
    return JoinInfo(pb.job_id, pb.participant_id, pb.provide_initial_prompt, pb.deal_keys)


def keys_to_pb(k: KeyState) -> participant_pb2.GetKeysResponse:
    return participant_pb2.GetKeysResponse(
        public_context=k.public_context, key_id=k.key_id, dealer_id=k.dealer_id, sealed_key=k.sealed_key,
        sealer_id=k.sealer_id, sealer_public_key=k.sealer_public_key,
        needs_key=_recipients(k.needs_key),
        owes_evaluation_keys=k.owes_evaluation_keys, dealer_attestation=k.dealer_attestation,
        sealer_attestation=k.sealer_attestation, crl=k.crl)


def keys_from_pb(pb: participant_pb2.GetKeysResponse) -> KeyState:
    return KeyState(bytes(pb.public_context), bytes(pb.key_id), pb.dealer_id, bytes(pb.sealed_key), pb.sealer_id,
                    bytes(pb.sealer_public_key),
                    _from_recipients(pb.needs_key),
                    pb.owes_evaluation_keys, bytes(pb.dealer_attestation), bytes(pb.sealer_attestation), bytes(pb.crl))


def _recipients(keys: tuple[tuple[str, bytes, bytes], ...]) -> list[participant_pb2.KeyRecipient]:
    return [participant_pb2.KeyRecipient(participant_id=p, exchange_public_key=key, attestation=att)
            for p, key, att in keys]


def _from_recipients(pb: Iterable[participant_pb2.KeyRecipient]) -> tuple[tuple[str, bytes, bytes], ...]:
    return tuple((r.participant_id, bytes(r.exchange_public_key), bytes(r.attestation)) for r in pb)


def threshold_keys_to_pb(k: ThresholdKeyState) -> participant_pb2.GetThresholdKeysResponse:
    return participant_pb2.GetThresholdKeysResponse(
        exchange=_recipients(k.exchange), shares=_recipients(k.shares),
        dealt=[participant_pb2.DealtShare(participant_id=d, sealed=blob) for d, blob in k.dealt],
        dealt_by_caller=k.dealt_by_caller, crl=k.crl, next_page=k.next_page)


def threshold_keys_from_pb(pb: participant_pb2.GetThresholdKeysResponse) -> ThresholdKeyState:
    return ThresholdKeyState(_from_recipients(pb.exchange), _from_recipients(pb.shares),
                             tuple((d.participant_id, bytes(d.sealed)) for d in pb.dealt), pb.dealt_by_caller,
                             bytes(pb.crl), pb.next_page)


def gram_keys_to_pb(k: GramKeyState) -> participant_pb2.GetGramKeysResponse:
    messages = [participant_pb2.GramKeyMessage(participant_id=who, round=1, element=g, message=m, attestation=a)
                for who, g, m, a in k.round1]
    messages += [participant_pb2.GramKeyMessage(participant_id=who, round=2, element=0, message=m, attestation=a)
                 for who, m, a in k.round2]
    return participant_pb2.GetGramKeysResponse(messages=messages, next_page=k.next_page)


def gram_keys_from_pb(pb: participant_pb2.GetGramKeysResponse) -> GramKeyState:
    """The page's messages by round (a round other than 1 or 2 is refused; members check the rest)."""
    if any(m.round not in (1, 2) for m in pb.messages):
        raise InvalidRequest("GetGramKeysResponse.messages holds a message of a round other than 1 or 2")
    return GramKeyState(tuple((m.participant_id, m.element, bytes(m.message), bytes(m.attestation))
                              for m in pb.messages if m.round == 1),
                        tuple((m.participant_id, bytes(m.message), bytes(m.attestation))
                              for m in pb.messages if m.round == 2), pb.next_page)


def dealing_to_pb(job_id: str, sealed: dict[str, bytes]) -> participant_pb2.DealSharesRequest:
    return participant_pb2.DealSharesRequest(job_id=job_id, sealed=[
        participant_pb2.DealtShare(participant_id=who, sealed=blob) for who, blob in sorted(sealed.items())])


def dealing_from_pb(pb: participant_pb2.DealSharesRequest) -> dict[str, bytes]:
    """The sealed sub-shares by recipient; a recipient named twice is refused (the relay checks the rest)."""
    sealed = {d.participant_id: bytes(d.sealed) for d in pb.sealed}
    if len(sealed) != len(pb.sealed):
        raise InvalidRequest("DealSharesRequest.sealed names a recipient twice")
    return sealed


def round_to_pb(r: RoundView) -> admin_pb2.RoundStatus:
    return admin_pb2.RoundStatus(round=r.round, state=r.state, attempt=r.attempt, selected=list(r.selected),
                                 reported=list(r.reported), opened_at=r.opened_at, closed_at=r.closed_at,
                                 bytes_up=r.bytes_up, bytes_down=r.bytes_down, metrics=r.metrics,
                                 metric_reports=r.metric_reports, rejected=list(r.rejected))


def round_from_pb(pb: admin_pb2.RoundStatus) -> RoundView:
    return RoundView(pb.round, pb.state, pb.attempt, tuple(pb.selected), tuple(pb.reported), pb.opened_at,
                     pb.closed_at, pb.bytes_up, pb.bytes_down, dict(pb.metrics), pb.metric_reports,
                     tuple(pb.rejected))


def job_to_pb(v: JobView) -> admin_pb2.JobStatus:
    return admin_pb2.JobStatus(job_id=v.job_id, name=v.name, state=v.state, current_round=v.current_round,
                               total_rounds=v.total_rounds, global_version=v.global_version,
                               participants=v.participants, aggregator=v.aggregator, vector_size=v.vector_size,
                               initial_metrics=v.initial_metrics, rounds=[round_to_pb(r) for r in v.rounds],
                               config_toml=v.config_toml, reason=v.reason, quarantined=list(v.quarantined))


def job_from_pb(pb: admin_pb2.JobStatus) -> JobView:
    return JobView(pb.job_id, pb.name, pb.state, pb.current_round, pb.total_rounds, pb.global_version,
                   pb.participants, pb.aggregator, pb.vector_size, pb.config_toml, dict(pb.initial_metrics),
                   tuple(round_from_pb(r) for r in pb.rounds), pb.reason, tuple(pb.quarantined))


def participant_to_pb(p: ParticipantView) -> admin_pb2.ParticipantInfo:
    return admin_pb2.ParticipantInfo(participant_id=p.participant_id, job_id=p.job_id, state=p.state,
                                     num_train_examples=p.num_train_examples, joined_at=p.joined_at,
                                     last_seen=p.last_seen, updates_accepted=p.updates_accepted, reason=p.reason,
                                     record_epsilon=p.record_epsilon)


def participant_from_pb(pb: admin_pb2.ParticipantInfo) -> ParticipantView:
    return ParticipantView(pb.participant_id, pb.job_id, pb.state, pb.num_train_examples, pb.joined_at,
                           pb.last_seen, pb.updates_accepted, pb.reason, pb.record_epsilon)


def gram_to_pb(p: Payload) -> participant_pb2.GetGramResponse:
    """A round's packed Gram ciphertext (``vector_size`` is the number of updates it covers)."""
    return participant_pb2.GetGramResponse(updates=p.vector_size, ciphertexts=p.data)


def gram_from_pb(job_id: str, round_: int, encoding: str, pb: participant_pb2.GetGramResponse) -> Payload:
    return Payload(job_id, round_, encoding, pb.updates, bytes(pb.ciphertexts))


def privacy_to_pb(r: PrivacyReport) -> participant_pb2.ReportPrivacyRequest:
    return participant_pb2.ReportPrivacyRequest(job_id=r.job_id, round=r.round, epsilon=r.epsilon, delta=r.delta,
                                                declined=r.declined, reason=r.reason)


def privacy_from_pb(pb: participant_pb2.ReportPrivacyRequest) -> PrivacyReport:
    return PrivacyReport(pb.job_id, pb.round, pb.epsilon, pb.delta, pb.declined, pb.reason)


def flags_to_pb(v: FlagsView) -> admin_pb2.ListFlagsResponse:
    return admin_pb2.ListFlagsResponse(
        flags=[admin_pb2.Flag(round=f.round, attempt=f.attempt, participant_id=f.participant_id, accepted=f.accepted,
                              score=f.score, score_name=f.score_name, defence=f.defence) for f in v.flags],
        quarantined=list(v.quarantined), streaks=v.streaks)


def flags_from_pb(pb: admin_pb2.ListFlagsResponse) -> FlagsView:
    return FlagsView(tuple(FlagView(f.round, f.attempt, f.participant_id, f.accepted, f.score, f.score_name, f.defence)
                           for f in pb.flags), tuple(pb.quarantined), dict(pb.streaks))


def audit_to_pb(v: AuditView) -> admin_pb2.AuditEntry:
    return admin_pb2.AuditEntry(seq=v.seq, at=v.at, identity=v.identity, action=v.action, job_id=v.job_id,
                                arguments_json=json.dumps(v.arguments, sort_keys=True), outcome=v.outcome)


def audit_from_pb(pb: admin_pb2.AuditEntry) -> AuditView:
    return AuditView(pb.seq, pb.at, pb.identity, pb.action, pb.job_id, json.loads(pb.arguments_json or "{}"),
                     pb.outcome)


def model_info_to_pb(info: ModelInfo) -> model_service_pb2.DescribeModelResponse:
    return model_service_pb2.DescribeModelResponse(
        model=info.model, kind=info.kind, hidden_size=info.hidden_size, embedding_std=info.embedding_std,
        max_batch=info.max_batch, max_prompt_tokens=info.max_prompt_tokens, max_length=info.max_length)


def model_info_from_pb(pb: model_service_pb2.DescribeModelResponse) -> ModelInfo:
    return ModelInfo(pb.model, pb.kind, pb.hidden_size, pb.embedding_std, pb.max_batch, pb.max_prompt_tokens,
                     pb.max_length)


def score_query_to_pb(q: ScoreQuery) -> model_service_pb2.ScoreRequest:
    return model_service_pb2.ScoreRequest(
        texts=list(q.texts), labels=list(q.labels), label_words=list(q.label_words), template=q.template,
        max_length=q.max_length, prompt_tokens=q.prompt_tokens, prompt=np.asarray(q.prompt, np.float32).ravel(),
        init_seed=q.init_seed)


def score_query_from_pb(pb: model_service_pb2.ScoreRequest) -> ScoreQuery:
    return ScoreQuery(texts=tuple(pb.texts), label_words=tuple(pb.label_words), template=pb.template,
                      max_length=pb.max_length, prompt_tokens=pb.prompt_tokens,
                      prompt=np.asarray(pb.prompt, dtype=np.float32), init_seed=pb.init_seed,
                      labels=tuple(pb.labels))


def score_result_to_pb(r: ScoreResult) -> model_service_pb2.ScoreResponse:
    logits = np.asarray(r.logits, np.float32)
    return model_service_pb2.ScoreResponse(logits=logits.ravel(), num_labels=logits.shape[1], loss=r.loss)


def score_result_from_pb(pb: model_service_pb2.ScoreResponse) -> ScoreResult:
    logits = np.asarray(pb.logits, dtype=np.float32)
    return ScoreResult(logits.reshape(-1, max(1, pb.num_labels)), pb.loss)


def verdicts_to_pb(job_id: str, round_: int, verdicts: list[Verdict]) -> participant_pb2.ReportCheckRequest:
    return participant_pb2.ReportCheckRequest(job_id=job_id, round=round_, verdicts=[
        participant_pb2.CheckVerdict(valid=v.valid, weight=v.weight) for v in verdicts])


def verdicts_from_pb(pb: participant_pb2.ReportCheckRequest) -> list[Verdict]:
    return [Verdict(v.valid, v.weight) for v in pb.verdicts]
