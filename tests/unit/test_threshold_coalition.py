"""The coalitions of the README's threat model, against jobs run by the real domain objects, no network.

Threshold jobs: five members (t = 3) set their keys up through the coordinator's ``ThresholdRelay`` with attested
shares, upload through ``ThresholdRound`` and decrypt with ``ThresholdKeys``, as ``JobRuntime`` and the participant
runtime drive them.  The coalition holds everything the coordinator stores (every exchange key, public share,
sealed dealing and attestation it relayed, every upload it folded, each round's folded sum, the masked decryption
shares and the compressed version it made of them) plus, of each colluding site, what its state directory holds:
its own secret, its exchange key (which opens what was dealt to it), its key share and the members' group key,
with which it strips the masks of every share (``crypto.threshold_masked``).  Its key guesses are those of
``bench threshold`` (``app.bench.coalition``).  Single-key jobs: the coordinator's ``JobKeys`` relay and the
sites' ``KeyHolder``.

The correlation of a guess that knows nothing of an update of d values is about N(0, 1/d): the bound
``5 / sqrt(d)`` fails an honest run with probability below 1e-6 per guess.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tenseal.sealapi as seal

from fedprompt.app.bench.coalition import correlation, decrypt_with, key_guesses
from fedprompt.coordinator.keys import JobKeys
from fedprompt.coordinator.store import Store
from fedprompt.coordinator.threshold import Decryption, ThresholdRelay, ThresholdRound
from fedprompt.crypto import threshold_masked as masked
from fedprompt.crypto import threshold_seeded as seeded
from fedprompt.crypto.attest import KeyCredentials, digest
from fedprompt.crypto.ckks import CkksParams
from fedprompt.crypto.errors import InvalidValue
from fedprompt.crypto.pki import CertificateAuthority
from fedprompt.crypto.rns import Poly
from fedprompt.crypto.sealing import new_exchange_key, public_bytes
from fedprompt.crypto.shamir import lagrange
from fedprompt.crypto.threshold import KeyShare, ThresholdParams
from fedprompt.crypto.threshold_costs import Keyed
from fedprompt.errors import RelayRefused
from fedprompt.participant.keys import KeyHolder, key_dir
from fedprompt.participant.threshold_keys import SECRET, ThresholdKeys
from fedprompt.protocol import KeyState
from tests.support import REPO
from tests.thresholds import RelayDoor

JOB = "job-coalition"
MEMBERS = tuple(f"participant:{name}" for name in "abcde")
EXAMPLES = dict(zip(MEMBERS, (12.0, 30.0, 25.0, 18.0, 20.0), strict=True))
PARAMS = ThresholdParams(members=5)  # t = 3
SIZE = 4000  # one ciphertext
BOUND = 5 / math.sqrt(SIZE)  # 0.079
HONEST = "participant:e"
MINIMUM = 3  # job.min_participants: the fewest distinct uploaders a member makes a decryption share for


@dataclass
class Site:
    state: Path
    keys: ThresholdKeys


@dataclass
class Coordinator:
    """Everything the coordinator of a threshold job stores, kept as a malicious one would keep it."""

    relay: ThresholdRelay
    uploads: dict[tuple[int, str], bytes] = field(default_factory=dict)  # (round, member) -> its ciphertext
    updates: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)  # the truth, to score the attacks
    totals: dict[int, bytes] = field(default_factory=dict)  # each round's folded sum
    shares: dict[int, dict[str, bytes]] = field(default_factory=dict)  # each round's masked decryption shares
    versions: dict[int, bytes] = field(default_factory=dict)  # stored global versions: the compressed combination


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Coordinator, dict[str, Site]]:
    """Key setup through the relay with attested keys, then round 1: every member uploads, the coordinator folds
    and names three decryptors (b, c, d), they answer, and the global version is stored."""
    root = tmp_path_factory.mktemp("coalition")
    ca = CertificateAuthority.init(root / "ca")
    relay = ThresholdRelay(JOB, MEMBERS, PARAMS)
    sites = {}
    for who in MEMBERS:
        key, cert = ca.issue(who, root / "certs" / who.split(":")[1])
        credentials = KeyCredentials.from_files(ca.ca_cert_path, cert, key)
        exchange = new_exchange_key()
        state = root / who.split(":")[1]
        sites[who] = Site(state, ThresholdKeys(JOB, MEMBERS, who, PARAMS, exchange, state, credentials,
                                                      MINIMUM))
        relay.register(who, public_bytes(exchange), credentials.signer.sign(JOB, "exchange",
                                                                           (digest(public_bytes(exchange)),)))
    for _ in range(3):
        done = [site.keys.refresh(RelayDoor(relay, who)) for who, site in sites.items()]
    assert all(done) and relay.ready
    coordinator = Coordinator(relay)
    decryption = _upload_round(coordinator, sites, 1, np.random.default_rng(1))
    assert decryption.decryptors == ("participant:b", "participant:c", "participant:d")
    for who in decryption.decryptors:
        decryption.submit(who, sites[who].keys.decryption_share(SIZE, 1, 0, decryption.uploaders,
                                                                decryption.decryptors))
    coordinator.totals[1], coordinator.shares[1] = decryption.total, dict(decryption.shares)
    coordinator.versions[1] = decryption.version()
    return coordinator, sites


def _upload_round(coordinator: Coordinator, sites: dict[str, Site], round_: int,
                  rng: np.random.Generator) -> Decryption:
    machine = ThresholdRound(coordinator.relay, round_, SIZE)
    for who in MEMBERS:
        update = rng.normal(0, 0.1, SIZE)
        upload = sites[who].keys.encrypt(update * EXAMPLES[who], EXAMPLES[who], round_, 0)
        machine.add(who, 0, upload, EXAMPLES[who])
        coordinator.uploads[round_, who], coordinator.updates[round_, who] = upload, update
    decryption = machine.close(lambda who: True)
    assert decryption is not None
    return decryption


def _coalition(coordinator: Coordinator, sites: dict[str, Site], colluders: Sequence[str]) -> Keyed:
    """The colluding sites' key shares (assembled from the dealings the relay stored, opened with their exchange
    keys) and own secrets, as ``bench threshold``'s attacks take them."""
    members = [sites[who].keys for who in colluders]
    assert all(keys.key is not None for keys in members)
    return Keyed(PARAMS, members[0].context, coordinator.relay.seed, [keys.member for keys in members], [], {},
                 {keys.index: keys.key for keys in members if keys.key is not None}, 0.0)


