"""Threshold-CKKS jobs as domain objects, no network: three members (t = 2) set their keys up through the
coordinator's relay with attested shares, run rounds with seeded uploads whose decryption shares only members
can unmask, survive a member dropped after uploading and a decryptor that never answers, and reload after a
restart with their one-use records intact.  Real certificates, real SEAL ciphertexts."""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedprompt.coordinator.accumulators import Fold, ThresholdAccumulator
from fedprompt.coordinator.store import Store
from fedprompt.coordinator.threshold import (
    RoundMemory,
    ThresholdKeyRelay,
    ThresholdRelay,
    ThresholdRound,
    pick_decryptors,
)
from fedprompt.crypto import threshold_masked
from fedprompt.crypto.attest import KeyCredentials, digest
from fedprompt.crypto.errors import AttestationError, InvalidCiphertext, InvalidValue
from fedprompt.crypto.pki import CertificateAuthority
from fedprompt.crypto.sealing import new_exchange_key, public_bytes
from fedprompt.crypto.threshold import ThresholdParams
from fedprompt.crypto.threshold_seeded import UploadRound
from fedprompt.errors import (
    DuplicateUpdate,
    FedPromptError,
    InvalidUpdate,
    NotEnrolled,
    NotSelected,
    PreconditionFailed,
    RelayRefused,
)
from fedprompt.participant.keys import key_dir
from fedprompt.participant.threshold_keys import ThresholdKeys
from fedprompt.protocol import Payload
from fedprompt.v1 import participant_pb2
from fedprompt.wire import serde
from fedprompt.wire.threshold import ENCODING, pack_version, unpack_version
from tests.thresholds import RelayDoor

JOB = "job-th"
MEMBERS = ("participant:a", "participant:b", "participant:c")
SIZE = 300
PARAMS = ThresholdParams(members=3)


class Site:
    def __init__(self, who: str, root: Path, credentials: KeyCredentials) -> None:
        self.who, self.state, self.credentials = who, root / who.split(":")[1], credentials
        self.exchange = new_exchange_key()
        self.keys = self.start()

    def start(self) -> ThresholdKeys:
        return ThresholdKeys(JOB, MEMBERS, self.who, PARAMS, self.exchange, self.state, self.credentials)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[ThresholdRelay, dict[str, Site]]:
    """Key setup through the relay: every member registers its attested exchange key, then each looks at the
    relay until its key is ready (publish its share, deal once all exchange keys verified, accept)."""
    root = tmp_path_factory.mktemp("threshold")
    ca = CertificateAuthority.init(root / "ca")
    relay = ThresholdRelay(JOB, MEMBERS, PARAMS)
    sites = {}
    for who in MEMBERS:
        key, cert = ca.issue(who, root / "certs" / who.split(":")[1])
        sites[who] = Site(who, root, KeyCredentials.from_files(ca.ca_cert_path, cert, key))
        exchange = public_bytes(sites[who].exchange)
        relay.register(who, exchange, sites[who].credentials.signer.sign(JOB, "exchange", (digest(exchange),)))
    for _ in range(3):
        done = [site.keys.refresh(RelayDoor(relay, who)) for who, site in sites.items()]
    assert all(done) and relay.ready
    return relay, sites


def _round(relay: ThresholdRelay, sites: dict[str, Site], round_: int, uploaders: tuple[str, ...],
           rng: np.random.Generator, attempt_round: ThresholdRound | None = None
           ) -> tuple[ThresholdRound, np.ndarray, float]:
    machine = attempt_round or ThresholdRound(relay, round_, SIZE)
    expected, weight = np.zeros(SIZE), 0.0
    for who in uploaders:
        update, examples = rng.normal(0, 0.1, SIZE), float(rng.integers(5, 40))
        machine.add(who, machine.attempt, sites[who].keys.encrypt(update * examples, examples, round_,
                                                                  machine.attempt), examples)
        expected, weight = expected + update * examples, weight + examples
    return machine, expected, weight


def _online(*dropped: str) -> Callable[[str], bool]:
    return lambda who: who not in dropped


