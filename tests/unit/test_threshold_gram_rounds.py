"""The Gram defence of a threshold job as domain objects (no network): three members (t = 2) with real
certificates set up the collective Gram evaluation keys through the coordinator's relay
(``coordinator.threshold_gramkeys``, ``participant.threshold_gramkeys``): attested messages, each member summing
the first rounds and assembling its own keys, the coordinator its copy.  Then rounds
(``coordinator.threshold_gramround``): attested public-key uploads, t members each recomputing the Gram and
sharing on it, a poisoned update rejected on the decrypted scalars as in plaintext, the accepted sum decrypted
through the threshold path.  Swapped or foreign messages and uploads are refused, a member restarted between
the key rounds keeps its ephemeral secret, and a restarted coordinator replays what it stored.  Real SEAL."""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedprompt.config import RobustSection
from fedprompt.coordinator.aggregation import GramDefence, make_aggregator
from fedprompt.coordinator.robust import gram
from fedprompt.coordinator.store import Store
from fedprompt.coordinator.threshold import PAGE_BYTES, RoundMemory, ThresholdRelay
from fedprompt.coordinator.threshold_gramjob import (
    GramDecryption,
    GramThresholdFold,
    GramThresholdKeyRelay,
    GramThresholdRound,
)
from fedprompt.coordinator.threshold_gramkeys import GramKeyRelay
from fedprompt.coordinator.threshold_gramround import ThresholdGramRound
from fedprompt.crypto import threshold_gram, threshold_masked
from fedprompt.crypto.attest import KeyCredentials, digest
from fedprompt.crypto.errors import AttestationError, InvalidCiphertext, InvalidValue
from fedprompt.crypto.pki import CertificateAuthority
from fedprompt.crypto.sealing import new_exchange_key, public_bytes
from fedprompt.crypto.threshold_seeded import UploadRound
from fedprompt.errors import DuplicateUpdate, InvalidUpdate, NotSelected, PreconditionFailed, RelayRefused
from fedprompt.participant.keys import key_dir
from fedprompt.participant.threshold_gramkeys import EPHEMERAL, GramKeys
from fedprompt.participant.threshold_keys import ThresholdKeys
from fedprompt.protocol import GramKeyState, all_gram_pages
from fedprompt.wire.threshold_gram import GRAM, SUM, pack_request, pack_upload, unpack_request
from tests.thresholds import RelayDoor

JOB = "job-gram"
MEMBERS = ("participant:a", "participant:b", "participant:c")
PARAMS = threshold_gram.gram_threshold_params(members=3, max_decryptions=8)  # small Q: the budget test reaches it
SIZE = 2000
NORM_BOUND = 1000.0


class GramDoor:
    """One member's calls to the Gram key relay, with its identity; ``served`` may alter what it reads."""

    def __init__(self, relay: GramKeyRelay, who: str,
                 served: Callable[[GramKeyState], GramKeyState] = lambda state: state) -> None:
        self.relay, self.who, self.served = relay, who, served

    def gram_keys(self, job_id: str) -> GramKeyState:
        return self.served(all_gram_pages(self.relay.state))

    def publish_gram_key(self, job_id: str, round_: int, element: int, message: bytes, attestation: bytes) -> None:
        self.relay.publish(self.who, round_, element, message, attestation)


