"""Threshold (multiparty) CKKS: a collective public key, Shamir-shared secret, flooded t-of-n decryption.

No party ever holds the secret key ``s = sum_i s_i``.  The protocol is the multiparty RLWE scheme of Mouchet,
Troncoso-Pastoriza, Bossuat and Hubaux ("Multiparty Homomorphic Encryption from Ring-Learning-with-Errors",
PETS 2021; its collective key generation is Asharov et al., EUROCRYPT 2012), with the t-out-of-n extension
by Shamir sharing of the key (Asharov et al. 2012; Mouchet et al. 2022, "Efficient threshold MHE"):

1. **Common reference polynomial** ``a``: SHAKE-256 of the job seed, uniform mod every prime (:func:`crp`).
2. **Key generation.** Member ``i`` draws its own ternary secret ``s_i`` with SEAL's key generator and
   publishes ``p_i = -a s_i + e_i`` (``e_i`` a rounded Gaussian of SEAL's width 3.2, clipped at 6 sigma).
   Anyone sums the shares into the collective public key ``(sum p_i, a)`` (:meth:`ThresholdContext.
   set_public_key`), a standard SEAL ``PublicKey``.  Uploads are seeded under each ``s_i`` by default
   (``crypto.threshold_seeded``), or made with SEAL's encryptor under this key; either way ciphertexts stay
   standard, so the coordinator's key-less folding (``crypto.ckks.EncryptedSum``) is unchanged.
3. **Dealing.** Member ``i`` Shamir-shares ``s_i`` among the n members (:meth:`Member.deal`; each share is
   sealed for its recipient with ``crypto.sealing``); member ``j``'s key share is ``sigma_j = sum_i f_i(j)``,
   a Shamir share of ``s`` (:class:`KeyShare`, which keeps each ``f_i(j)`` for seeded sums over any subset);
   ``t - 1`` key shares are independent of ``s``.
4. **Threshold decryption.** For a decryptor set ``T`` (``|T| >= t``, members online), member ``j`` makes
   ``d_j = c1 lambda_j^T sigma_j + e_j`` with smudging noise ``e_j`` (:meth:`KeyShare.flooded`); ``c0 + sum d_j
   = Delta m + e + sum e_j`` decodes (:func:`combine`).  Another set replaces a dropped member: nothing stalls.

The smudging (noise flooding) width answers Li and Micciancio ("On the security of homomorphic encryption on
approximate numbers", EUROCRYPT 2021): a decryption that reveals the ciphertext noise ``e`` exactly reveals
the key.  ``e_j`` must hide ``e`` even when every other decryptor colludes, so each share carries it whole.
:attr:`ThresholdParams.smudging_sigma` is sized by the Renyi-divergence argument (Bai, Langlois, Lepoint,
Stehle, Steinfeld, JoC 2018; applied to CKKS by Li, Micciancio, Schultz, Sorrell, CRYPTO 2022): with
``sigma = sqrt(alpha Q / 2) B`` for ``Q`` decryptions of noise of l2 norm at most ``B``, the Renyi divergence
of order ``alpha`` between the real and the noise-free view is at most ``e``, so a key-recovery attack with
probability ``p`` on the noise-free view has probability at most ``(e p)^((alpha - 1) / alpha)`` on the
real one: with ``alpha = 128`` a 2^-128 attack stays below 2^-125.  ``docs/he.md`` ("Threshold CKKS") gives
the bounds, the parameters and what the tests prove.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal

from fedprompt.crypto import shamir
from fedprompt.crypto.ckks import CkksParams, _Codec, _make_context, _public_bytes, _saved
from fedprompt.crypto.errors import InvalidCiphertext, InvalidValue, ParameterError
from fedprompt.crypto.modarith import addmod, mulmod, mulmod_shoup, shoup, submod, switch_down, switch_up
from fedprompt.crypto.rns import Poly, Ring, pack_bits, shake_stream, unpack_bits
from fedprompt.crypto.threshold_params import KEY_SIGMA, ThresholdParams

_DEALT = struct.Struct("<5sHHHHH")
_SHARE = struct.Struct("<5sHH32sH")
_COMPRESSED = struct.Struct("<5s32sIHBB")
_DEALT_MAGIC, _SHARE_MAGIC, _COMPRESSED_MAGIC = b"FPTK1", b"FPTD1", b"FPTC1"


def crp(ring: Ring, job_seed: bytes, label: bytes = b"public-key") -> Poly:
    """The common reference polynomial: uniform over every prime, the same for everyone holding the seed."""
    return ring.uniform(len(ring.moduli), shake_stream(b"fedprompt-crp-v1\0" + label + b"\0" + job_seed))


@functools.lru_cache(maxsize=8)
def _parameters(params: CkksParams) -> bytes:
    """A key-less context's serialisation, made once per process: making a context generates keys (~10 ms)."""
    return _public_bytes(_make_context(params))


