"""Collective evaluation keys: SEAL ``RelinKeys`` and ``GaloisKeys`` for ``s = sum s_i``, without anyone holding ``s``.

The two-round protocol RKG of Mouchet, Troncoso-Pastoriza, Bossuat and Hubaux ("Multiparty Homomorphic
Encryption from Ring-Learning-with-Errors", PETS 2021, Protocol 2; lattigo's ``mhe`` package implements the
same), in SEAL's key-switching-key form.  SEAL's key for ``s^2`` has one pair per data prime ``q_j``:
``k_j = (b_j, c_j)`` with ``b_j + c_j s = P s^2 w_j + e`` over the key-level primes, where ``P`` is the special
prime and ``w_j`` is 1 mod ``q_j`` and 0 mod every other prime (``KeyGenerator::generate_one_kswitch_key``).

* Round 1, member ``i`` with an ephemeral ternary ``u_i`` and common reference polynomials ``a_j``:
  ``h0_i[j] = -u_i a_j + P w_j s_i + e``, ``h1_i[j] = s_i a_j + e``; anyone sums them into ``h0[j], h1[j]``.
* Round 2: ``h0'_i[j] = s_i h0[j] + e``, ``h1'_i[j] = (u_i - s_i) h1[j] + e``; the key is
  ``k_j = (sum h0'_i[j] + sum h1'_i[j], h1[j])``, and indeed
  ``k_j[0] + h1[j] s = P w_j s^2 + s e0 + (u - s) e1 + e2 + e3 + s e1``: small noise, divided by ``P`` when
  SEAL switches keys.

Galois keys (protocol RTG of the same paper, one round): SEAL's key for the element ``g`` switches from
``s(X^g)`` to ``s``, ``k_j = (-a_j s + P w_j s(X^g) + e, a_j)``, and the automorphism is linear, so member
``i`` sends ``-a_j s_i + sigma_g(P w_j s_i + e)`` and the sum over the members is the key.  In SEAL's NTT order
``sigma_g`` is a permutation of the slots (``rns.Ring.galois_permutation``).

Every message is an RLWE sample in ``s_i`` (or ``u_i``) made through :meth:`threshold.Member.rlwe_sample`, whose
one-use labels keep a member from answering a round twice.  The key is public evaluation material, like SEAL's.
A product of ciphertexts carries far more noise than a sum, so its threshold decryption needs a smudging width
sized on that noise: ``ThresholdParams`` sizes it for sums only (``docs/he.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tenseal.sealapi as seal

from fedprompt.crypto.errors import InvalidValue
from fedprompt.crypto.rns import Poly, Ring
from fedprompt.crypto.threshold import Member, crp

Pairs = list[tuple[Poly, Poly]]


def reference_polys(ring: Ring, job_seed: bytes) -> list[Poly]:
    """``a_j``, one per data prime, over the key-level primes; domain-separated from every other CRP."""
    return [crp(ring, job_seed, b"relin-%d" % j) for j in range(ring.data_limbs)]


def _gadget(ring: Ring, j: int) -> np.ndarray:
    """``P w_j`` per key-level prime (a column): ``P mod q_j`` at prime ``j``, 0 elsewhere."""
    special = ring.moduli[-1]
    return np.array([special % q if k == j else 0 for k, q in enumerate(ring.moduli)], dtype=object).reshape(-1, 1)


class RelinParty:
    """A member's part in RKG: it holds the ephemeral ``u_i`` between the two rounds."""

    def __init__(self, member: Member, stored: bytes = b"") -> None:
        """A fresh ternary ``u_i``, or ``stored`` (:meth:`ephemeral_bytes`) after a restart between the rounds."""
        self.member, self.ring = member, member.ring
        limbs = len(self.ring.moduli)
        if stored:
            self._u = self.ring.parse_residues(stored, 0, 1, limbs)[0].astype(object)
        else:
            secret = seal.KeyGenerator(self.ring.context).secret_key()  # held while read: data() refers into it
            self._u = self.ring.read_plaintext(secret.data(), limbs)

    def ephemeral_bytes(self) -> bytes:
        """``u_i`` for the member's own state directory (owner-only) until round 2 is sent; never sent."""
        return np.asarray(self._u, dtype=np.uint64).tobytes()

    def round1(self, crps: Sequence[Poly]) -> Pairs:
        """``(h0_i[j], h1_i[j])`` per data prime."""
        q = self.ring.q(len(self.ring.moduli))
        out = []
        for j, a in enumerate(crps):
            gadget = np.broadcast_to(_gadget(self.ring, j), a.shape)
            h0 = (self.member.rlwe_sample(-gadget % q, b"relin-h0-%d" % j) - self._u * a) % q
            out.append((h0, self.member.rlwe_sample(-a % q, b"relin-h1-%d" % j)))
        return out

    def round2(self, round1: Pairs) -> Pairs:
        """``(h0'_i[j], h1'_i[j])`` per data prime, on the summed first round."""
        q = self.ring.q(len(self.ring.moduli))
        return [(self.member.rlwe_sample(-h0 % q, b"relin-h0'-%d" % j),
                 (self.member.rlwe_sample(h1, b"relin-h1'-%d" % j) + self._u * h1) % q)
                for j, (h0, h1) in enumerate(round1)]