class Federation:
    def __init__(self, root: Path) -> None:
        ca = CertificateAuthority.init(root / "ca")
        self.root, self.relay = root, ThresholdRelay(JOB, MEMBERS, PARAMS)
        self.store = Store(":memory:")
        self.grams = GramKeyRelay(self.relay, self.store)
        self.credentials, self.exchange, self.keys = {}, {}, {}
        for who in MEMBERS:
            key, cert = ca.issue(who, root / "certs" / who.split(":")[1])
            self.credentials[who] = KeyCredentials.from_files(ca.ca_cert_path, cert, key)
            self.exchange[who] = new_exchange_key()
            self.keys[who] = self.start(who)
            exchange = public_bytes(self.exchange[who])
            self.relay.register(who, exchange, self.credentials[who].signer.sign(JOB, "exchange", (digest(exchange),)))
        for _ in range(3):
            done = [keys.refresh(RelayDoor(self.relay, who)) for who, keys in self.keys.items()]
        assert all(done) and self.relay.ready
        self.gram = {who: GramKeys(keys) for who, keys in self.keys.items()}

    def start(self, who: str, min_uploaders: int = 2) -> ThresholdKeys:
        """A member's key material, from its state directory when it has one (a restart); ``min_uploaders``: the
        job's ``min_participants`` (2 in the fixture's job)."""
        return ThresholdKeys(JOB, MEMBERS, who, PARAMS, self.exchange[who], self.root / who.split(":")[1],
                             self.credentials[who], min_uploaders)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """Gram key setup through the relay: round 1 of every member, member a restarted before round 2 (its
    ephemeral secret reloaded from its state directory), then round 2 and the assembly."""
    fed = Federation(tmp_path_factory.mktemp("gram"))
    a = MEMBERS[0]
    with pytest.raises(PreconditionFailed, match="every first round"):
        fed.grams.publish(a, 2, 0, b"x", b"x")
    assert not fed.gram[a].refresh(GramDoor(fed.grams, a))  # round 1 sent, the others' not in yet
    assert (key_dir(fed.root / "a", JOB) / EPHEMERAL).exists()
    fed.keys[a] = fed.start(a)
    fed.gram[a] = GramKeys(fed.keys[a])
    for _ in range(3):
        done = [gram.refresh(GramDoor(fed.grams, who)) for who, gram in fed.gram.items()]
    assert all(done) and fed.grams.ready
    return fed


def _updates(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.normal(0, 1, SIZE) * 10 for _ in MEMBERS]


def test_members_assemble_their_own_gram_keys_and_t_of_them_decrypt_the_coordinators_gram(fed: Federation) -> None:
    """Every member's own evaluator and the coordinator's compute the same packed Gram ciphertext (deterministic
    SEAL evaluation on identical keys); two members' shares on their own recomputation combine on the
    coordinator's payload into the inner products."""
    xs = _updates(np.random.default_rng(0))
    context = fed.keys[MEMBERS[1]].context
    uploads = [threshold_gram.encrypt(context, x, NORM_BOUND) for x in xs]
    evaluators = [fed.grams.require(), *(g.evaluator for g in fed.gram.values())]
    payloads = {e.gram([e.context.parse(u, context.key_id, SIZE) for u in uploads]) for e in evaluators if e}
    assert len(evaluators) == 4 and len(payloads) == 1
    decryptors = [1, 2]
    shares = []
    for j in decryptors:
        who = MEMBERS[j - 1]
        key, own = fed.keys[who].key, fed.gram[who].evaluator
        assert key is not None and own is not None
        shares.append(threshold_gram.decryption_share(fed.keys[who].context, key, own, uploads, SIZE, decryptors,
                                                      NORM_BOUND))
    scalars = threshold_gram.combine(context, payloads.pop(), len(uploads), shares, NORM_BOUND)
    expected = [float(xs[u] @ xs[v]) for u, v in threshold_gram.pairs(len(xs))]
    error = threshold_gram.gram_error(PARAMS, len(xs), NORM_BOUND)
    assert np.abs(scalars - expected).max() <= error


def test_member_state_is_owner_only_and_the_ephemeral_secret_is_gone_after_round_2(fed: Federation) -> None:
    for who in MEMBERS:
        folder = key_dir(fed.root / who.split(":")[1], JOB)
        names = {f.name for f in folder.iterdir()}
        assert EPHEMERAL not in names and {"gram.round1.att", "gram.round2.0"} <= names
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in folder.iterdir())