def _digest(*polys: Poly) -> bytes:
    h = hashlib.sha256(b"fedprompt-threshold-v1")
    for poly in polys:
        h.update(np.asarray(poly, dtype=np.uint64).tobytes())
    return h.digest()


class Member:
    """A member's own secret ``s_i``: it makes the public-key share and deals Shamir shares, then can go."""

    def __init__(self, params: ThresholdParams, ring: Ring, index: int, stored: bytes = b"") -> None:
        """A fresh secret, or ``stored`` (:meth:`secret_bytes`, reloaded; the caller then guards used labels)."""
        params.check()
        if not 1 <= index <= params.members:
            raise ParameterError(f"member index must be in [1, {params.members}], got {index}")
        self.params, self.ring, self.index = params, ring, index
        secret = seal.KeyGenerator(ring.context).secret_key()  # held while read: data() refers into it
        self._secret = (ring.parse_residues(stored, 0, 1, len(ring.moduli))[0].astype(object) if stored
                        else ring.read_plaintext(secret.data(), len(ring.moduli)))
        self._residues = np.asarray(self._secret, dtype=np.uint64)
        # Shoup companions of s_i, once per member: every upload multiplies by it (``rlwe_samples``)
        self._shoup = _companions(self._residues, ring.moduli)
        self._sampled: set[bytes] = set()

    def secret_bytes(self) -> bytes:
        """``s_i`` for the member's own state directory (owner-only); never sent."""
        return np.asarray(self._secret, dtype=np.uint64).tobytes()

    def public_share(self, a: Poly) -> Poly:
        """``p_i = -a s_i + e_i`` over every prime."""
        return self.rlwe_sample(a, b"public-key")

    def rlwe_sample(self, a: Poly, label: bytes) -> Poly:
        """``-a s_i + e_i`` over the primes of ``a``, at most once per ``label``: two samples on one ``a`` would
        differ by small noise alone, and a ``c0`` built on one would give its plaintext away.  (A member's
        persistent state must keep the record too.)"""
        return self.rlwe_samples(np.asarray(a)[None], [label])[0]

    def rlwe_samples(self, a: np.ndarray, labels: Sequence[bytes], plus: np.ndarray | None = None) -> np.ndarray:
        """:meth:`rlwe_sample` of each ``(limbs, N)`` row of ``a``, one distinct label each, noise made together;
        ``plus``: integer coefficients added to each row's noise (a seeded upload's message, ``(rows, N)``)."""
        for label in labels:
            if label in self._sampled or labels.count(label) > 1:
                raise InvalidValue(f"member {self.index} already used this reference polynomial ({label[:48]!r}); "
                                   "reusing it would reveal what it encrypts")
        self._sampled.update(labels)
        limbs = a.shape[1]
        noise = self.ring.gaussian(KEY_SIGMA, limbs, clip=6 * KEY_SIGMA, count=len(labels), plus=plus)
        q = self.ring.q64(limbs)
        return submod(noise, mulmod_shoup(a, self._residues[:limbs], self._shoup[:limbs], q), q)

    def deal(self) -> dict[int, bytes]:
        """Shamir shares of ``s_i`` for members 1..n (this member's own included), each to be sealed for its
        recipient (``crypto.sealing.seal``) before it leaves."""
        shares = shamir.share(self.ring, self._secret, self.params.t, range(1, self.params.members + 1))
        limbs = len(self.ring.moduli)
        return {j: _DEALT.pack(_DEALT_MAGIC, self.index, j, self.params.t, self.params.members, limbs)
                + np.asarray(poly, dtype=np.uint64).tobytes() for j, poly in shares.items()}


