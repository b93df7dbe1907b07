"""Plain domain types of the coordinator <-> participant protocol (no grpc, no protobuf), and the
``CoordinatorLink`` interface through which a participant reaches its coordinator.

``fedprompt.wire.serde`` is the only module that converts between these and the generated protobuf classes.
The link has two implementations that run the same participant code: the daemon's ``GrpcLink`` (over the
network, ``fedprompt.participant.grpc_link``) and the simulation's ``LocalLink`` (direct calls into the
coordinator's domain objects, ``fedprompt.app.local_link``).
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from fedprompt.crypto.audit import Verdict
from fedprompt.errors import FedPromptError, InvalidRequest

#: What a job id may be.  Both sides name files with it (the coordinator ``checkpoints/<job_id>.safetensors``; a
#: site ``keys/<job_id>/``, ``dp/<job_id>.json``, ``personal/<job_id>.npy``), so it must be one harmless path
#: component wherever it came from: ASCII letters, digits, ``.``, ``_`` and ``-``, a letter or digit first (no
#: ``..``, no hidden file, no separator, no control character) and at most 128 bytes (far below the 255 a file
#: name may have, with the checkpoint's ``.tmp`` twin).  New ids are opaque (``new_job_id``); the pattern also
#: admits the ``<name>-<hex>`` ids of older stores whose names were plain.
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def new_job_id() -> str:
    """A fresh opaque job id, ``job-`` and 16 random hex digits.  A job's name (any text its config accepts)
    never becomes part of an id, hence of a file name: jobs are found by name through ``JobManager.job``."""
    return f"job-{secrets.token_hex(8)}"


def checked_job_id(job_id: str, source: str) -> str:
    """``job_id`` if it matches ``JOB_ID``; otherwise ``InvalidRequest`` naming ``source`` (who sent it or what
    needed it), before anything is named after it.  A participant checks every id its coordinator sends."""
    if not JOB_ID.fullmatch(job_id):
        raise InvalidRequest(f"{source}: job id {job_id[:80]!r} is not a safe file name component "
                             f"(letters, digits, '.', '_', '-', a letter or digit first, at most 128)")
    return job_id


class TaskKind(enum.Enum):
    WAIT = "wait"
    TRAIN = "train"
    EVALUATE = "evaluate"
    DONE = "done"
    DECRYPT = "decrypt"  # encrypted Gram defence: decrypt round ``round``'s Gram matrix (coordinator.hegram)
    CHECK = "check"  # encrypted jobs: check round ``round``'s candidate aggregate or masked updates (crypto.audit)
    SHARE = "share"  # threshold jobs: make a decryption share of round ``round``'s aggregate (coordinator.threshold)


@dataclass(frozen=True)
class Task:
    """What a participant should do next. TRAIN starts from ``global_version`` and submits for ``round``;
    ``attempt`` names the round attempt a threshold job's upload or decryption share is for."""

    kind: TaskKind
    round: int = 0
    global_version: int = 0
    deadline: float = 0.0
    reason: str = ""
    attempt: int = 0