def test_the_relay_refuses_foreign_and_altered_messages_and_takes_an_identical_resend(fed: Federation) -> None:
    a, b = MEMBERS[0], MEMBERS[1]
    rows = {(who, g): (msg, att) for who, g, msg, att in all_gram_pages(fed.grams.state).round1}
    message, attestation = rows[(a, 0)]
    fed.grams.publish(a, 1, 0, message, attestation)  # a restarted member resends what it stored: a no-op
    with pytest.raises(DuplicateUpdate):
        fed.grams.publish(a, 1, 0, rows[(b, 0)][0], attestation)
    relay = GramKeyRelay(fed.relay)  # a fresh relay: nothing held yet
    with pytest.raises(InvalidUpdate, match="refused"):  # b's message sent as a's: wrong member index
        relay.publish(a, 1, 0, rows[(b, 0)][0], attestation)
    with pytest.raises(InvalidUpdate, match="attested by"):  # a's message with b's attestation
        relay.publish(a, 1, 0, message, rows[(b, 0)][1])
    with pytest.raises(InvalidUpdate, match="not the one it signed"):  # signed by a, but over other digests
        relay.publish(a, 1, 0, message, _swapped_attestation(fed, a))
    with pytest.raises(InvalidUpdate, match="no Gram"):
        relay.publish(a, 1, 12345, message, attestation)


def _swapped_attestation(fed: Federation, who: str) -> bytes:
    """``who``'s round-1 attestation over its messages with the first two digests swapped (signed by it)."""
    rows = [(g, msg) for m, g, msg, _ in all_gram_pages(fed.grams.state).round1 if m == who]
    digests = [digest(msg) for _, msg in rows]
    digests[0], digests[1] = digests[1], digests[0]
    return fed.credentials[who].signer.sign(JOB, "eval-key-round1", tuple(digests))


def test_a_member_refuses_a_swapped_message_and_a_restarted_coordinator_replays_the_keys(fed: Federation) -> None:
    """The relay serves b's first-round message in c's place: a member assembling its keys refuses it
    (c's attestation does not cover it).  A coordinator restarted from its store reassembles the same keys."""
    b, c = MEMBERS[1], MEMBERS[2]

    def swap(state: GramKeyState) -> GramKeyState:
        b_msg = {g: msg for who, g, msg, _ in state.round1 if who == b}
        return GramKeyState(tuple((who, g, b_msg[g] if who == c else msg, att) for who, g, msg, att in state.round1),
                            state.round2)

    with pytest.raises(AttestationError, match="not the key it signed"):
        GramKeys(fed.keys[MEMBERS[0]]).refresh(GramDoor(fed.grams, MEMBERS[0], swap))
    restored = GramKeyRelay.restore(fed.relay, fed.store)
    whole = [all_gram_pages(relay.state) for relay in (restored, fed.grams)]
    assert restored.ready and [sorted(w.round1) for w in whole] == [sorted(whole[1].round1)] * 2
    assert [sorted(w.round2) for w in whole] == [sorted(whole[1].round2)] * 2


def test_the_gram_key_relay_is_served_in_pages_under_the_message_limit(fed: Federation) -> None:
    """45 messages of 0.8 to 1.6 MB at n = 3: pages of at most 2 MiB of key material (a larger message alone),
    joined into the whole relay; a page past the last is refused."""
    relay = fed.grams
    pages: list[GramKeyState] = []
    while not pages or pages[-1].next_page:
        pages.append(relay.state(len(pages)))
    for page in pages:
        sizes = [len(w) + len(m) + len(a) for w, _, m, a in page.round1] + [len(w) + len(m) + len(a)
                                                                             for w, m, a in page.round2]
        assert sum(sizes) <= PAGE_BYTES or len(sizes) == 1
    whole = all_gram_pages(relay.state)
    assert len(pages) > 1 and len(whole.round1) == 3 * len(threshold_gram.round1_elements(PARAMS))
    assert len(whole.round2) == 3 and whole.next_page == 0
    with pytest.raises(InvalidUpdate, match="pages"):
        relay.state(len(pages))



def _attempt(fed: Federation, round_: int, uploads: dict[str, tuple[np.ndarray, float]],
             attempt: int = 0) -> ThresholdGramRound:
    """A round attempt to which members upload ``weight * delta`` with their attestations, closed all online."""
    machine = ThresholdGramRound(fed.grams, round_, SIZE, NORM_BOUND, attempt)
    for who, (delta, weight) in uploads.items():
        upload, attestation = fed.gram[who].encrypt(delta * weight, round_, attempt, NORM_BOUND)
        machine.add(who, attempt, upload, weight, attestation)
    assert machine.close(lambda who: True) is not None
    return machine