def galois_reference_polys(ring: Ring, job_seed: bytes, element: int) -> list[Poly]:
    """``a_j`` of the Galois element ``element``, one per data prime, over the key-level primes."""
    return [crp(ring, job_seed, b"galois-%d-%d" % (element, j)) for j in range(ring.data_limbs)]


def galois_share(member: Member, crps: Sequence[Poly], element: int) -> list[Poly]:
    """``member``'s RTG share for the Galois element ``element``: ``h_i[j]`` per data prime, on the CRPs of
    :func:`galois_reference_polys`."""
    ring = member.ring
    q = ring.q(len(ring.moduli))
    permutation = ring.galois_permutation(element)
    out = []
    for j, a in enumerate(crps):
        gadget = np.broadcast_to(_gadget(ring, j), a.shape)
        rotated = member.rlwe_sample(-gadget % q, b"galois-%d-w-%d" % (element, j))[:, permutation]
        out.append((member.rlwe_sample(a, b"galois-%d-a-%d" % (element, j)) + rotated) % q)
    return out


def galois_keys(ring: Ring, crps: Mapping[int, list[Poly]], shares: Mapping[int, Sequence[list[Poly]]],
                members: int) -> seal.GaloisKeys:
    """SEAL's ``GaloisKeys``: per element, ``(sum_i h_i[j], a_j)`` per data prime; every member must answer."""
    q = ring.q(len(ring.moduli))
    keys = {}
    for element, answers in shares.items():
        if len(answers) != members or any(len(h) != ring.data_limbs for h in answers):
            raise InvalidValue(f"Galois key {element} needs {ring.data_limbs} shares from each of the {members} "
                               f"members, got {len(answers)} answers")
        keys[element] = [(sum(h[j] for h in answers) % q, crps[element][j]) for j in range(ring.data_limbs)]
    return ring.galois_keys(keys)


def aggregate(ring: Ring, shares: Sequence[Pairs], members: int) -> Pairs:
    """The sum of every member's pairs (both rounds aggregate the same way); all ``members`` must answer."""
    if len(shares) != members or len({len(s) for s in shares}) != 1 or len(shares[0]) != ring.data_limbs:
        raise InvalidValue(f"relinearisation key generation needs {ring.data_limbs} pairs from each of the "
                           f"{members} members, got {len(shares)} answers")
    q = ring.q(len(ring.moduli))
    return [(sum((s[j][0] for s in shares), np.zeros_like(shares[0][j][0])) % q,
             sum((s[j][1] for s in shares), np.zeros_like(shares[0][j][1])) % q) for j in range(ring.data_limbs)]


def relin_keys(ring: Ring, round1: Pairs, round2: Pairs) -> seal.RelinKeys:
    """SEAL's ``RelinKeys`` from the summed rounds: ``(h0'[j] + h1'[j], h1[j])`` per data prime."""
    q = ring.q(len(ring.moduli))
    return ring.relin_keys([((h0 + h1) % q, c) for (h0, h1), (_, c) in zip(round2, round1, strict=True)])