class KeyShare:
    """Member ``index``'s Shamir share of the collective secret, from the n dealt shares it received."""

    def __init__(self, params: ThresholdParams, ring: Ring, index: int, dealt: Mapping[int, bytes]) -> None:
        self.params, self.ring, self.index = params, ring, index
        if sorted(dealt) != list(range(1, params.members + 1)):
            raise InvalidValue(f"a key share needs one dealt share from each of the {params.members} members, got "
                               f"them from {sorted(dealt)}")
        limbs = len(ring.moduli)
        self._dealt: dict[int, Poly] = {}
        for dealer, data in dealt.items():
            if len(data) < _DEALT.size:
                raise InvalidCiphertext(f"dealt share from member {dealer} is truncated")
            magic, got_dealer, recipient, t, n, got_limbs = _DEALT.unpack_from(data)
            if (magic, got_dealer, recipient, t, n, got_limbs) != (_DEALT_MAGIC, dealer, index, params.t,
                                                                   params.members, limbs):
                raise InvalidCiphertext(f"dealt share from member {dealer} is not for member {index} of this "
                                        f"{params.t}-of-{params.members} job")
            self._dealt[dealer] = ring.parse_residues(data, _DEALT.size, 1, limbs)[0]
        self._everyone = tuple(range(1, params.members + 1))
        self._share = self._sum(self._everyone)
        self._share.flags.writeable = False  # share_of hands it out
        self._share_shoup = _companions(self._share, ring.moduli)  # once per key share, as for a member's secret
        self._issued: set[bytes] = set()

    def share_of(self, dealers: Iterable[int]) -> Poly:
        """This member's Shamir share of ``s_U = sum_{i in U} s_i`` for the dealers ``U``: the sum of what they
        dealt it (all dealers: its share ``sigma_j`` of the collective secret, summed once)."""
        dealers = tuple(dealers)
        return self._share if dealers == self._everyone else self._sum(dealers)

    def _sum(self, dealers: Iterable[int]) -> Poly:
        limbs, q = len(self.ring.moduli), self.ring.q64(len(self.ring.moduli))
        return functools.reduce(lambda total, i: addmod(total, self._dealt[i], q), dealers,
                                np.zeros((limbs, self.ring.n), dtype=np.uint64))

    def decryption_share(self, ciphertexts: Sequence[seal.Ciphertext], decryptors: Sequence[int]) -> bytes:
        """``c1 * lambda * sigma + e`` per ciphertext (a sum of public-key uploads), for the decryptor set
        ``decryptors``, bound to the ciphertexts by a digest; fresh smudging noise each time.

        At most one share per ciphertext: two shares of the same ``c1`` under different sets differ by known
        scalars ``lambda``, and a two-dimensional lattice reduction then strips the flooding and reveals
        ``sigma``.  A retry after a dropout therefore decrypts a re-randomised sum (:meth:`ThresholdContext.
        rerandomise`), whose ``c1`` differs by a uniform polynomial.  (The record lives as long as this object;
        a member's persistent state must keep it too.)  Refused in a seeded job: its smudging is sized for the
        smaller noise of seeded sums (``crypto.threshold_seeded``)."""
        if self.params.seeded_uploads:
            raise InvalidValue("this job's uploads are seeded: decrypt through crypto.threshold_seeded")
        c1s = [self.ring.read_parts(ct, 2)[1] for ct in ciphertexts]
        digest = _digest(*c1s)
        return self.flooded(c1s, self._share, decryptors, digest, digest)

    def flooded(self, c1s: Sequence[Poly], secret: Poly, decryptors: Sequence[int], digest: bytes,
                record: bytes, sigma: float = 0.0, plus: np.ndarray | None = None) -> bytes:
        """``c1 * lambda_j^T * secret + e`` per ``c1`` (``secret``: a Shamir share of ``s``), framed with ``digest``
        for :func:`combine`, once per ``record``; ``sigma`` (0: a sum's) floods other noise (``threshold_gram``);
        ``plus``: integer coefficients (``(len(c1s), N)``) added to ``e`` before its transform (a masked share's
        pads, ``crypto.threshold_masked``)."""
        members = sorted(set(decryptors))
        if len(members) != len(decryptors) or self.index not in members or len(members) < self.params.t:
            raise InvalidValue(f"decryptor set {sorted(decryptors)} must hold {self.params.t} or more distinct "
                               f"members, this one ({self.index}) among them")
        if members[0] < 1 or members[-1] > self.params.members:
            raise InvalidValue(f"decryptor set {members} names a member outside 1..{self.params.members}")
        if record in self._issued:
            raise InvalidValue("this member already made a decryption share for these ciphertexts; a retry needs a "
                               "fresh c1 (a re-randomised sum, or a new upload attempt when uploads are seeded)")
        self._issued.add(record)
        limbs, moduli, q = c1s[0].shape[0], self.ring.moduli[: c1s[0].shape[0]], self.ring.q64(c1s[0].shape[0])
        noise = self.ring.gaussian(sigma or self.params.smudging_sigma, limbs, count=len(c1s), plus=plus)
        products = (mulmod_shoup(np.stack(c1s), self._share[:limbs], self._share_shoup[:limbs], q)
                    if secret is self._share else mulmod(np.stack(c1s), np.asarray(secret)[:limbs], moduli))
        weight = shamir.lagrange(self.ring, members, self.index, limbs)  # times the scalar lambda, per prime
        products = mulmod_shoup(products, weight.astype(np.uint64), _companions(weight, moduli), q)
        header = _SHARE.pack(_SHARE_MAGIC, self.index, len(members), digest, limbs)
        return (header + struct.pack(f"<{len(members)}H", *members)
                + np.ascontiguousarray(addmod(products, noise, q), dtype=np.uint64).tobytes())