def _own_secrets(keyed: Keyed, sites: dict[str, Site], colluders: Sequence[str]) -> Poly:
    """The sum of the colluders' own secrets ``s_i``, read from their state directories."""
    ring = keyed.context.ring
    limbs = len(ring.moduli)
    secrets = [np.frombuffer((key_dir(sites[who].state, JOB) / SECRET).read_bytes(), dtype=np.uint64)
               .astype(object).reshape(limbs, ring.n) for who in colluders]
    return sum(secrets, np.zeros((limbs, ring.n), dtype=object)) % ring.q(limbs)


def _index(who: str) -> int:
    return MEMBERS.index(who) + 1


def _group_key(sites: dict[str, Site], colluders: Sequence[str]) -> bytes:
    """The members' group key, as each colluding site holds it (from the dealings it opened)."""
    keys = {sites[who].keys.group for who in colluders}
    assert len(keys) == 1 and b"" not in keys
    return keys.pop()


def _unmasked(keyed: Keyed, group: bytes, upload_round: seeded.UploadRound,
              shares: dict[str, bytes]) -> dict[str, Poly]:
    """Each masked share the coordinator kept, its mask stripped with the group key: the decryptor's flooded share
    ``d_j = a_r lambda_j sigma_{U,j} + e_j`` (one chunk): its mask is the transform of its pad ``rho_j``."""
    context, q = keyed.context, keyed.context.ring.q(1)
    out = {}
    for who, blob in shares.items():
        (share,) = masked.parse_share(context, blob, _index(who), 1)
        (pad,) = masked.masks(context, group, upload_round, _index(who), 1)
        mask = context.ring.to_ntt(pad[0].astype(np.int64), 1)
        out[who] = (share.astype(object) - mask) % q  # uint64 residues; the attacks work in Python ints
    return out