def _decrypt(fed: Federation, machine: ThresholdGramRound) -> None:
    for who in machine.decryptors:
        machine.submit(who, fed.gram[who].decryption_share(machine.round, machine.attempt, machine.request(who), SIZE,
                                                           machine.decryptors, NORM_BOUND))


def test_a_poisoned_update_is_rejected_on_threshold_decrypted_gram_scalars_as_in_plaintext(fed: Federation) -> None:
    """Two honest members and a scaled, flipped attacker: t members decrypt the Gram scalars of the attested
    uploads, the norm-bound rule rejects the attacker as the plaintext rule does on the same deltas, and the sum
    of the accepted uploads, with their weights added by the coordinator, decrypts through the threshold path."""
    rng = np.random.default_rng(3)
    direction = rng.normal(0, 1, SIZE) / np.sqrt(SIZE)
    a, b, c = MEMBERS
    deltas = {a: direction + rng.normal(0, 0.3, SIZE) / np.sqrt(SIZE),
              b: direction + rng.normal(0, 0.3, SIZE) / np.sqrt(SIZE)}
    deltas[c] = -20 * deltas[a]
    weights = {a: 10.0, b: 20.0, c: 15.0}
    machine = _attempt(fed, 1, {who: (deltas[who], weights[who]) for who in MEMBERS})
    _decrypt(fed, machine)
    robust = RobustSection(max_malicious=1, norm_factor=2.0)
    defence = make_aggregator("norm_bound", robust)
    assert isinstance(defence, GramDefence)
    verdict, metrics, breached = machine.judge(defence)
    expected = defence.decide(gram(np.stack([deltas[who] for who in machine.order])))
    assert breached == () and verdict.rejected == (c,) == tuple(machine.order[i] for i in expected.rejected)
    assert sorted(verdict.accepted) == [a, b] and metrics["rejected"] == 1.0
    total = machine.fold(verdict.accepted)
    accepted = {who: machine.weights[who] for who in verdict.accepted}
    masked = {who: fed.gram[who].sum_share(1, 0, machine.request(who), accepted, SIZE, machine.decryptors)
              for who in machine.decryptors}
    combined = machine.download(total, masked)
    for who in MEMBERS:  # every member opens the download; the coordinator, without the group key, cannot
        vector, weight = fed.gram[who].open_sum(1, 0, combined, SIZE, machine.decryptors)
        assert weight == pytest.approx(30.0, abs=1e-3)
        assert np.abs(vector - (10 * deltas[a] + 20 * deltas[b])).max() <= 1e-3
    with pytest.raises(InvalidCiphertext):
        threshold_masked.open_combined_sum(fed.relay.context, combined, SIZE, bytes(32),
                                           UploadRound(fed.relay.seed, 1, 0), [1, 2])
    first = machine.decryptors[0]
    with pytest.raises(InvalidValue, match="already used"):
        fed.gram[first].sum_share(1, 0, machine.request(first), accepted, SIZE, machine.decryptors)
    with pytest.raises(RelayRefused, match="some of its attested uploads"):  # a name the Gram did not cover
        fed.gram[first].sum_share(1, 0, machine.request(first)[1:], accepted, SIZE, machine.decryptors)