def test_key_setup_gives_every_member_the_same_collective_key_and_keeps_its_share_private(
        federation: tuple[ThresholdRelay, dict[str, Site]]) -> None:
    relay, sites = federation
    assert {site.keys.context.key_id for site in sites.values()} == {relay.context.key_id}
    assert len({site.keys.group for site in sites.values()}) == 1
    for site in sites.values():
        files = sorted(key_dir(site.state, JOB).iterdir())
        assert {f.name for f in files} >= {"threshold.secret", "threshold.dealing", "threshold.received"}
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    # what the relay holds: public shares, attestations and sealed blobs, never a group-key contribution
    state = relay.state_for(MEMBERS[0])
    assert all(sites[MEMBERS[0]].keys._dealing[0] not in blob for _, blob in state.dealt)


def test_a_round_completes_with_one_member_dropped_after_uploading_and_only_members_can_unmask(
        federation: tuple[ThresholdRelay, dict[str, Site]]) -> None:
    """n = 3, t = 2: all three upload, c drops; a and b decrypt; every member (c on return too) unmasks the
    combined download; without the group key it does not decode."""
    relay, sites = federation
    machine, expected, weight = _round(relay, sites, 1, MEMBERS, np.random.default_rng(1))
    decryption = machine.close(_online("participant:c"))
    assert decryption is not None and decryption.decryptors == ("participant:a", "participant:b")
    for who in decryption.decryptors:
        decryption.submit(who, sites[who].keys.decryption_share(SIZE, 1, 0, decryption.uploaders, decryption.decryptors))
    assert decryption.complete
    stored = decryption.version()  # the global version every member downloads and combines itself
    for who in MEMBERS:
        total, got = sites[who].keys.open_version(stored, SIZE)
        assert got == pytest.approx(weight, abs=1e-3)
        assert np.abs(total - expected).max() <= 1e-4
    with pytest.raises(InvalidUpdate, match="combined download"):
        unpack_version(pack_version(dataclasses.replace(unpack_version(stored), combined=b"")))
    # the coordinator holds the sum, t masked shares and the combined download, but not the group key
    version = unpack_version(stored)
    with pytest.raises(InvalidCiphertext, match="weight|exceed what a sum can hold"):  # garbage: either check
        threshold_masked.open_sum(relay.context, version.combined, SIZE, bytes(32), UploadRound(relay.seed, 1, 0),
                                  [1, 2])
    with pytest.raises(NotSelected):
        decryption.submit("participant:c", b"x")


def test_a_served_version_of_the_demo_prompt_is_under_2_5x_its_float32_size(
        federation: tuple[ThresholdRelay, dict[str, Site]]) -> None:
    """The bytes a member downloads for one version of the demo's 6,914-float prompt: the protobuf messages the
    coordinator streams for it (``DownloadGlobal``), under 2.5x the float32 vector; the decryptors' masked
    shares are checked on arrival."""
    relay, sites = federation
    size = 6914
    machine = ThresholdRound(relay, 9, size)
    for who in MEMBERS:
        machine.add(who, 0, sites[who].keys.encrypt(np.full(size, 0.5), 10.0, 9, 0), 10.0)
    decryption = machine.close(_online())
    assert decryption is not None
    first, second = decryption.decryptors
    share = sites[first].keys.decryption_share(size, 9, 0, decryption.uploaders, decryption.decryptors)
    with pytest.raises(InvalidUpdate, match="refused"):  # another member's share, a truncated one
        decryption.submit(second, share)
    with pytest.raises(InvalidUpdate, match="refused"):
        decryption.submit(first, share[:-8])
    decryption.submit(first, share)
    decryption.submit(second, sites[second].keys.decryption_share(size, 9, 0, decryption.uploaders,
                                                                  decryption.decryptors))
    stored = decryption.version()
    served = sum(m.ByteSize() for m in serde.payload_messages(Payload(JOB, 9, ENCODING, size, stored),
                                                              participant_pb2.DownloadGlobalResponse))
    assert served < 2.5 * 4 * size
    total, weight = sites[MEMBERS[2]].keys.open_version(stored, size)
    assert weight == pytest.approx(30.0, abs=1e-3) and np.abs(total - 1.5).max() <= 1e-4