def _key(sites: dict[str, Site], who: str) -> KeyShare:
    key = sites[who].keys.key
    assert key is not None
    return key


def _decode(keyed: Keyed, ct: seal.Ciphertext, term: Poly) -> np.ndarray:
    """The reals of ``c0 + term`` of the one-chunk ciphertext ``ct``: its plaintext when ``term`` is ``c1`` times
    its key (up to flooding noise), garbage otherwise."""
    ring = keyed.context.ring
    c0, _ = ring.read_ciphertext(ct)
    return keyed.context.decode([ring.plaintext((c0 + term) % ring.q(1), list(ct.parms_id()), ct.scale)])


def test_coordinator_and_t_minus_1_sites_learn_nothing_of_an_honest_update_beyond_the_aggregate(
        federation: tuple[Coordinator, dict[str, Site]]) -> None:
    """k = t - 1 = 2 sites (a, b; b decrypted the round).  No key they can form decrypts member e's upload, and
    neither do the round's masked shares once the group key strips their masks (each honest share alone, and
    their sum less every part the coalition knows: its own secrets and b's sub-shares of c's and d's), while the
    same unmasked shares on the sum's ``c0`` give the aggregate, and the last attack with the honest sites'
    sub-shares it lacks gives e's update (the controls): 9 attacks, each |correlation| < 5/sqrt(d).  No honest
    member makes a share of e's upload alone, and the coalition's two key shares are too few.  What the stored
    version gives them, minus their own updates, is the sum of the three honest members' updates, no more."""
    coordinator, sites = federation
    colluders = ["participant:a", "participant:b"]
    keyed = _coalition(coordinator, sites, colluders)
    ring, q = keyed.context.ring, keyed.context.ring.q(1)
    upload, truth = coordinator.uploads[1, HONEST], coordinator.updates[1, HONEST]
    weighted = {who: coordinator.updates[1, who] * EXAMPLES[who] for who in MEMBERS}
    own = _own_secrets(keyed, sites, colluders)
    guesses = {**key_guesses(keyed, _index(HONEST), [_index(who) for who in colluders]),
               "the colluders' own secrets": own}
    attacks = {name: correlation(decrypt_with(keyed, upload, SIZE, key), truth) for name, key in guesses.items()}

    # the masked shares the coordinator kept, unmasked with the group key the colluders hold
    group, upload_round = _group_key(sites, colluders), seeded.UploadRound(coordinator.relay.seed, 1)
    shares = _unmasked(keyed, group, upload_round, coordinator.shares[1])
    assert sorted(shares) == ["participant:b", "participant:c", "participant:d"]
    (summed,) = keyed.context.parse_sum(coordinator.totals[1], SIZE)
    unmasked = sum(shares.values(), np.zeros((1, ring.n), dtype=object))
    vector, weight = keyed.context.checked(_decode(keyed, summed, unmasked), SIZE)
    assert weight == pytest.approx(sum(EXAMPLES.values()), abs=1e-2)
    assert np.abs(vector - sum(weighted.values())).max() <= 1e-3  # the unmasking is right: the aggregate
    (honest,) = keyed.context.parse(upload, keyed.context.key_id, SIZE)
    a_r = ring.read_ciphertext(honest)[1]
    b, decryptors = _index("participant:b"), sorted(_index(who) for who in shares)
    others = [_index("participant:c"), _index("participant:d")]  # the honest decryptors
    rest = (unmasked - a_r * own[:1]) % q  # a_r (s_c + s_d + s_e) + flooding
    known = lagrange(ring, decryptors, b, 1) * keyed.keys[b].share_of(others)[:1]
    terms = {"member c's unmasked share": shares["participant:c"],
             "member d's unmasked share": shares["participant:d"],
             "the unmasked shares less a_r times the colluders' own secrets": rest,
             "the same less b's Lagrange-weighted sub-shares of c's and d's secrets": rest - a_r * known}
    attacks.update({name: correlation(_decode(keyed, honest, term)[:SIZE], truth) for name, term in terms.items()})
    assert len(attacks) == 9 and all(abs(c) < BOUND for c in attacks.values()), attacks
    # the control of the last attack: what it misses is c's and d's own sub-shares of c's and d's secrets, which
    # the coalition lacks; given them, it decrypts e's upload
    hidden = sum((lagrange(ring, decryptors, j, 1) * _key(sites, MEMBERS[j - 1]).share_of(others)[:1]
                  for j in others), np.zeros((1, ring.n), dtype=object))
    assert correlation(_decode(keyed, honest, rest - a_r * (known + hidden))[:SIZE], truth) > 0.999

    # a decryption of e's upload alone: the coalition's two key shares are fewer than t, an honest decryptor
    # refuses a set of one uploader, and it already made its one share of round 1 attempt 0 (for the sum)
    with pytest.raises(InvalidValue, match="3 or more"):
        masked.masked_share(keyed.context, keyed.keys[1], group, SIZE, upload_round, [_index(HONEST)], [1, 2])
    with pytest.raises(RelayRefused, match="fewer than the job's minimum"):
        sites["participant:c"].keys.decryption_share(SIZE, 1, 0, (HONEST,), ("participant:a", "participant:b",
                                                                            "participant:c"))
    with pytest.raises(InvalidValue, match="already used"):
        sites["participant:c"].keys.decryption_share(SIZE, 1, 0, MEMBERS, ("participant:a", "participant:b",
                                                                          "participant:c"))

    # the aggregate: the coalition holds the group key, so it opens the stored version like any member
    total, weight = sites["participant:a"].keys.open_version(coordinator.versions[1], SIZE)
    assert weight == pytest.approx(sum(EXAMPLES.values()), abs=1e-2)
    residue = total - sum(weighted[who] for who in colluders)
    honest_sum = np.sum([weighted[who] for who in MEMBERS if who not in colluders], axis=0)
    assert np.abs(residue - honest_sum).max() <= 1e-3
    assert correlation(residue, truth) == pytest.approx(correlation(honest_sum, truth), abs=1e-3)
    assert correlation(residue, truth) < 0.8  # e's update is hidden among c's and d's


