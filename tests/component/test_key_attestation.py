"""Authenticated key material against an actively malicious relay (issue 30, items 1 and 4).

Real key holders (``participant.keys.KeyHolder``) with real mTLS certificates of a throwaway federation CA talk
gRPC to a real coordinator.  Honest dealing goes through, every key attested.  Then the relay between them and
the coordinator rewrites what ``GetKeys`` answers: it swaps a member's exchange key for its own, injects a
member of its own making, hands a recipient a dealer key, key id and sealed context of its own making, or
replays another job's key id.  Each is refused by the member it reaches, nothing is sealed to the attacker
nor accepted from it, and the member's report pauses the job with the reason named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import HESection, dump_toml
from fedprompt.coordinator.keys import JobKeys
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import JobState
from fedprompt.crypto.attest import KeyCredentials, digest
from fedprompt.crypto.ckks import SecretContext
from fedprompt.crypto.errors import AttestationError
from fedprompt.crypto.sealing import new_exchange_key, public_bytes, seal
from fedprompt.errors import InvalidRequest, PermissionDenied, PreconditionFailed, Unauthenticated
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.participant.keys import KeyHolder
from fedprompt.protocol import KeyState
from fedprompt.wire.channel import ClientTls
from tests.support import LiveCoordinator, ThrowawayPki, tiny_job

SIZE = 8
HE = HESection(enabled=True, mode="single_key")
A, B, C = "participant:a", "participant:b", "participant:c"
Tamper = Callable[[KeyState], KeyState]


class Relay(GrpcLink):
    """The path between a member and the coordinator, under the attacker's control: ``tamper`` rewrites every
    key state the coordinator answers; everything else (reports included) passes through."""

    def __init__(self, target: str, tls: ClientTls) -> None:
        super().__init__(target, tls=tls, give_up_after_s=5)
        self.tamper: Tamper = lambda state: state

    def keys(self, job_id: str) -> KeyState:
        return self.tamper(super().keys(job_id))


def _credentials(tls: ClientTls) -> KeyCredentials:
    return KeyCredentials.from_files(Path(tls.ca_cert), Path(tls.cert), Path(tls.key))


@dataclass
class Federation:
    coordinator: LiveCoordinator
    pki: ThrowawayPki
    admin: AdminClient
    links: dict[str, Relay]
    creds: dict[str, KeyCredentials]

    def job(self, job_id: str) -> JobRuntime:
        return self.coordinator.call(lambda: self.coordinator.server.jobs.job(job_id))

    def new_job(self, name: str) -> str:
        config = tiny_job(self.pki.dir, name=name, rounds=1, allowed_participants=(A, B, C))
        return self.admin.create_job(dump_toml(dataclasses.replace(config, he=HE)))

    def join(self, job_id: str, *names: str) -> dict[str, KeyHolder]:
        """Each member joins with its attested exchange key; the first deals and publishes its attested context."""
        holders = {}
        for name in names:
            holder = KeyHolder(self.links[name], HE.params(), job_id, credentials=self.creds[name])
            info = self.links[name].join(job_id, 30, 4, SIZE, holder.public_key, holder.attestation())
            holder.joined(name, info.deal_keys)
            holders[name] = holder
        return holders

    def paused_with(self, job_id: str) -> str:
        job = self.job(job_id)
        state, reason = self.coordinator.call(lambda: (job.state, job.lifecycle.reason))
        assert state is JobState.PAUSED
        return str(reason)

    def keys(self, job_id: str) -> JobKeys:
        keys = self.job(job_id).keys
        assert keys is not None
        return keys

    def sealed_to(self, job_id: str) -> set[str]:
        keys = self.keys(job_id)
        return set(self.coordinator.call(lambda: dict(keys.sealed)))


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Federation]:
    pki = ThrowawayPki(tmp_path / "federation")
    with LiveCoordinator(tmp_path / "coord", pki) as coordinator:
        tls = {name: pki.tls(name) for name in (A, B, C)}
        links = {name: Relay(coordinator.target, t) for name, t in tls.items()}
        admin = AdminClient(coordinator.target, pki.tls("admin:alice"))
        yield Federation(coordinator, pki, admin, links, {name: _credentials(t) for name, t in tls.items()})
        for link in links.values():
            link.close()
        admin.close()


def test_honest_members_deal_the_key_with_every_key_attested(fed: Federation) -> None:
    job_id = fed.new_job("honest")
    holders = fed.join(job_id, A, B, C)
    state = fed.links[B].keys(job_id)
    assert state.dealer_attestation and state.crl == fed.pki.ca.crl_path.read_bytes()  # relayed as signed
    holders[A].refresh()
    for name in (B, C):
        holders[name].refresh()
        assert holders[name].require().key_id == holders[A].require().key_id
    assert fed.sealed_to(job_id) == {B, C}
    assert fed.job(job_id).state is JobState.CREATED


def test_a_swapped_exchange_key_is_refused_and_nothing_is_sealed_to_it(fed: Federation) -> None:
    job_id = fed.new_job("swap")
    holders = fed.join(job_id, A, B)
    attacker = public_bytes(new_exchange_key())
    fed.links[A].tamper = lambda s: dataclasses.replace(
        s, needs_key=tuple((p, attacker, att) for p, _, att in s.needs_key))
    with pytest.raises(AttestationError, match="participant:b is not the key it signed"):
        holders[A].refresh()
    assert fed.sealed_to(job_id) == set()
    assert "key material refused by participant:a" in fed.paused_with(job_id)
    assert "not the key it signed" in fed.paused_with(job_id)


def test_a_member_injected_by_the_relay_is_refused(fed: Federation, tmp_path: Path) -> None:
    """The relay lists a member of its own, signed under a CA of its own making (it has no federation CA key)."""
    job_id = fed.new_job("inject")
    holders = fed.join(job_id, A, B)
    rogue = ThrowawayPki(tmp_path / "rogue")
    mallory = new_exchange_key()
    forged = _credentials(rogue.tls("participant:mallory")).signer.sign(
        job_id, "exchange", (digest(public_bytes(mallory)),))
    fed.links[A].tamper = lambda s: dataclasses.replace(
        s, needs_key=(*s.needs_key, ("participant:mallory", public_bytes(mallory), forged)))
    with pytest.raises(AttestationError, match="not issued by the federation CA"):
        holders[A].refresh()
    assert fed.sealed_to(job_id) == set()  # not even the honest member b: nothing is sealed in a refused batch
    assert "participant:mallory" in fed.paused_with(job_id)


@pytest.mark.parametrize("keeps_key_id, message", [
    (False, "dealer key relayed for participant:a is not the key it signed"),
    (True, "exchange key relayed for participant:a is not the key it signed"),
])
def test_a_foreign_dealer_key_is_refused_by_its_recipient(fed: Federation, keeps_key_id: bool, message: str) -> None:
    """The relay makes its own CKKS key and seals it to b under its own X25519 key, presented as a's: with its
    own key id (the dealer's statement does not cover it), or with the dealer's (the sealer's does not)."""
    job_id = fed.new_job("foreign")
    holders = fed.join(job_id, A, B)
    own, sealer = SecretContext.create(HE.params()), new_exchange_key()
    blob = seal(own.secret_bytes(), sender=sealer, recipient_public=holders[B].public_key, job_id=job_id,
                sender_id=A, recipient_id=B)
    keys = fed.keys(job_id)
    relayed = fed.coordinator.call(lambda: keys.attestations[A])  # a's own statement, as the relay holds it

    def tamper(state: KeyState) -> KeyState:
        state = dataclasses.replace(state, sealed_key=blob, sealer_id=A, sealer_public_key=public_bytes(sealer),
                                    sealer_attestation=relayed)
        return state if keeps_key_id else dataclasses.replace(state, public_context=own.public_bytes(),
                                                              key_id=own.key_id)

    fed.links[B].tamper = tamper
    with pytest.raises(AttestationError, match=message):
        holders[B].refresh()
    assert holders[B].secret is None
    assert "key material refused by participant:b" in fed.paused_with(job_id)


def test_a_key_id_replayed_from_another_job_is_refused(fed: Federation) -> None:
    """b got the key of job 1 from a; the relay hands b job 1's key id, context and sealed key in job 2."""
    first = fed.new_job("first")
    holders = fed.join(first, A, B)
    holders[A].refresh()
    old = fed.links[B].keys(first)
    holders[B].refresh()
    second = fed.new_job("second")
    later = fed.join(second, A, B)
    fed.links[B].tamper = lambda s: dataclasses.replace(
        old, needs_key=(), dealer_id=s.dealer_id, crl=s.crl)
    with pytest.raises(AttestationError, match="signed for another job"):
        later[B].refresh()
    assert later[B].secret is None
    assert "signed for another job" in fed.paused_with(second)
    assert fed.job(first).state is JobState.CREATED  # the other job is untouched


def test_only_a_member_of_an_encrypted_job_can_report_a_key_fault(fed: Federation) -> None:
    job_id = fed.new_job("reports")
    fed.join(job_id, A)
    with pytest.raises(PermissionDenied, match="participant:b has not joined"):
        fed.links[B].report_key_fault(job_id, "a reason of its own")
    plain = fed.admin.create_job(dump_toml(tiny_job(fed.pki.dir, name="plain", allowed_participants=(A,))))
    with pytest.raises(PreconditionFailed, match="not encrypted"):
        fed.links[A].report_key_fault(plain, "no keys here")
    assert fed.job(job_id).state is JobState.CREATED and fed.job(plain).state is JobState.CREATED


def test_a_join_whose_statement_is_about_another_key_is_refused_with_a_status(fed: Federation) -> None:
    job_id = fed.new_job("mistake")
    holder = KeyHolder(fed.links[A], HE.params(), job_id, credentials=fed.creds[A])
    with pytest.raises(InvalidRequest, match="not the key it signed"):
        fed.links[A].join(job_id, 30, 4, SIZE, public_bytes(new_exchange_key()), holder.attestation())


def test_a_relay_that_also_drops_the_report_still_gets_nothing_sealed(fed: Federation) -> None:
    """The pause is what an honest coordinator does with a report; the refusal does not depend on it."""
    job_id = fed.new_job("dropped")
    holders = fed.join(job_id, A, B)
    attacker = public_bytes(new_exchange_key())
    relay = fed.links[A]
    relay.tamper = lambda s: dataclasses.replace(s, needs_key=tuple((p, attacker, att) for p, _, att in s.needs_key))

    def dropped(job_id: str, reason: str) -> None:
        raise Unauthenticated("UNAVAILABLE: the relay swallowed the report")

    relay.report_key_fault = dropped  # type: ignore[method-assign]
    with pytest.raises(AttestationError, match="not the key it signed"):
        holders[A].refresh()
    assert fed.sealed_to(job_id) == set() and fed.job(job_id).state is JobState.CREATED