def test_decryptors_refuse_a_coordinators_upload_a_repeated_uploader_and_a_second_share(fed: Federation) -> None:
    """The coordinator can encrypt under the collective key but not sign for a member: a relayed upload swapped
    for its own is refused by the relay's claim check and by every decryptor; so is an uploader named twice and
    a second share of one round attempt.  An uploader past the norm bound is named and rejected."""
    a, b, c = MEMBERS
    rng = np.random.default_rng(4)
    machine = _attempt(fed, 2, {who: (rng.normal(0, 1, SIZE), 1.0) for who in (a, b)})
    forged = threshold_gram.encrypt(fed.keys[a].context, np.eye(1, SIZE, 7).ravel(), NORM_BOUND)
    with pytest.raises(InvalidUpdate, match="not the key it signed"):
        ThresholdGramRound(fed.grams, 2, SIZE, NORM_BOUND).add(a, 0, forged, 1.0, machine.uploads[a][1])
    decryptor = machine.decryptors[0]
    request = machine.request(decryptor)
    swapped = [(request[0][0], forged, request[0][2]), request[1]]
    with pytest.raises(AttestationError, match="not the key it signed"):
        fed.gram[decryptor].decryption_share(2, 0, swapped, SIZE, machine.decryptors, NORM_BOUND)
    with pytest.raises(InvalidValue, match="twice"):
        fed.gram[decryptor].decryption_share(2, 0, [request[0], request[0]], SIZE, machine.decryptors, NORM_BOUND)
    share = fed.gram[decryptor].decryption_share(2, 0, request, SIZE, machine.decryptors, NORM_BOUND)
    other = machine.decryptors[1]
    with pytest.raises(InvalidUpdate, match=f"share of {other} is refused"):  # sent under another member's name
        machine.submit(other, share)
    machine.submit(decryptor, share)
    with pytest.raises(InvalidValue, match="already used"):
        fed.gram[decryptor].decryption_share(2, 0, request, SIZE, machine.decryptors, NORM_BOUND)
    machine.submit(other, fed.gram[other].decryption_share(2, 0, machine.request(other), SIZE, machine.decryptors,
                                                           NORM_BOUND))
    assert machine.complete and len(machine.scalars()) == 3
    # an uploader that bypasses the bound (encrypting directly) is named by its decrypted diagonal
    over = ThresholdGramRound(fed.grams, 3, SIZE, NORM_BOUND)
    for who in (a, b):
        upload, attestation = fed.gram[who].encrypt(rng.normal(0, 1, SIZE), 3, 0, NORM_BOUND)
        over.add(who, 0, upload, 1.0, attestation)
    big = fed.keys[c].context.encrypt(np.full(SIZE, 2 * NORM_BOUND / np.sqrt(SIZE)), 0.0)
    over.add(c, 0, big, 1.0, fed.keys[c]._sign("gram-upload", threshold_gram.upload_digests(big, 3, 0)))
    assert over.close(lambda who: True) is not None
    _decrypt(fed, over)
    defence = make_aggregator("multi_krum", RobustSection(max_malicious=0))
    assert isinstance(defence, GramDefence)
    verdict, _, breached = over.judge(defence)
    assert breached == (c,) and c in verdict.rejected


def _job_attempt(fed: Federation, round_: int, minimum: int, seed: int
                 ) -> tuple[GramThresholdRound, GramDecryption, dict[str, np.ndarray]]:
    """A round attempt through the job's hook (``coordinator.threshold_gramjob``) of a job whose
    ``min_participants`` is ``minimum``, judged by norm bounding: a and b upload honest deltas, c a boosted copy
    of a's, each in its payload container; closed with every member online."""
    a, b, c = MEMBERS
    keys = GramThresholdKeyRelay(JOB, fed.relay, fed.store)
    keys.grams = fed.grams
    defence = make_aggregator("norm_bound", RobustSection(max_malicious=1, norm_factor=2.0))
    assert isinstance(defence, GramDefence)
    rng = np.random.default_rng(seed)
    deltas = {who: rng.normal(0, 1, SIZE) / np.sqrt(SIZE) for who in (a, b)}
    deltas[c] = 30 * deltas[a]
    machine = GramThresholdRound(keys, round_, SIZE, 0, RoundMemory(), NORM_BOUND, defence, minimum)
    for who, delta in deltas.items():
        machine.add(who, 0, pack_upload(*fed.gram[who].encrypt(delta, round_, 0, NORM_BOUND)), 1.0)
    decryption = machine.close(lambda who: True)
    assert isinstance(decryption, GramDecryption)
    return machine, decryption, deltas