def test_coordinator_and_t_sites_decrypt_every_other_members_uploads(
        federation: tuple[Coordinator, dict[str, Site]]) -> None:
    """k = t = 3 sites (a, b, c) interpolate their sub-shares of each other member's own secret: every upload
    of d and e decrypts (correlation > 0.999), with no decryption share asked of anyone; the same sub-shares
    without the third site (the test above) give nothing."""
    coordinator, sites = federation
    colluders = ["participant:a", "participant:b", "participant:c"]
    keyed = _coalition(coordinator, sites, colluders)
    for victim in ("participant:d", "participant:e"):
        key = key_guesses(keyed, _index(victim), [_index(who) for who in colluders])[
            "Lagrange interpolation of the sub-shares of the honest secret"]
        recovered = decrypt_with(keyed, coordinator.uploads[1, victim], SIZE, key)
        assert correlation(recovered, coordinator.updates[1, victim]) > 0.999
        assert np.abs(recovered - coordinator.updates[1, victim] * EXAMPLES[victim]).max() <= 1e-3


def test_an_active_coordinator_naming_one_uploader_gets_no_decryption_share(
        federation: tuple[Coordinator, dict[str, Site]]) -> None:
    """A decryption request carries no aggregate (a share needs only the round attempt's ``a_r``), so the
    decryptors cannot tell which uploads the coordinator adds their shares to, only the uploader set it names.  A
    coordinator that names member e as round 2's only uploader (or e three times, or e and a stranger) gets no
    share from any honest decryptor: each refuses a set of fewer than ``MINIMUM`` distinct members or naming a
    non-member (``RelayRefused``, which the runtime reports), and the refusal spends nothing, so the honest
    round's shares are still made."""
    coordinator, sites = federation
    rng = np.random.default_rng(2)
    machine = ThresholdRound(coordinator.relay, 2, SIZE)
    for who in MEMBERS:
        update = rng.normal(0, 0.1, SIZE)
        coordinator.uploads[2, who] = sites[who].keys.encrypt(update * EXAMPLES[who], EXAMPLES[who], 2, 0)
        coordinator.updates[2, who] = update
        machine.add(who, 0, coordinator.uploads[2, who], EXAMPLES[who])
    decryptors = ("participant:c", "participant:d", HONEST)
    for uploaders, why in (((HONEST,), "fewer than the job's minimum of 3"),
                           ((HONEST, HONEST, HONEST), "fewer than the job's minimum of 3"),
                           ((HONEST, "participant:c", "participant:mallory"), "not a member")):
        for who in decryptors:
            with pytest.raises(RelayRefused, match=why):
                sites[who].keys.decryption_share(SIZE, 2, 0, uploaders, decryptors)
    honest = machine.close(lambda who: True)
    assert honest is not None and len(honest.uploaders) == len(MEMBERS)
    for who in honest.decryptors:
        honest.submit(who, sites[who].keys.decryption_share(SIZE, 2, 0, honest.uploaders, honest.decryptors))
    total, weight = sites["participant:a"].keys.open_version(honest.version(), SIZE)
    assert weight == pytest.approx(sum(EXAMPLES.values()), abs=1e-2)