def _companions(rows: np.ndarray, moduli: Sequence[int]) -> np.ndarray:
    """Shoup's companions (``crypto.modarith.shoup``) of each row of residues by its prime, for a factor that many
    products share."""
    return np.stack([shoup(row, q) for row, q in zip(rows, moduli, strict=True)])


def share_polys(ring: Ring, data: bytes, count: int, limbs: int) -> tuple[int, tuple[int, ...], bytes, list[Poly]]:
    """A share's (member index, decryptor set, digest, ``count`` polynomials) from :meth:`KeyShare.flooded`."""
    if len(data) < _SHARE.size:
        raise InvalidCiphertext("decryption share is truncated")
    magic, index, members, digest, got_limbs = _SHARE.unpack_from(data)
    members_end = _SHARE.size + 2 * members
    if magic != _SHARE_MAGIC or len(data) < members_end or got_limbs != limbs:
        raise InvalidCiphertext("not a decryption share of this job's format")
    return (index, struct.unpack_from(f"<{members}H", data, _SHARE.size), digest,
            ring.parse_residues(data, members_end, count, limbs))


def combine(ring: Ring, params: ThresholdParams, ciphertexts: Sequence[seal.Ciphertext],
            shares: Sequence[bytes], digest: bytes | None = None) -> list[seal.Plaintext]:
    """``c0 + sum d_j`` per ciphertext as NTT plaintexts from one decryptor set's shares, bound to ``digest``
    (default: the ``c1``s, as for public-key sums).  Refused (typed, nothing decrypted): fewer shares than the
    set or than t, shares for other ciphertexts or another set, duplicates, malformed polynomials.  A well-formed
    but wrong share (a dishonest decryptor) yields garbage, which the sum's weight-slot check refuses."""
    polys = [ring.read_parts(ct, 1 if digest else 2) for ct in ciphertexts]
    digest = digest or _digest(*[parts[1] for parts in polys])
    return combine_parts(ring, params, [parts[0] for parts in polys], shares, digest,
                         list(ciphertexts[0].parms_id()), ciphertexts[0].scale)


def combine_parts(ring: Ring, params: ThresholdParams, c0s: Sequence[Poly], shares: Sequence[bytes], digest: bytes,
                  parms_id: list[int], scale: float) -> list[seal.Plaintext]:
    """:func:`combine` for ciphertexts at ``parms_id`` and ``scale`` whose ``c0`` (``uint64``) is read already."""
    limbs = c0s[0].shape[0]
    parsed: dict[int, list[Poly]] = {}
    decryptors: set[tuple[int, ...]] = set()
    for data in shares:
        index, members, got_digest, share = share_polys(ring, data, len(c0s), limbs)
        if got_digest != digest:
            raise InvalidCiphertext(f"decryption share of member {index} was made for other ciphertexts")
        if index in parsed:
            raise InvalidCiphertext(f"two decryption shares from member {index}")
        decryptors.add(members)
        parsed[index] = share
    if len(decryptors) != 1:
        raise InvalidCiphertext("decryption shares were made for different decryptor sets")
    (members,) = decryptors
    if len(members) < params.t or sorted(parsed) != list(members):
        raise InvalidValue(f"decryption needs the shares of every member of the set {list(members)} (at least "
                           f"{params.t}), got {sorted(parsed)}")
    q = ring.q64(limbs)
    return [ring.plaintext(functools.reduce(lambda total, j: addmod(total, parsed[j][k], q), members, c0),
                           parms_id, scale) for k, c0 in enumerate(c0s)]