def test_the_jobs_two_phase_decryption_stores_a_version_every_member_opens(fed: Federation) -> None:
    """The job's hook (``coordinator.threshold_gramjob``) on the same keys: uploads in their payload container,
    t decryptors answer the Gram request, then (after the verdict) the sum request; a malformed sum share is
    refused on arrival; the stored version (``wire.threshold``) opens at every member to the accepted sum."""
    a, b, c = MEMBERS
    _, decryption, deltas = _job_attempt(fed, 200, 2, 5)
    for phase in (GRAM, SUM):
        for who in decryption.decryptors:
            request = unpack_request(pack_request(decryption.request(who)))
            assert request.phase == phase and [u for u, _, _ in request.uploads] == [a, b, c]
            share = fed.gram[who].answer(request, SIZE, NORM_BOUND)
            if phase == SUM and who == decryption.decryptors[0]:
                with pytest.raises(InvalidUpdate, match="masked share"):
                    decryption.submit(who, share[:-8])
            decryption.submit(who, share)
    assert decryption.complete and decryption.uploaders == (a, b) and decryption.declared_weight == 2.0
    version = decryption.version()
    for who in MEMBERS:
        vector, weight = fed.gram[who].open_version(version, SIZE)
        assert weight == pytest.approx(2.0, abs=1e-3) and np.abs(vector - deltas[a] - deltas[b]).max() <= 1e-3


def test_a_member_decrypts_one_accepted_set_per_round_across_attempts_and_a_restart(fed: Federation) -> None:
    """The cross-attempt differencing of ``docs/he.md``, "The uploader floor", on a Gram job's accepted sums:
    without DP members upload the same deltas in every attempt, so a coordinator that had attempt 0's accepted
    sum over {a, b, c} decrypted and asks attempt 1's over {a, b} would learn c's update as the difference.
    Every decryptor refuses it, spending nothing, and so does one restarted from its state directory in attempt 2;
    the same accepted set again is decrypted, to the same sum."""
    a, b, c = MEMBERS
    round_, rng = 400, np.random.default_rng(6)
    deltas = {who: rng.normal(0, 1, SIZE) / np.sqrt(SIZE) for who in MEMBERS}
    everyone, fewer = dict.fromkeys(MEMBERS, 1.0), {a: 1.0, b: 1.0}
    refused = re.escape("names accepted uploaders 1,2 (member indices), but this member made a decryption share "
                        "of the round for 1,2,3")
    sums = []
    for attempt in (0, 1):
        machine = _attempt(fed, round_, {who: (deltas[who], 1.0) for who in MEMBERS}, attempt)
        for who in machine.decryptors if attempt else ():
            spent = fed.gram[who].spent
            with pytest.raises(RelayRefused, match=refused):
                fed.gram[who].sum_share(round_, attempt, machine.request(who), fewer, SIZE, machine.decryptors)
            assert fed.gram[who].spent == spent
        masked = {who: fed.gram[who].sum_share(round_, attempt, machine.request(who), everyone, SIZE,
                                               machine.decryptors) for who in machine.decryptors}
        combined = machine.download(machine.fold(MEMBERS), masked)
        sums.append(fed.gram[c].open_sum(round_, attempt, combined, SIZE, machine.decryptors)[0])
    assert np.abs(sums[0] - sums[1]).max() <= 1e-3 and np.abs(sums[0] - sum(deltas.values())).max() <= 1e-3
    who = machine.decryptors[0]
    restarted = GramKeys(fed.start(who))
    assert restarted.refresh(GramDoor(fed.grams, who))
    uploads = [(u, *fed.gram[u].encrypt(deltas[u], round_, 2, NORM_BOUND)) for u in MEMBERS]
    with pytest.raises(RelayRefused, match=refused):
        restarted.sum_share(round_, 2, uploads, fewer, SIZE, machine.decryptors)


def test_a_verdict_keeping_fewer_than_min_participants_fails_the_attempt_before_any_sum_share(
        fed: Federation) -> None:
    """The honest coordinator's side of the floor: in a job with ``job.min_participants`` = 3, norm bounding
    rejects c of three uploads, and members decrypt no sum of the two left; so the verdict fails the attempt (the
    fold's refusal, which the round machine turns into a failed attempt and a new one, as for a round short of
    ``min_participants``, and pauses the job at ``max_attempts``) and no decryptor is asked for a sum share."""
    machine, decryption, _ = _job_attempt(fed, 500, 3, 8)
    for who in decryption.decryptors:
        decryption.submit(who, fed.gram[who].answer(decryption.request(who), SIZE, NORM_BOUND))
    assert decryption.complete and decryption.phase == GRAM and decryption.missing == ()
    assert "norm_bound accepted 2 of the 3 updates of round 500, fewer than job.min_participants = 3" in \
        decryption.failure
    for who in decryption.decryptors:
        with pytest.raises(NotSelected):
            decryption.request(who)
    outcome = GramThresholdFold(machine, float).close()
    assert outcome.refusal == decryption.failure and outcome.data == b""