def test_coordinator_and_k_sites_naming_a_minimum_uploader_set_learn_only_the_others_sum(
        federation: tuple[Coordinator, dict[str, Site]]) -> None:
    """The residual: the coordinator may still name any ``MINIMUM``-sized subset of the uploads.  With colluding
    member a in the set {a, d, e} of round 3, the honest decryptors' shares give the coalition the set's sum;
    minus a's own update that is the sum of d's and e's weighted updates, no more: e's update stays hidden
    (correlation < 0.8) unless the coalition holds ``MINIMUM - 1`` members of the set."""
    coordinator, sites = federation
    rng = np.random.default_rng(3)
    chosen = ("participant:a", "participant:d", HONEST)
    for who in chosen:
        update = rng.normal(0, 0.1, SIZE)
        coordinator.uploads[3, who] = sites[who].keys.encrypt(update * EXAMPLES[who], EXAMPLES[who], 3, 0)
        coordinator.updates[3, who] = update
    subset = Decryption(3, 0, chosen, sum(EXAMPLES[who] for who in chosen),
                        _fold(coordinator, [coordinator.uploads[3, who] for who in chosen]),
                        ("participant:c", "participant:d", HONEST), coordinator.relay, SIZE)
    for who in subset.decryptors:
        subset.submit(who, sites[who].keys.decryption_share(SIZE, 3, 0, subset.uploaders, subset.decryptors))
    total, weight = sites["participant:a"].keys.open_version(subset.version(), SIZE)
    assert weight == pytest.approx(sum(EXAMPLES[who] for who in chosen), abs=1e-2)
    weighted = {who: coordinator.updates[3, who] * EXAMPLES[who] for who in chosen}
    residue = total - weighted["participant:a"]
    assert np.abs(residue - weighted["participant:d"] - weighted[HONEST]).max() <= 1e-3
    assert correlation(residue, coordinator.updates[3, HONEST]) < 0.8