def test_a_decryptor_that_never_answers_makes_a_new_attempt_with_fresh_uploads(
        federation: tuple[ThresholdRelay, dict[str, Site]]) -> None:
    relay, sites = federation
    rng = np.random.default_rng(2)
    machine, _, _ = _round(relay, sites, 2, MEMBERS, rng)
    first = machine.close(_online())
    assert first is not None
    late = first.missing[-1]
    for who in first.decryptors:
        if who != late:
            first.submit(who, sites[who].keys.decryption_share(SIZE, 2, 0, first.uploaders,
                                                               first.decryptors))
    machine.memory.note(first)  # the deadline passed with a share missing, as ``ThresholdFold.close`` notes it
    machine = ThresholdRound(relay, 2, SIZE, 1, machine.memory)  # the round machine's next attempt
    with pytest.raises(InvalidValue, match="already used"):  # one upload per member and round attempt...
        sites[MEMBERS[0]].keys.encrypt(np.zeros(SIZE), 1.0, 2, 0)
    back = tuple(m for m in MEMBERS if m != late)
    with pytest.raises(InvalidUpdate, match="not seeded for round 2 attempt 1"):  # a stale upload is refused
        machine.add(back[0], 1, sites[back[0]].keys.encrypt(np.zeros(SIZE), 1.0, 2, 5), 1.0)
    machine, _, _ = _round(relay, sites, 2, back, rng, machine)  # ...so the retry uploads afresh
    # the member that answered made its share of round 2 for all three uploads: a sum of the round over two would
    # give the late member's update away next to it, so it is not asked (it would refuse), and one is fewer than t
    (answered,) = (who for who in first.decryptors if who != late)
    assert machine.memory.bound == {answered: MEMBERS} and machine.close(_online(late)) is None
    with pytest.raises(RelayRefused, match="made a decryption share of the round for 1,2,3"):
        sites[answered].keys.decryption_share(SIZE, 2, 1, back, back)
    # the late member is back: the next attempt sums all three again, and its decryptors decrypt it
    machine = ThresholdRound(relay, 2, SIZE, 2, machine.memory)  # the next attempt reads what the last left
    machine, expected, weight = _round(relay, sites, 2, MEMBERS, rng, machine)
    retry = machine.close(_online())
    assert retry is not None and late not in retry.decryptors and answered in retry.decryptors
    for who in retry.decryptors:
        retry.submit(who, sites[who].keys.decryption_share(SIZE, 2, 2, retry.uploaders,
                                                           retry.decryptors))
    total, got = sites[back[0]].keys.open_version(retry.version(), SIZE)
    assert got == pytest.approx(weight, abs=1e-3) and np.abs(total - expected).max() <= 1e-4


def test_a_malformed_one_use_record_stops_the_member_at_start(tmp_path: Path) -> None:
    """The records file is read into the index at start: a record it cannot read (a torn write) is refused by
    name there, rather than decrypting past the record that might have refused the share."""
    keys = ThresholdKeys(JOB, MEMBERS, MEMBERS[0], PARAMS, new_exchange_key(), tmp_path)
    keys._record("gram-sum:4:0:2")
    with (key_dir(tmp_path, JOB) / "threshold.used").open("a") as records:
        records.write("gram-sum:5:0:\n")
    with pytest.raises(FedPromptError, match="malformed record 'gram-sum:5:0:'"):
        ThresholdKeys(JOB, MEMBERS, MEMBERS[0], PARAMS, new_exchange_key(), tmp_path)


def test_the_accumulator_keeps_one_memory_of_a_rounds_attempts_that_each_attempt_reads(
        federation: tuple[ThresholdRelay, dict[str, Site]]) -> None:
    """``ThresholdAccumulator`` (the job's path) holds the round's ``RoundMemory``; each attempt's ``ThresholdRound``
    reads that same object.  A postponed attempt notes into it who missed and who answered for which uploaders,
    so the next attempt over another uploader set names no bound member (here: too few left, it waits); a stored
    version starts the next round with a fresh one."""
    relay, sites = federation
    accumulator = ThresholdAccumulator(ThresholdKeyRelay(JOB, relay, Store(":memory:")), lambda: SIZE, float)
    round_ = 13

    def attempt(number: int, uploaders: tuple[str, ...]) -> tuple[Fold, ThresholdRound]:
        fold = accumulator.fold(round_, number)
        for who in uploaders:
            fold.add(who, Payload(JOB, round_, ENCODING, SIZE, sites[who].keys.encrypt(
                np.zeros(SIZE), 1.0, round_, number), num_examples=1))
        assert fold.threshold is not None and fold.threshold.memory is accumulator.memory
        return fold, fold.threshold

    fold, machine = attempt(1, MEMBERS)
    decryption = machine.close(_online())
    assert decryption is not None
    answered, late = decryption.decryptors
    decryption.submit(answered, sites[answered].keys.decryption_share(SIZE, round_, 1, MEMBERS,
                                                                      decryption.decryptors))
    assert fold.close("deadline passed").refusal == "deadline passed"
    assert accumulator.memory.missed == (late,) and accumulator.memory.bound == {answered: MEMBERS}
    back = tuple(m for m in MEMBERS if m != late)
    assert attempt(2, back)[1].close(_online(late)) is None
    accumulator.committed(b"")
    assert accumulator.memory == RoundMemory() and attempt(3, back)[1].memory is accumulator.memory