def test_decryptors_refuse_an_accepted_set_below_the_floor_and_the_coalition_gets_no_share(
        fed: Federation) -> None:
    """The accepted sum holds the uploader floor too (``ThresholdKeys._check_uploaders``): in a job with
    ``job.min_participants`` = 3 a coordinator colluding with c names {a, c} of three attested uploads as the
    accepted set, whose decrypted sum less c's own update would be a's.  With t = 2 it needs an honest member's
    share besides c's: b, restarted with the job's floor, refuses it (``RelayRefused``, which it reports),
    spending nothing and recording no accepted set, so the coalition holds c's share alone.  The three accepted
    uploads b shares on."""
    a, b, c = MEMBERS
    round_, rng = 600, np.random.default_rng(9)
    uploads = [(u, *fed.gram[u].encrypt(rng.normal(0, 1, SIZE), round_, 0, NORM_BOUND)) for u in MEMBERS]
    honest = GramKeys(fed.start(b, min_uploaders=3))
    assert honest.refresh(GramDoor(fed.grams, b))
    spent = honest.spent
    with pytest.raises(RelayRefused, match=re.escape("names 2 distinct accepted uploader(s), fewer than the job's "
                                                     "minimum of 3")):
        honest.sum_share(round_, 0, uploads, {a: 1.0, c: 1.0}, SIZE, (b, c))
    assert honest.spent == spent and not any(label.startswith(f"set:{round_}:") for label in honest.keys._used)
    honest.sum_share(round_, 0, uploads, dict.fromkeys(MEMBERS, 1.0), SIZE, (b, c))
    assert honest.spent == spent + 1


def test_gram_and_sum_shares_count_against_max_decryptions_across_a_restart(fed: Federation) -> None:
    """No member shares on the uploads of fewer than ``job.min_participants`` uploaders, nor on a sum of fewer
    accepted ones (one: that member's update).  Every Gram or sum share spends decryptions of the member's one
    budget ``Q`` (the flooding's sizing), kept on disk: a restarted member (its keys reassembled from the relay)
    counts the same, and the share that would pass ``Q`` is refused by name."""
    b, c = MEMBERS[1], MEMBERS[2]
    round_ = 100
    both = {b: 1.0, c: 1.0}

    def own(round_: int) -> list[tuple[str, bytes, bytes]]:
        return [(who, *fed.gram[who].encrypt(np.zeros(SIZE), round_, 0, NORM_BOUND)) for who in (b, c)]

    with pytest.raises(RelayRefused, match="fewer than the job's minimum of 2"):  # the uploader floor
        fed.gram[c].sum_share(round_, 0, own(round_)[1:], {c: 1.0}, SIZE, MEMBERS[1:])
    with pytest.raises(RelayRefused, match=re.escape("1 distinct accepted uploader(s), fewer than the job's minimum "
                                                     "of 2")):  # a sum of one accepted update
        fed.gram[c].sum_share(round_, 0, own(round_), {c: 1.0}, SIZE, MEMBERS[1:])
    while fed.gram[c].spent < PARAMS.max_decryptions:
        before = fed.gram[c].spent
        fed.gram[c].sum_share(round_, 0, own(round_), both, SIZE, MEMBERS[1:])
        assert fed.gram[c].spent == before + 1
        round_ += 1
    restarted = GramKeys(fed.start(c))
    assert restarted.refresh(GramDoor(fed.grams, c))  # reassembles its keys from its stored, relayed messages
    assert restarted.spent == PARAMS.max_decryptions
    with pytest.raises(InvalidValue, match="max_decryptions = 8"):
        restarted.sum_share(round_, 0, own(round_), both, SIZE, MEMBERS[1:])