def test_an_active_coordinator_differencing_a_rounds_attempts_gets_no_second_uploader_set_decrypted(
        federation: tuple[Coordinator, dict[str, Site]]) -> None:
    """The cross-attempt attack (docs/he.md, "The uploader floor"): without DP a member uploads the same update in
    every attempt of a round, so a coordinator colluding with member c that gets round 4 decrypted over
    {b, c, d, e} and, in a retry, over {b, c, d} (both of at least ``MINIMUM``) learns e's update as the
    difference.  The honest decryptors of the first attempt
    (d, e) refuse a share of any other uploader set of the round, in that attempt or a later one, also after a
    daemon restart (the record is on disk), and the refusal spends nothing; a retry over the same set (a late
    decryptor, all uploads again) is decrypted, and gives the same sum."""
    coordinator, sites = federation
    colluder, rng = "participant:c", np.random.default_rng(4)
    first = ("participant:b", colluder, "participant:d", HONEST)
    smaller = first[:3]
    updates = {who: rng.normal(0, 0.1, SIZE) * EXAMPLES[who] for who in MEMBERS}  # the same in every attempt
    decryptors = (colluder, "participant:d", HONEST)
    sums = []
    for attempt in (0, 1):
        uploads = {who: sites[who].keys.encrypt(updates[who], EXAMPLES[who], 4, attempt) for who in MEMBERS}
        decryption = Decryption(4, attempt, first, sum(EXAMPLES[who] for who in first),
                                _fold(coordinator, [uploads[who] for who in first]), decryptors, coordinator.relay,
                                SIZE)
        for who in ("participant:d", HONEST):
            for uploaders in (smaller, ("participant:a", colluder, HONEST), MEMBERS):
                if attempt:
                    with pytest.raises(RelayRefused, match="made a decryption share of the round for 2,3,4,5"):
                        sites[who].keys.decryption_share(SIZE, 4, attempt, uploaders, decryptors)
        for who in decryptors:
            decryption.submit(who, sites[who].keys.decryption_share(SIZE, 4, attempt, first, decryptors))
        total, weight = sites[colluder].keys.open_version(decryption.version(), SIZE)
        assert weight == pytest.approx(sum(EXAMPLES[who] for who in first), abs=1e-2)
        sums.append(total)
    assert np.abs(sums[0] - sums[1]).max() <= 1e-3  # the same set, the same sum: nothing new
    assert np.abs(sums[0] - sum(updates[who] for who in first)).max() <= 1e-3
    # attempt 2 asks the smaller set, which e's update would be the difference of: refused, also once restarted
    for who in ("participant:d", HONEST):
        site = sites[who]
        site.keys = ThresholdKeys(JOB, MEMBERS, who, PARAMS, site.keys.exchange, site.state, site.keys.credentials,
                                  MINIMUM)
        with pytest.raises(RelayRefused, match="made a decryption share of the round for 2,3,4,5"):
            site.keys.decryption_share(SIZE, 4, 2, smaller, decryptors)


def test_the_residual_two_attempts_decrypted_by_disjoint_honest_groups_difference_to_one_update(
        federation: tuple[Coordinator, dict[str, Site]]) -> None:
    """What the rule per member leaves (docs/he.md, "The uploader floor"): n = 5, t = 3, k = 1 (c), so
    2(t - k) = 4 = n - k and the four honest members split into two groups of t - k = 2.  Round 5 attempt 0 over
    {b, c, d, e} is decrypted by c, d, e; attempt 1 names {b, c, d} to a and b, which made no share of round 5, so
    they make theirs (c, which keeps no rule of its own, too), and the difference of the two decrypted sums is
    e's update (correlation > 0.999).  With
    t >= (n + k + 1)/2 = 4 the two groups would share an honest decryptor, which refuses the second set."""
    coordinator, sites = federation
    colluder, rng = "participant:c", np.random.default_rng(5)
    sets = {0: ("participant:b", colluder, "participant:d", HONEST), 1: ("participant:b", colluder, "participant:d")}
    groups = {0: (colluder, "participant:d", HONEST), 1: ("participant:a", "participant:b", colluder)}
    updates = {who: rng.normal(0, 0.1, SIZE) * EXAMPLES[who] for who in MEMBERS}  # the same in both attempts
    sums = []
    for attempt in (0, 1):
        uploads = [sites[who].keys.encrypt(updates[who], EXAMPLES[who], 5, attempt) for who in sets[attempt]]
        decryption = Decryption(5, attempt, sets[attempt], sum(EXAMPLES[who] for who in sets[attempt]),
                                _fold(coordinator, uploads), groups[attempt], coordinator.relay, SIZE)
        for who in groups[attempt]:
            if who == colluder and attempt:  # the colluder makes its share with its key, skipping its own rule
                keys = sites[who].keys
                share = masked.masked_share(keys.context, _key(sites, who), keys.group, SIZE,
                                            seeded.UploadRound(coordinator.relay.seed, 5, attempt),
                                            sorted(map(_index, sets[attempt])), sorted(map(_index, groups[attempt])))
            else:
                share = sites[who].keys.decryption_share(SIZE, 5, attempt, sets[attempt], groups[attempt])
            decryption.submit(who, share)
        sums.append(sites[colluder].keys.open_version(decryption.version(), SIZE)[0])
    assert correlation(sums[0] - sums[1], updates[HONEST]) > 0.999
    with pytest.raises(RelayRefused, match="made a decryption share of the round for 2,3,4,5"):
        sites["participant:d"].keys.decryption_share(SIZE, 5, 1, sets[1], groups[1])


