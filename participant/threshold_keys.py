"""A member's side of a threshold-CKKS job (``he.mode = "threshold"``): its own secret share, key setup through
the relay, seeded uploads and flooded decryption shares, each one-use record kept on disk.

Key setup (Mouchet et al., PETS 2021, CKG with Shamir t-of-n; ``crypto.threshold``): the member draws its own
secret ``s_i`` and publishes its public share ``p_i`` on the job's reference polynomial, signed with its
certificate (``crypto.attest``, purpose ``key-share``).  It deals Shamir sub-shares of ``s_i`` sealed to each
other member's exchange key, once every one of those keys verified, with 32 random bytes of the members'
group key inside each (``crypto.sealing.group_key``).  Once all n public shares verified and every member's
dealing opened, it holds the collective key, its key id, its ``KeyShare`` and the group key.

Everything a restarted daemon must reuse is written before it leaves the site, owner-only, under
``keys/<job_id>/``: the secret, the public share (one RLWE sample on the CRP: publishing another would be a
second one), the dealing (a second, different dealing would leave members with inconsistent shares), the
received sub-shares, and the one-use records: a member encrypts once per round attempt (two ``c0`` on one
``a_r`` give the difference of two updates away) and makes one decryption share per round attempt (more on
one ``a_r`` let a lattice reduction strip the flooding).  A record is written, flushed and synced before the
upload or the share is returned.

A share is of the named uploaders' summed seeded ``c1``, and the coordinator adds it to a ``c0`` of its making;
a coordinator that names one member as a round's only uploader would get that upload decrypted.  So, as secure
aggregation requires a minimum surviving set (Bonawitz et al., CCS 2017), a member makes no share for a set
of fewer than ``min_uploaders`` distinct members (``job.min_participants``, the coordinator's own rule for
closing a round) or one naming anyone outside the roster (``RelayRefused``: the caller reports it); the floor
holds a Gram job's uploads and its accepted sums alike (``participant.threshold_gramkeys``).  Nor does it
make shares of one round for two uploader sets, in any attempts: without DP its update is the same in each, and
two sums over different sets differ by the updates they do not share (the set is a one-use record too, and
binds a Gram job's accepted sums alike: ``participant.threshold_gramkeys``).

Decryption shares travel masked under the group key (``crypto.threshold_masked``): the coordinator adds them
to the sum's ``c0`` and compresses the result, which only members can unmask; t shares in the clear would let
it decrypt the aggregate.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedprompt.crypto import threshold_masked, threshold_seeded
from fedprompt.crypto.attest import KeyCredentials, digest
from fedprompt.crypto.errors import InvalidCiphertext, InvalidValue
from fedprompt.crypto.sealing import GROUP_CONTRIBUTION_BYTES, group_key, seal, unseal
from fedprompt.crypto.threshold import KeyShare, Member, ThresholdContext, ThresholdParams, crp
from fedprompt.crypto.threshold_seeded import UploadRound, job_seed
from fedprompt.errors import FedPromptError, RelayRefused
from fedprompt.participant.keys import key_dir, write_private
from fedprompt.protocol import ThresholdKeyState, ThresholdLink
from fedprompt.wire.threshold import unpack_version

log = structlog.get_logger("participant.threshold_keys")

SECRET, PUBLIC, SHARES, DEALING, RECEIVED, USED = ("threshold.secret", "threshold.public", "threshold.shares",
                                                   "threshold.dealing", "threshold.received", "threshold.used")
#: The one-use records of a Gram job's shares (``participant.threshold_gramkeys``) begin so.
GRAM_SPEND = "gram-"
_PART = struct.Struct("<HI")
#: How far the combined weight slot may stray from the declared weight, the uploaders' example counts in units of
#: ``he.weight_unit`` (``JobConfig.summand_weight``); the flooding errs by ~5e-5 absolute.
WEIGHT_TOLERANCE = 0.01


def _frame(parts: Mapping[int, bytes]) -> bytes:
    return b"".join(_PART.pack(k, len(v)) + v for k, v in sorted(parts.items()))


def _unframe(data: bytes) -> dict[int, bytes]:
    parts, offset = {}, 0
    while offset < len(data):
        key, size = _PART.unpack_from(data, offset)
        offset += _PART.size
        parts[key] = data[offset : offset + size]
        offset += size
    return parts


class ThresholdKeys:
    """One member's key material of one threshold job, and the one-use operations on it."""

    def __init__(self, job_id: str, members: Sequence[str], identity: str, params: ThresholdParams,
                 exchange: X25519PrivateKey, state_dir: Path | None = None,
                 credentials: KeyCredentials | None = None, min_uploaders: int = 2) -> None:
        self.members = sorted(members)
        self.min_uploaders = max(2, min_uploaders)
        if identity not in self.members or len(self.members) != params.members:
            raise FedPromptError(f"{identity} is not one of the {params.members} members of threshold job {job_id}")
        self.job_id, self.identity, self.params = job_id, identity, params
        self.index = self.members.index(identity) + 1
        self.exchange, self.credentials = exchange, credentials
        self.seed = job_seed(job_id, self.members)
        self.context = ThresholdContext(params)
        self.dir = key_dir(state_dir, job_id) if state_dir is not None else None
        stored = self._read(SECRET)
        self.member = Member(params, self.context.ring, self.index, stored)
        if not stored:
            self._write(SECRET, self.member.secret_bytes())
        self.public = self._read(PUBLIC) or self._keep(PUBLIC, np.asarray(
            self.member.public_share(crp(self.context.ring, self.seed)), dtype=np.uint64).tobytes())
        dealing = self._read(DEALING) or self._keep(DEALING, _frame(
            {0: os.urandom(GROUP_CONTRIBUTION_BYTES), **self.member.deal()}))
        self._dealing = _unframe(dealing)
        self._used: set[str] = set()  # the one-use records, and their index (``_note``):
        self._bound: dict[int, str] = {}  # round -> the record of the uploader set its shares are of
        self._shares = 0  # plain rounds' share records
        self._gram_spends: set[str] = set()  # Gram shares' records less their count
        self._gram_spent = 0  # the decryptions those counted
        for label in set(self._read(USED).decode().split()):
            self._note(label)
        self.key: KeyShare | None = None
        self.group = b""
        received = self._read(RECEIVED)
        if received:
            self._complete({d: (p[:GROUP_CONTRIBUTION_BYTES], p[GROUP_CONTRIBUTION_BYTES:])
                            for d, p in _unframe(received).items()}, self._shares_file())
            log.info("threshold key share reloaded", job_id=job_id, member=self.index)

    # -- persistence -------------------------------------------------------------------------------------------
    def _read(self, name: str) -> bytes:
        path = self.dir / name if self.dir is not None else None
        return path.read_bytes() if path is not None and path.exists() else b""

    def _write(self, name: str, data: bytes) -> None:
        if self.dir is not None:
            write_private(self.dir / name, data)

    def _keep(self, name: str, data: bytes) -> bytes:
        self._write(name, data)
        return data

    def _record(self, label: str) -> None:
        """One-use record, on disk before what it guards leaves the site; refused if it was used before."""
        if label in self._used:
            raise InvalidValue(f"member {self.identity} already used {label[:40]}: a second upload or decryption "
                               "share for one round attempt would reveal what it protects")
        self._note(label)
        if self.dir is not None:
            fd = os.open(self.dir / USED, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, label.encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)

    def _note(self, label: str) -> None:
        """Hold one one-use record, indexed for the checks that consult it on every share (O(1) each, however
        long the job): the uploader set a round is bound to (``set:<round>:<indices>``), the plain rounds' shares
        (``share:<round>:<attempt>``) and a Gram job's shares with the decryptions each spent
        (``gram-share|gram-sum:<round>:<attempt>:<count>``)."""
        kind, _, rest = label.partition(":")
        spend, _, count = label.rpartition(":")
        try:
            if kind == "set":
                self._bound[int(rest.split(":", 1)[0])] = label
            elif kind == "share":
                self._shares += 1
            elif kind.startswith(GRAM_SPEND):
                self._gram_spent += int(count)
                self._gram_spends.add(spend)
        except ValueError:  # fail closed: a record we cannot read might be the one that refuses the next share
            raise FedPromptError(f"the one-use records of threshold job {self.job_id} ({USED}) hold a malformed "
                                 f"record {label[:60]!r}: the member stops rather than decrypt past it") from None
        self._used.add(label)

    def _shares_file(self) -> list[bytes]:
        data = _unframe(self._read(SHARES))
        return [data[i] for i in range(1, self.params.members + 1)]

    # -- key setup ---------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.key is not None

    def _sign(self, purpose: str, digests: tuple[bytes, ...]) -> bytes:
        return self.credentials.signer.sign(self.job_id, purpose, digests) if self.credentials is not None else b""

    def _verify(self, blob: bytes, identity: str, purpose: str, key: bytes) -> None:
        if self.credentials is not None:
            self.credentials.trust.verify(blob, job_id=self.job_id, identity=identity, purpose=purpose,
                                          digests=(digest(key),))

    def attestation(self) -> bytes:
        """The signed statement that the public share is ours (b"" without credentials)."""
        return self._sign("key-share", (digest(self.public),))

    def refresh(self, link: ThresholdLink) -> bool:
        """One look at the relay: publish our share, deal once every exchange key verified, and complete the key
        once every share and dealing is in.  True when the key is ready.  ``AttestationError``: a relayed key
        did not verify, nothing was sealed to or accepted from it (the caller reports it)."""
        state = link.threshold_keys(self.job_id)
        if self.credentials is not None:
            self.credentials.trust.update_crl(state.crl)
        if not any(who == self.identity for who, _, _ in state.shares):
            link.publish_share(self.job_id, self.public, self.attestation())
        exchange = self._exchange(state)
        if not state.dealt_by_caller and exchange is not None:
            link.deal(self.job_id, {who: seal(self._dealing[0] + self._dealing[self.members.index(who) + 1],
                                              sender=self.exchange, recipient_public=key, job_id=self.job_id,
                                              sender_id=self.identity, recipient_id=who)
                                    for who, key in exchange.items()})
            log.info("key sub-shares dealt", job_id=self.job_id, member=self.index, recipients=len(exchange))
        if self.key is None and exchange is not None:
            self._accept(state, exchange)
        return self.ready

    def _exchange(self, state: ThresholdKeyState) -> dict[str, bytes] | None:
        """Every other member's exchange key, each verified; None while one is missing."""
        keys = {who: (key, att) for who, key, att in state.exchange if who in self.members and who != self.identity}
        if len(keys) != len(self.members) - 1:
            return None
        for who, (key, att) in keys.items():
            self._verify(att, who, "exchange", key)
        return {who: key for who, (key, _) in keys.items()}

    def _accept(self, state: ThresholdKeyState, exchange: Mapping[str, bytes]) -> None:
        shares = {who: (share, att) for who, share, att in state.shares if who in self.members}
        size = len(self.public)
        for who, (share, att) in shares.items():  # each as it arrives: a swapped share is refused at once
            if len(share) != size:
                raise InvalidCiphertext(f"the public key share relayed for {who[:60]!r} has {len(share)} bytes, "
                                        f"not {size}")
            self._verify(att, who, "key-share", share)
        dealt = {who: blob for who, blob in state.dealt if who in exchange}
        if len(shares) != len(self.members) or len(dealt) != len(exchange):
            return
        opened = {self.index: (self._dealing[0], self._dealing[self.index])}
        for who, blob in dealt.items():
            plain = unseal(blob, recipient=self.exchange, sender_public=exchange[who], job_id=self.job_id,
                           sender_id=who, recipient_id=self.identity)
            opened[self.members.index(who) + 1] = (plain[:GROUP_CONTRIBUTION_BYTES], plain[GROUP_CONTRIBUTION_BYTES:])
        ordered = [shares[who][0] for who in self.members]
        self._complete(opened, ordered)
        self._write(SHARES, _frame(dict(enumerate(ordered, start=1))))
        self._write(RECEIVED, _frame({d: g + s for d, (g, s) in opened.items()}))
        log.info("threshold key ready", job_id=self.job_id, member=self.index, key_id=self.context.key_id.hex()[:16])

    def _complete(self, opened: Mapping[int, tuple[bytes, bytes]], shares: Sequence[bytes]) -> None:
        ring = self.context.ring
        limbs = len(ring.moduli)
        polys = [np.frombuffer(s, dtype=np.uint64).astype(object).reshape(limbs, ring.n) for s in shares]
        self.key = KeyShare(self.params, ring, self.index, {d: s for d, (_, s) in opened.items()})
        self.context.set_public_key(crp(ring, self.seed), polys)
        self.group = group_key(self.job_id, [opened[d][0] for d in sorted(opened)])

    # -- rounds ------------------------------------------------------------------------------------------------
    def _indices(self, who: Sequence[str]) -> list[int]:
        unknown = sorted(set(who) - set(self.members))
        if unknown:
            raise InvalidValue(f"{unknown[0][:60]!r} is not a member of threshold job {self.job_id}")
        return sorted(self.members.index(w) + 1 for w in who)

    def _check_uploaders(self, round_: int, uploaders: Sequence[str], noun: str = "uploader") -> None:
        """``RelayRefused`` unless the named uploaders are ``min_uploaders`` or more distinct members: the floor
        on every sum a share decrypts, a plain round's uploaders and a Gram job's uploads (the matrix) and its
        accepted uploaders (``noun`` "accepted uploader") alike."""
        strangers = sorted(set(uploaders) - set(self.members))
        if strangers:
            raise RelayRefused(f"round {round_} of threshold job {self.job_id} names {strangers[0][:60]!r} among its "
                               f"{noun}s, and it is not a member: no decryption share made")
        if len(set(uploaders)) != len(uploaders) or len(uploaders) < self.min_uploaders:
            raise RelayRefused(f"round {round_} of threshold job {self.job_id} names {len(set(uploaders))} distinct "
                               f"{noun}(s), fewer than the job's minimum of {self.min_uploaders}: a decryption "
                               "share of it could reveal a single member's update; none made")

    def _check_retry(self, round_: int, users: Sequence[int], named: str) -> str | None:
        """The record to write of the uploader set a decryption share of round ``round_`` sums (None when it is on
        record already); ``RelayRefused`` if this member made a share of the round (in any attempt) for another
        set.  Without DP a member's update is the same in every attempt of a round, so two decrypted sums over
        sets U and U' give the coalition the sum over U minus the sum over U' (one update when they differ by one
        member); over one set they are the same sum.  ``_claim`` writes the record (``_record``, fsynced) before
        the share leaves, so the rule holds across restarts.

        One rule and one record per round serve both kinds of threshold job: a plain round decrypts the sum of
        its uploaders (``decryption_share``), a Gram job's round the sum of the uploads its defence accepted
        (``GramKeys.sum_share``, ``named`` "accepted uploaders"), and either is a sum of the round's updates, so
        any two over different sets difference alike (a label per kind would let a pair of one of each through;
        the records file is the job's own, so two jobs never share one).  A Gram job's matrix shares are bound to
        no set: each entry is one pair's inner product, so two matrices over different sets reveal no more than
        their entries (``docs/he.md``, "The uploader floor")."""
        label = f"set:{round_}:{','.join(map(str, users))}"
        earlier = self._bound.get(round_)
        if earlier is not None and earlier != label:
            raise RelayRefused(f"round {round_} of threshold job {self.job_id} names {named} {label.split(':')[2]} "
                               f"(member indices), but this member made a decryption share of the round for "
                               f"{earlier.split(':')[2]}: two sums of one round over different uploader sets "
                               "could be subtracted to reveal what they do not share; no share made")
        return None if earlier else label

    def _check_budget(self, spend: str, ciphertexts: int) -> None:
        """``InvalidValue`` if a share of ``ciphertexts`` decryptions recorded as ``spend`` would pass
        ``max_decryptions``, the count the smudging noise is sized for.  A plain round's record
        (``share:<round>:<attempt>``) carries no count: each decrypts the job's vector, so the spent count is
        the records times the chunks of this one.  A Gram job's shares (``GRAM_SPEND``: matrices and accepted
        sums) differ in size, so each record carries its count and a second of one round attempt is refused
        here (a plain one by ``_record``)."""
        if spend.startswith(GRAM_SPEND):
            if spend in self._gram_spends:
                raise InvalidValue(f"member {self.identity} already used {spend[:40]}: one share per round attempt")
            spent, unit = self._gram_spent, "decryptions"
        else:
            spent, unit = ciphertexts * self._shares, "chunk decryptions"
        if spent + ciphertexts > self.params.max_decryptions:
            raise InvalidValue(f"member {self.identity} has made {spent} {unit} with this key; {ciphertexts} more "
                               f"would pass max_decryptions = {self.params.max_decryptions}, the count its smudging "
                               "noise is sized for: the job needs new keys")

    def _record_spend(self, spend: str, ciphertexts: int) -> None:
        self._record(f"{spend}:{ciphertexts}" if spend.startswith(GRAM_SPEND) else spend)

    def _claim(self, round_: int, uploaders: Sequence[str], noun: str, spend: str, ciphertexts: int) -> None:
        """Everything a decryption share of a sum over ``uploaders`` must pass, then its records: the uploader floor
        (``_check_uploaders``), the round's one uploader set (``_check_retry``) and the budget (``_check_budget``),
        each refusing before anything is written; then the set's record (its first share of the round) and the
        share's (``spend``), each fsynced before the caller makes the share, so both rules hold across restarts.
        One sequence for a plain round's uploaders (``decryption_share``) and a Gram job's accepted uploaders
        (``GramKeys.sum_share``, ``noun`` "accepted uploader")."""
        self._check_uploaders(round_, uploaders, noun)
        uploader_set = self._check_retry(round_, self._indices(uploaders), f"{noun}s")
        self._check_budget(spend, ciphertexts)
        if uploader_set is not None:
            self._record(uploader_set)
        self._record_spend(spend, ciphertexts)

    def _require(self) -> KeyShare:
        if self.key is None:
            raise FedPromptError(f"threshold job {self.job_id}: key setup has not finished")
        return self.key

    def encrypt(self, vector: np.ndarray, weight: float, round_: int, attempt: int) -> bytes:
        """Our seeded upload for one round attempt (once)."""
        self._require()
        self._record(f"upload:{round_}:{attempt}")
        return threshold_seeded.encrypt(self.context, self.member, vector, weight,
                                        UploadRound(self.seed, round_, attempt))

    def decryption_share(self, vector_size: int, round_: int, attempt: int, uploaders: Sequence[str],
                         decryptors: Sequence[str]) -> bytes:
        """Our flooded share of the uploaders' sum in a round attempt (once), masked under the group key."""
        key, upload = self._require(), UploadRound(self.seed, round_, attempt)
        self._claim(round_, uploaders, "uploader", f"share:{round_}:{attempt}",
                    self.params.ckks.num_ciphertexts(vector_size))
        return threshold_masked.masked_share(self.context, key, self.group, vector_size, upload,
                                             self._indices(uploaders), self._indices(decryptors))

    def open_version(self, data: bytes, vector_size: int) -> tuple[np.ndarray, float]:
        """(sum, weight) of a stored global version (``fedprompt.wire.threshold``): the combined download
        unmasked and decoded here; the weight slot must equal the uploaders' declared example counts (a wrong
        sum or a forged share fails it)."""
        self._require()
        v = unpack_version(data)
        self._indices(v.uploaders)
        vector, weight = threshold_masked.open_sum(self.context, v.combined, vector_size, self.group,
                                                   UploadRound(self.seed, v.round, v.attempt),
                                                   self._indices(v.decryptors))
        if abs(weight - v.declared_weight) > WEIGHT_TOLERANCE:
            raise InvalidValue(f"the aggregate of round {v.round} weighs {weight:.4f}, not the {v.declared_weight:.4f} "
                               "that the examples its uploaders declared come to (in units of he.weight_unit): a "
                               "wrong sum or a forged decryption share")
        return vector, weight