@dataclass(frozen=True)
class Payload:
    """A prompt-sized vector (or its encryption) crossing the network: an update, a global version, an export.

    ``round`` is the training round of an update (0 = the initial global prompt) or the version of a global.
    """

    job_id: str
    round: int
    encoding: str
    vector_size: int
    data: bytes
    num_examples: int = 0

    def header(self, chunk_bytes: int) -> PayloadHeader:
        """The header announcing this payload as ``ceil(len / chunk_bytes)`` chunks (at least one)."""
        return PayloadHeader(
            job_id=self.job_id, round=self.round, encoding=self.encoding, vector_size=self.vector_size,
            num_examples=self.num_examples, total_bytes=len(self.data),
            num_chunks=max(1, -(-len(self.data) // chunk_bytes)), sha256=hashlib.sha256(self.data).digest(),
        )


@dataclass(frozen=True)
class PayloadHeader:
    """Announces a payload that follows as chunks; checked in full before any chunk is accepted."""

    job_id: str
    round: int
    encoding: str
    vector_size: int
    num_examples: int
    total_bytes: int
    num_chunks: int
    sha256: bytes


@dataclass(frozen=True)
class PrivacyReport:
    """A participant's record-level privacy spent on a job so far (epsilon at its delta), sent after each
    local training; ``declined`` says it refuses to train this round and later ones, ``reason`` says why."""

    job_id: str
    round: int
    epsilon: float
    delta: float
    declined: bool = False
    reason: str = ""


@dataclass(frozen=True)
class JobDescription:
    """What a participant learns of a job before joining.  ``gram_defence``: the job's aggregator decides from
    the Gram matrix of the updates; under HE the coordinator computes it on ciphertexts, so members use the
    one-multiplication CKKS chain and encrypt 0 in each update's weight slot (the coordinator adds the
    accepted weights)."""

    job_id: str
    job_name: str
    config_toml: str
    gram_defence: bool = False
    config_signature: bytes = b""  # the admin's signed statement of ``config_toml`` (``config.signed``), if any
    crl: bytes = b""  # the federation CRL the coordinator holds, as the CA signed it


@dataclass(frozen=True)
class JoinInfo:
    job_id: str
    participant_id: str
    provide_initial_prompt: bool = False
    deal_keys: bool = False


@dataclass(frozen=True)
class KeyState:
    """An encrypted job's key relay as one participant sees it (all of it is safe for the coordinator to hold).

    Each relayed key travels with its owner's signed attestation (``crypto.attest``): ``needs_key`` is
    (member, exchange key, attestation); ``crl`` is the federation's signed revocation list, if the door has one."""

    public_context: bytes = b""
    key_id: bytes = b""
    dealer_id: str = ""
    sealed_key: bytes = b""
    sealer_id: str = ""
    sealer_public_key: bytes = b""
    needs_key: tuple[tuple[str, bytes, bytes], ...] = ()
    owes_evaluation_keys: bool = False
    dealer_attestation: bytes = b""
    sealer_attestation: bytes = b""
    crl: bytes = b""


@dataclass(frozen=True)
class ThresholdKeyState:
    """A threshold job's key relay as one member sees it (``coordinator.threshold``; all safe to relay): every
    member's exchange key and public key share published so far, each as (member, key, attestation); the
    Shamir sub-shares dealt to this member as (dealer, sealed blob), which only it opens; whether this member
    has dealt; the federation's signed revocation list.  The relay serves it in pages (64 KB per share and
    sub-share: 13 MB at n = 100, beyond a gRPC message); ``next_page`` names the next one, 0 after the last."""

    exchange: tuple[tuple[str, bytes, bytes], ...] = ()
    shares: tuple[tuple[str, bytes, bytes], ...] = ()
    dealt: tuple[tuple[str, bytes], ...] = ()
    dealt_by_caller: bool = False
    crl: bytes = b""
    next_page: int = 0


#: The most pages one look at a threshold job's key relay follows (a relay that never ends is refused).
MAX_KEY_PAGES = 10_000
#: Sealed sub-shares per ``DealShares`` call: half the default 4 MiB gRPC message (64 KB each at N = 4096).
DEAL_BATCH_BYTES = 2 * 1024 * 1024


def deal_batches(sealed: dict[str, bytes], budget: int = DEAL_BATCH_BYTES) -> list[dict[str, bytes]]:
    """A dealing cut into batches of at most ``budget`` bytes of sealed blobs (one blob at least), by recipient:
    the relay takes a dealing in batches and counts it once every other member has its blob."""
    batches: list[dict[str, bytes]] = [{}]
    for who, blob in sorted(sealed.items()):
        if batches[-1] and sum(map(len, batches[-1].values())) + len(blob) > budget:
            batches.append({})
        batches[-1][who] = blob
    return batches


class _Page(Protocol):
    @property
    def next_page(self) -> int: ...


Paged = TypeVar("Paged", bound=_Page)


def _pages(page: Callable[[int], Paged]) -> list[Paged]:
    """Every page from page 0 on, each naming the next (0 after the last); a relay that skips or never ends is
    refused."""
    pages = [page(0)]
    while pages[-1].next_page:
        if pages[-1].next_page != len(pages) or len(pages) >= MAX_KEY_PAGES:
            raise FedPromptError(f"the key relay's page {len(pages) - 1} names page {pages[-1].next_page} next, "
                                 f"not {len(pages)} (at most {MAX_KEY_PAGES} pages)")
        pages.append(page(len(pages)))
    return pages


def all_pages(page: Callable[[int], ThresholdKeyState]) -> ThresholdKeyState:
    """The whole relay state from its pages (``page(k)`` fetches page ``k``), for every link: the lists joined,
    the CRL of page 0, whether the caller dealt as the last page says.  Pages are cut from the relay's state at
    each call, so an item published meanwhile may come twice (members key everything by member) or only at the
    next look."""
    pages = _pages(page)
    return ThresholdKeyState(tuple(x for p in pages for x in p.exchange), tuple(x for p in pages for x in p.shares),
                             tuple(x for p in pages for x in p.dealt), pages[-1].dealt_by_caller, pages[0].crl)


@dataclass(frozen=True)
class RoundView:
    round: int
    state: str
    attempt: int
    selected: tuple[str, ...]
    reported: tuple[str, ...]
    opened_at: float
    closed_at: float
    bytes_up: int
    bytes_down: int
    metrics: dict[str, float] = field(default_factory=dict)
    metric_reports: int = 0
    rejected: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobView:
    job_id: str
    name: str
    state: str
    current_round: int
    total_rounds: int
    global_version: int
    participants: int
    aggregator: str
    vector_size: int
    config_toml: str
    initial_metrics: dict[str, float] = field(default_factory=dict)
    rounds: tuple[RoundView, ...] = ()
    reason: str = ""
    quarantined: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParticipantView:
    participant_id: str
    job_id: str
    state: str
    num_train_examples: int
    joined_at: float
    last_seen: float
    updates_accepted: int
    reason: str = ""
    record_epsilon: float = 0.0


@dataclass(frozen=True)
class AuditView:
    """One admin action as the coordinator recorded it: ``outcome`` is ``ok`` or the refusing error's class."""

    seq: int
    at: float
    identity: str
    action: str
    job_id: str
    arguments: dict[str, object]
    outcome: str


@dataclass(frozen=True)
class FlagView:
    """One participant's robust-aggregation verdict in one round attempt."""

    round: int
    attempt: int
    participant_id: str
    accepted: bool
    score: float
    score_name: str
    defence: str


@dataclass(frozen=True)
class FlagsView:
    """A job's robust-aggregation record: every verdict, who is quarantined, and current rejection streaks."""

    flags: tuple[FlagView, ...]
    quarantined: tuple[str, ...]
    streaks: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    """What a query-only model service hosts, and the limits it enforces on each query."""

    model: str
    kind: str
    hidden_size: int
    embedding_std: float
    max_batch: int
    max_prompt_tokens: int
    max_length: int


@dataclass(frozen=True)
class ScoreQuery:
    """Score ``texts`` for a task under the soft prompt ``initial(init_seed) + prompt``.

    ``prompt`` is ``prompt_tokens x hidden_size`` floats (flat); ``labels`` is empty or one index per text.
    """

    texts: tuple[str, ...]
    label_words: tuple[str, ...]
    template: str
    max_length: int
    prompt_tokens: int
    prompt: np.ndarray
    init_seed: int
    labels: tuple[int, ...] = ()


@dataclass(frozen=True)
class ScoreResult:
    """Label logits ``(len(texts), num_labels)`` and, when labels were given, the mean cross-entropy."""

    logits: np.ndarray
    loss: float = 0.0


class CoordinatorLink(Protocol):
    """How a participant reaches its coordinator: one call per participant RPC, domain types in and out."""

    def describe(self, job: str) -> JobDescription: ...

    def join(self, job: str, num_train: int, num_test: int, vector_size: int,
             exchange_public_key: bytes = b"", exchange_attestation: bytes = b"") -> JoinInfo: ...

    def get_task(self, job_id: str, wait_s: float) -> Task: ...

    def download(self, job_id: str, version: int) -> Payload: ...

    def upload(self, payload: Payload) -> None: ...

    def report(self, job_id: str, version: int, metrics: dict[str, float], num_examples: int) -> None: ...

    def publish_context(self, job_id: str, public_context: bytes, key_id: bytes,
                        attestation: bytes = b"") -> None: ...

    def share_key(self, job_id: str, recipient_id: str, sealed_key: bytes) -> None: ...

    def keys(self, job_id: str) -> KeyState: ...

    def report_key_fault(self, job_id: str, reason: str) -> None: ...

    def report_privacy(self, report: PrivacyReport) -> None: ...

    def gram(self, job_id: str, round_: int) -> Payload: ...

    def report_gram(self, job_id: str, round_: int, scalars: list[float]) -> None: ...

    def check_bundle(self, job_id: str, round_: int) -> Payload: ...

    def report_check(self, job_id: str, round_: int, verdicts: list[Verdict]) -> None: ...

    def threshold_keys(self, job_id: str) -> ThresholdKeyState: ...

    def publish_share(self, job_id: str, share: bytes, attestation: bytes) -> None: ...

    def deal(self, job_id: str, sealed: dict[str, bytes]) -> None: ...

    def decryption(self, job_id: str, round_: int) -> Payload: ...

    def submit_share(self, job_id: str, round_: int, attempt: int, share: bytes) -> None: ...

    def gram_keys(self, job_id: str) -> GramKeyState: ...

    def publish_gram_key(self, job_id: str, round_: int, element: int, message: bytes, attestation: bytes) -> None: ...


class ThresholdLink(Protocol):
    """A member's calls to the key relay of a threshold job (``coordinator.threshold.ThresholdRelay``)."""

    def threshold_keys(self, job_id: str) -> ThresholdKeyState: ...

    def publish_share(self, job_id: str, share: bytes, attestation: bytes) -> None: ...

    def deal(self, job_id: str, sealed: dict[str, bytes]) -> None: ...


@dataclass(frozen=True)
class GramKeyState:
    """A threshold job's relayed Gram evaluation-key messages (``coordinator.threshold_gramkeys``): ``round1`` as
    (member, element, message, attestation), ``round2`` as (member, message, attestation), in order of arrival,
    served in pages (n x 11.8 MB in all); ``next_page`` names the next one, 0 after the last."""

    round1: tuple[tuple[str, int, bytes, bytes], ...] = ()
    round2: tuple[tuple[str, bytes, bytes], ...] = ()
    next_page: int = 0


def all_gram_pages(page: Callable[[int], GramKeyState]) -> GramKeyState:
    """The whole Gram key relay from its pages (``coordinator.threshold_gramkeys``: a message is 0.8 to 1.6 MB)."""
    pages = _pages(page)
    return GramKeyState(tuple(x for p in pages for x in p.round1), tuple(x for p in pages for x in p.round2))


class GramKeyLink(Protocol):
    """A member's calls to the Gram evaluation-key relay of a threshold job."""

    def gram_keys(self, job_id: str) -> GramKeyState: ...

    def publish_gram_key(self, job_id: str, round_: int, element: int, message: bytes, attestation: bytes) -> None: ...