def test_single_key_coordinator_and_one_site_decrypt_every_individual_update(tmp_path: Path) -> None:
    """``he.mode = "single_key"``: the dealer seals the one job key to every member through the coordinator's
    relay (``JobKeys``, ``KeyHolder``); the coordinator, keeping member c's upload, and member b, holding the key
    legitimately, read c's update (correlation > 0.999) and its weight."""
    params = CkksParams()
    relay = JobKeys(JOB, params, "", Store(tmp_path / "state.sqlite"))
    holders = {who: KeyHolder(_SingleKeyDoor(relay, who), params, JOB) for who in MEMBERS[:3]}  # type: ignore[arg-type]
    for who, holder in holders.items():
        holder.joined(who, relay.register(who, holder.public_key, holder.attestation()))
    for holder in holders.values():
        holder.refresh()
    for holder in holders.values():
        holder.refresh()
    assert all(holder.secret is not None for holder in holders.values())
    update = np.random.default_rng(3).normal(0, 0.1, SIZE)
    upload = holders["participant:c"].require().encrypt(update * 25, 25)  # what the coordinator received
    relay.new_sum(SIZE).parse(upload)  # well-formed under the job's public context
    vector, weight = holders["participant:b"].require().decrypt(upload, SIZE)
    assert weight == pytest.approx(25, abs=1e-3)
    assert correlation(vector, update) > 0.999


class _SingleKeyDoor:
    """A single-key member's relay calls, as the coordinator's servicer makes them (every member online)."""

    def __init__(self, relay: JobKeys, who: str) -> None:
        self.relay, self.who = relay, who

    def publish_context(self, job_id: str, public_context: bytes, key_id: bytes, attestation: bytes = b"") -> None:
        self.relay.publish(self.who, public_context, key_id, attestation)

    def share_key(self, job_id: str, recipient_id: str, sealed_key: bytes) -> None:
        self.relay.share(self.who, recipient_id, sealed_key)

    def keys(self, job_id: str) -> KeyState:
        return self.relay.state_for(self.who, lambda who: True)


def _fold(coordinator: Coordinator, uploads: Sequence[bytes]) -> bytes:
    total = coordinator.relay.require().new_sum(SIZE)
    for upload in uploads:
        total.add(total.parse(upload))
    return total.to_bytes()


def test_every_test_the_readme_threat_model_cites_exists() -> None:
    """The threat model's rows stay backed: each ``tests/...py::name`` it cites is a test function in that file."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("**Threat model**"):readme.index("## Secure aggregation")]
    cited = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", table)
    assert len(cited) >= 10
    missing = [f"{path}::{name}" for path, name in cited
               if not re.search(rf"^def {name}\(", (REPO / path).read_text(encoding="utf-8"), re.MULTILINE)]
    assert missing == []


def test_the_threshold_parameters_in_docs_he_are_the_codes() -> None:
    """docs/he.md's table of smudging widths by n is what ``ThresholdParams`` computes for its defaults."""
    rows = re.findall(r"^\| (\d+) \| (\d+) \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \| ([\d.e+-]+) \| (\d+) \|$",
                      (REPO / "docs" / "he.md").read_text(encoding="utf-8"), re.MULTILINE)
    assert [int(row[0]) for row in rows] == [3, 5, 10, 50]
    for n, t, bound, sigma, bits, error, kept in rows:
        params = ThresholdParams(members=int(n))
        assert (params.t, round(params.noise_bound), round(params.smudging_sigma)) == (
            int(t), int(bound.replace(",", "")), int(sigma.replace(",", "")))
        assert round(math.log2(params.smudging_sigma), 1) == float(bits)
        assert f"{params.error_estimate:.1e}" == error and params.download_bits[0] == int(kept)