def test_a_restarted_member_reloads_its_share_and_its_one_use_records(
        federation: tuple[ThresholdRelay, dict[str, Site]]) -> None:
    relay, sites = federation
    machine, expected, weight = _round(relay, sites, 3, MEMBERS, np.random.default_rng(3))
    decryption = machine.close(_online())
    assert decryption is not None
    first = decryption.decryptors[0]
    decryption.submit(first, sites[first].keys.decryption_share(SIZE, 3, 0,
                                                                decryption.uploaders, decryption.decryptors))
    for site in sites.values():
        site.keys = site.start()  # a daemon restart: everything from the state directory
        assert site.keys.ready and site.keys.context.key_id == relay.context.key_id
    with pytest.raises(InvalidValue, match="already used"):  # the record of the share survived the restart
        sites[first].keys.decryption_share(SIZE, 3, 0, decryption.uploaders,
                                           decryption.decryptors)
    with pytest.raises(InvalidValue, match="already used"):
        sites[first].keys.encrypt(np.zeros(SIZE), 1.0, 3, 0)
    for who in decryption.missing:
        decryption.submit(who, sites[who].keys.decryption_share(SIZE, 3, 0,
                                                                decryption.uploaders, decryption.decryptors))
    stored = decryption.version()
    total, got = sites[MEMBERS[2]].keys.open_version(stored, SIZE)
    assert got == pytest.approx(weight, abs=1e-3) and np.abs(total - expected).max() <= 1e-4
    forged = dataclasses.replace(unpack_version(stored), declared_weight=decryption.declared_weight + 7)
    with pytest.raises(InvalidValue, match="examples its uploaders declared"):  # the weight-slot check
        sites[MEMBERS[2]].keys.open_version(pack_version(forged), SIZE)


def test_a_restarted_member_rebuilds_its_record_index_from_the_file_and_refuses_alike(
        federation: tuple[ThresholdRelay, dict[str, Site]]) -> None:
    """The checks on every share look the one-use records up in an index (the set each round is bound to, the
    shares spent) instead of scanning them; a restart rebuilds it from the records file, which keeps one label a
    line as before: the restarted member refuses another uploader set of the round and a second share of the
    attempt as it did, counts the same shares against ``max_decryptions``, and shares again for the bound set."""
    relay, sites = federation
    who, pair, round_ = MEMBERS[0], MEMBERS[:2], 12
    site = sites[who]
    site.keys.decryption_share(SIZE, round_, 0, MEMBERS, pair)
    records = (key_dir(site.state, JOB) / "threshold.used").read_text().splitlines()
    assert records[-2:] == [f"set:{round_}:1,2,3", f"share:{round_}:0"]

    def refusals(keys: ThresholdKeys) -> list[str]:
        refused = []
        for attempt, uploaders in ((1, pair), (0, MEMBERS)):
            with pytest.raises((RelayRefused, InvalidValue)) as caught:
                keys.decryption_share(SIZE, round_, attempt, uploaders, pair)
            refused.append(f"{type(caught.value).__name__}: {caught.value}")
        return refused

    before = refusals(site.keys)
    assert "made a decryption share of the round for 1,2,3" in before[0] and "already used" in before[1]
    site.keys = site.start()
    assert refusals(site.keys) == before
    assert site.keys._shares == sum(label.startswith("share:") for label in records)
    assert site.keys._bound[round_] == f"set:{round_}:1,2,3"
    site.keys.decryption_share(SIZE, round_, 1, MEMBERS, pair)  # the bound set, a new attempt