class ThresholdContext(_Codec):
    """What every member holds after key generation: the parameters, the ring and the collective public key.

    Encrypts like ``SecretContext`` (same framing: the coordinator's ``EncryptedSum`` folds them unchanged) and
    decrypts only through ``t`` decryption shares."""
    whole_weights = False  # weights are fractions: example counts in units of ``he.weight_unit``

    def __init__(self, params: ThresholdParams, key_id: bytes = b"") -> None:
        """``key_id``: the collective key's id, for a coordinator compressing sums (members: :meth:`set_public_key`)."""
        params.check()
        super().__init__(ts.context_from(_parameters(params.ckks)), params.ckks)
        self.threshold = params
        self.ring = Ring(self.seal_context)
        self.key_id = key_id

    def set_public_key(self, a: Poly, shares: Sequence[Poly]) -> None:
        """The collective public key ``(sum p_i, a)`` (Mouchet et al. 2021, protocol CKG) from every member's
        public-key share: SEAL's public key for ``s = sum s_i``.  Its key id binds ciphertexts to it."""
        if len(shares) != self.threshold.members:
            raise InvalidValue(f"the collective key needs the public-key shares of all {self.threshold.members} "
                               f"members, got {len(shares)}")
        p0 = sum(shares, np.zeros_like(a)) % self.ring.q(len(self.ring.moduli))
        self.public_key = self.ring.public_key(p0, a)
        self.encryptor = seal.Encryptor(self.seal_context, self.public_key)
        self.key_id = hashlib.sha256(b"fedprompt-ckks-key-id\0" + _digest(p0, a)).digest()

    def rerandomise(self, data: bytes, vector_size: int) -> bytes:
        """The sum plus a fresh encryption of zero under the collective key: the same plaintext, a ``c1`` no
        decryption share was made for.  Applied to the original sum before each retry, so the noise is that of
        ``members + 1`` fresh ciphertexts, which :attr:`ThresholdParams.noise_bound` allows for."""
        self._public_key_uploads()
        cts = self.parse_sum(data, vector_size)
        zeros = self.encode(np.zeros(self.params.num_ciphertexts(vector_size) * self.params.reals_per_ciphertext
                                     - 1), 0.0)
        for ct, zero in zip(cts, zeros, strict=True):
            self.evaluator.add_inplace(ct, self._encrypted(zero))
        return self.frame(self.key_id, vector_size, [_saved(ct.save) for ct in cts])

    def public_bytes(self) -> bytes:  # parameters only, for the coordinator's ``PublicContext``
        return _public_bytes(self.ctx)

    def _public_key_uploads(self) -> None:
        if self.threshold.seeded_uploads:
            raise InvalidValue("this job's uploads are seeded (crypto.threshold_seeded): its smudging is too narrow "
                               "for public-key ciphertexts")
        if not self.key_id:
            raise InvalidValue("no collective public key yet: key generation has not finished")

    def encrypt(self, vector: np.ndarray, weight: float) -> bytes:
        """A public-key upload under the collective key (jobs without ``seeded_uploads``)."""
        self._public_key_uploads()
        blobs = [_saved(self._encrypted(plain).save) for plain in self.encode(vector, weight)]
        return self.frame(self.key_id, int(np.asarray(vector).size), blobs)

    def _encrypted(self, plain: seal.Plaintext) -> seal.Ciphertext:
        ct = seal.Ciphertext()
        self.encryptor.encrypt(plain, ct)
        return ct

    def decryption_share(self, key: KeyShare, data: bytes, vector_size: int, decryptors: Sequence[int]) -> bytes:
        return key.decryption_share(self.parse_sum(data, vector_size), decryptors)

    def combine(self, data: bytes, vector_size: int, shares: Sequence[bytes]) -> tuple[np.ndarray, float]:
        """(vector, weight) of an encrypted sum from its decryption shares; garbage (a wrong share) refused."""
        plains = combine(self.ring, self.threshold, self.parse_sum(data, vector_size), shares)
        return self.checked(self.decode(plains), vector_size)

    def parse_sum(self, data: bytes, vector_size: int) -> list[seal.Ciphertext]:
        return self.parse(data, self.key_id, vector_size)

    def read_sum(self, data: bytes, vector_size: int) -> np.ndarray:
        """``[c0, c1]`` (``uint64``, NTT form, ``(chunks, 2, limbs, N)``) of an encrypted sum at the first level:
        from the bytes (SEAL's form, ``Ring.parse_ciphertext``), through SEAL's loader only for another form."""
        parms_id, scale = list(self.seal_context.first_parms_id()), 2.0**self.params.scale_bits
        parsed = [self.ring.parse_ciphertext(blob, parms_id, scale, self.ring.data_limbs)
                  for blob in self.blobs(data, self.key_id, vector_size)]
        if any(parts is None for parts in parsed):
            return np.array([self.ring.read_parts(ct, 2) for ct in self.parse_sum(data, vector_size)])
        return np.array(parsed)

    def compress(self, data: bytes | np.ndarray, vector_size: int) -> bytes:
        """An aggregate (bytes, or the coefficients, ``uint64`` ``(chunks, parts sent, N)``, of the parts it sends)
        for download: modulus switching to ``2^k`` (Brakerski, Gentry, Vaikuntanathan, ITCS 2012) without a key,
        ``round(c 2^k / q)`` of each coefficient of ``c0`` and ``c1`` (:attr:`ThresholdParams.download_bits` bits),
        bit-packed."""
        k0, k1 = self.threshold.download_bits
        sent, q = (k0, k1)[: 1 + bool(k1)], self.ring.moduli[0]
        coeffs = (self.ring.from_ntt_residues(self.read_sum(data, vector_size)[:, : len(sent)])
                  if isinstance(data, bytes) else data)
        parts = [pack_bits(switch_down(c, q, bits), bits) for chunk in coeffs for c, bits in zip(chunk, sent, strict=True)]
        return _COMPRESSED.pack(_COMPRESSED_MAGIC, self.key_id, vector_size, len(coeffs), k0, k1) + b"".join(parts)

    def expand(self, blob: bytes, vector_size: int, c1s: Sequence[Poly] = ()) -> bytes:
        """The standard encrypted sum (``parse_sum``'s format) of a compressed download, :meth:`lift`'s residues in
        NTT form; a seeded sum's ``c1``s, not sent, come in ``c1s`` (``crypto.threshold_seeded.expand``)."""
        lifted, k1 = self.lift(blob, vector_size), self.threshold.download_bits[1]
        if not k1 and len(c1s) != len(lifted):
            raise InvalidValue(f"a seeded download needs its {len(lifted)} c1 polynomials from the round's seeds")
        polys = self.ring.to_ntt_residues(lifted.astype(np.int64), 1)  # (chunks, parts sent, 1, N)
        parms_id, scale = list(self.seal_context.first_parms_id()), 2.0**self.params.scale_bits
        blobs = [self.ring.ciphertext_bytes(parms_id, sent_polys[0], sent_polys[1] if k1 else c1s[index], scale)
                 for index, sent_polys in enumerate(polys)]
        return self.frame(self.key_id, vector_size, blobs)

    def lift(self, blob: bytes, vector_size: int) -> np.ndarray:
        """The coefficients (``uint64`` residues of the data prime, ``(chunks, parts sent, N)``) of a compressed
        download (:meth:`compress`), each lifted back to ``round(r q / 2^k)``; header and sizes checked."""
        (k0, k1), q = self.threshold.download_bits, self.ring.moduli[0]
        if len(blob) < _COMPRESSED.size:
            raise InvalidCiphertext("compressed aggregate is shorter than its header")
        magic, key_id, size, count, got0, got1 = _COMPRESSED.unpack_from(blob)
        if (magic, key_id, got0, got1) != (_COMPRESSED_MAGIC, self.key_id, k0, k1):
            raise InvalidCiphertext("not a compressed aggregate under this job's key and parameters")
        if size != vector_size or count != self.params.num_ciphertexts(vector_size):
            raise InvalidCiphertext(f"compressed aggregate has {size} values ({count} ciphertexts), expected {vector_size}")
        sent = (k0, k1)[: 1 + bool(k1)]
        lengths = [-(-self.ring.n * bits // 8) for bits in sent]
        if len(blob) != _COMPRESSED.size + count * sum(lengths):
            raise InvalidCiphertext("compressed aggregate is truncated or has extra bytes")
        offsets = np.cumsum([_COMPRESSED.size] + lengths * count)
        return np.stack([switch_up(unpack_bits(blob[start:end], bits, self.ring.n), q, bits) for start, end, bits
                         in zip(offsets[:-1], offsets[1:], sent * count, strict=True)]).reshape(count, len(sent), -1)