def test_a_swapped_public_share_is_refused_before_anything_is_accepted(tmp_path: Path) -> None:
    """An active relay that hands out a key share of its own making for a member: its signature fails."""
    ca = CertificateAuthority.init(tmp_path / "ca")
    relay = ThresholdRelay(JOB, MEMBERS, PARAMS)
    sites = {}
    for who in MEMBERS:
        key, cert = ca.issue(who, tmp_path / who.split(":")[1])
        sites[who] = Site(who, tmp_path, KeyCredentials.from_files(ca.ca_cert_path, cert, key))
        exchange = public_bytes(sites[who].exchange)
        relay.register(who, exchange, sites[who].credentials.signer.sign(JOB, "exchange", (digest(exchange),)))
    for who in MEMBERS[1:]:
        sites[who].keys.refresh(RelayDoor(relay, who))
    forged = ThresholdKeys(JOB, MEMBERS, MEMBERS[0], PARAMS, new_exchange_key())
    relay.shares[MEMBERS[0]] = (forged.public, sites[MEMBERS[0]].keys.attestation())  # served as if published
    relay.arrivals.append(("share", MEMBERS[0]))
    with pytest.raises(AttestationError, match="not the key it signed"):
        sites[MEMBERS[1]].keys.refresh(RelayDoor(relay, MEMBERS[1]))
    assert not sites[MEMBERS[1]].keys.ready


def test_decryptors_are_t_online_members_rotating_with_the_round() -> None:
    members = ("a", "b", "c", "d", "e")
    assert pick_decryptors(members, _online(), 3, 0) == ("a", "b", "c")
    assert pick_decryptors(members, _online(), 3, 2) == ("c", "d", "e")
    assert pick_decryptors(members, _online("a", "b"), 3, 0) == ("c", "d", "e")
    assert pick_decryptors(members, _online(), 3, 0, avoid=("a",)) == ("b", "c", "d")
    assert pick_decryptors(members, _online("a", "b", "c"), 3, 0) is None


def test_the_relay_refuses_strangers_repeats_and_waits_for_whole_dealings(
        federation: tuple[ThresholdRelay, dict[str, Site]]) -> None:
    relay, sites = federation
    share, attestation = relay.shares[MEMBERS[0]]
    with pytest.raises(NotEnrolled):
        relay.publish_share("participant:z", share)
    with pytest.raises(DuplicateUpdate):
        relay.publish_share(MEMBERS[0], share, attestation)
    with pytest.raises(InvalidUpdate, match="bytes"):
        relay.publish_share(MEMBERS[0], share[:-8])
    fresh = ThresholdRelay("job-other", MEMBERS, PARAMS)
    with pytest.raises(InvalidUpdate, match="the 2 other members only"):
        fresh.deal(MEMBERS[0], {MEMBERS[0]: b"sealed", MEMBERS[1]: b"sealed"})
    fresh.deal(MEMBERS[0], {MEMBERS[1]: b"sealed"})  # a batch: the dealing is not complete yet
    assert MEMBERS[0] not in fresh.dealt and not fresh.state_for(MEMBERS[0]).dealt_by_caller
    fresh.register(MEMBERS[0], bytes(32))
    with pytest.raises(InvalidUpdate, match="another exchange key"):  # no new exchange key mid-dealing
        fresh.register(MEMBERS[0], bytes(range(32)))
    with pytest.raises(PreconditionFailed, match="key setup"):
        ThresholdRound(fresh, 1, SIZE)


def test_a_member_stops_decrypting_before_its_smudging_budget_is_spent(tmp_path: Path) -> None:
    """``max_decryptions`` (the Q of the smudging bound) counts chunk decryptions per member, across restarts."""
    params = ThresholdParams(members=3, max_decryptions=2)
    relay = ThresholdRelay(JOB, MEMBERS, params)
    keys = {}
    for who in MEMBERS:
        exchange = new_exchange_key()
        keys[who] = ThresholdKeys(JOB, MEMBERS, who, params, exchange, tmp_path / who.split(":")[1])
        relay.register(who, public_bytes(exchange))
    for _ in range(2):
        for who in MEMBERS:
            keys[who].refresh(RelayDoor(relay, who))
    pair, first = MEMBERS[:2], MEMBERS[0]
    for round_ in (1, 2, 3):
        machine = ThresholdRound(relay, round_, SIZE)
        for who in MEMBERS:
            machine.add(who, 0, keys[who].encrypt(np.ones(SIZE), 1.0, round_, 0), 1.0)
        decryption = machine.close(_online())
        assert decryption is not None
        if round_ == 3:
            keys[first] = ThresholdKeys(JOB, MEMBERS, first, params, new_exchange_key(),
                                        tmp_path / first.split(":")[1])  # restarted: the count survives
            with pytest.raises(InvalidValue, match="max_decryptions = 2"):
                keys[first].decryption_share(SIZE, round_, 0, decryption.uploaders, pair)
        else:
            keys[first].decryption_share(SIZE, round_, 0, decryption.uploaders, pair)
