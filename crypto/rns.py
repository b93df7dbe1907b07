"""Polynomials of SEAL's CKKS ring as arrays: RNS limbs in SEAL's NTT order, sampling, and SEAL objects to and fro.

Multiparty key generation and threshold decryption (``crypto.threshold``) are modular arithmetic on the
polynomials inside SEAL's secret keys, public keys and ciphertexts.  TenSEAL's ``sealapi`` can read a
plaintext's coefficients but not a ciphertext's, and can write neither, so this module:

* **reads** a ciphertext by decrypting it with the public, trivial secret keys 0 and 1 (SEAL's decryptor
  returns ``c0`` and ``c0 + c1`` as NTT-form plaintexts, whose coefficients ``Plaintext.data(i)`` reads);
* **writes** a plaintext, secret key or public key by building SEAL's uncompressed serialisation
  (``SEALHeader`` + members + a nested ``DynArray``; SEAL 4's ``Plaintext::save_members`` and
  ``Ciphertext::save_members``) and ``load``-ing it, so SEAL validates every value against the moduli;
* **transforms** small polynomials (noise) into SEAL's NTT domain itself: SEAL stores ``a(psi^(2 br(k) + 1))``
  at index ``k`` (``br`` = bit reversal, ``psi`` = the smallest primitive 2N-th root of unity mod the prime),
  which ``tests/unit/test_threshold_rns.py`` checks against SEAL's own transform.

Polynomials are ``(limbs, N)`` arrays of Python ints (``dtype=object``): products of 60-bit residues overflow
``uint64``, and at N = 4096 the object arithmetic costs milliseconds.  The NTT, with its ``N log N`` products,
runs in ``uint64`` instead (``_mulmod``: 2x faster than object arithmetic at N = 8192, 4 primes).
Randomness for secrets and noise comes from the operating system's CSPRNG (``os.urandom``), public randomness
from SHAKE-256 of a public seed.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import tenseal.sealapi as seal

from fedprompt.crypto.ckks import _scratch
from fedprompt.crypto.errors import InvalidCiphertext

Poly = np.ndarray
_SealObject = TypeVar("_SealObject", seal.Plaintext, seal.SecretKey, seal.PublicKey, seal.Ciphertext,
                       seal.RelinKeys, seal.GaloisKeys)
_HEADER = struct.Struct("<HBBBBHQ")
_SEAL_MAGIC = 0xA15E
_UNCOMPRESSED = 0
_SHAKE256 = 2  # SEAL's prng_type::shake256
SEED_BYTES = 64  # SEAL's prng_seed_byte_count


def _bitrev(n: int) -> np.ndarray:
    bits = n.bit_length() - 1
    return np.array([int(format(k, f"0{bits}b")[::-1], 2) for k in range(n)])


def _minimal_root(q: int, order: int) -> int:
    """SEAL's choice: the smallest primitive ``order``-th root of unity mod ``q`` (``try_minimal_primitive_root``)."""
    for candidate in range(2, q):
        root = pow(candidate, (q - 1) // order, q)
        if pow(root, order // 2, q) == q - 1:
            step = root * root % q
            return min(root * pow(step, j, q) % q for j in range(order // 2))
    raise InvalidCiphertext(f"{q} has no primitive {order}-th root of unity")


def _mulmod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """``a * b mod q`` for ``uint64`` arrays of residues below ``q < 2^61`` (broadcasting): the quotient from
    80-bit floats (64-bit mantissa: off by at most one), the remainder exact in wrap-around ``uint64``
    arithmetic (its true value lies in ``(-q, 2q)``), corrected by one ``q``."""
    quotient = np.floor(a.astype(np.longdouble) * b.astype(np.longdouble) / q).astype(np.uint64)
    r = (a * b - quotient * np.uint64(q)).view(np.int64)
    r = np.where(r < 0, r + q, r)
    return np.where(r >= q, r - q, r).astype(np.uint64)


class _Limb:
    """Negacyclic NTT tables for one prime, in SEAL's output order; the transforms run in ``uint64``."""

    def __init__(self, q: int, n: int, order: np.ndarray) -> None:
        if q >= 2**61 or np.finfo(np.longdouble).nmant < 63:
            raise InvalidCiphertext("the NTT needs primes below 2^61 and 80-bit long doubles (x86-64)")
        self.q = q
        self.order = order
        psi = _minimal_root(q, 2 * n)
        psi_inv, n_inv = pow(psi, -1, q), pow(n, -1, q)
        self.twist = np.array([pow(psi, i, q) for i in range(n)], dtype=np.uint64)
        self.untwist = np.array([pow(psi_inv, i, q) * n_inv % q for i in range(n)], dtype=np.uint64)
        self.stages = self._stages(psi * psi % q, n)
        self.inverse_stages = self._stages(pow(psi * psi, -1, q), n)

    def _stages(self, omega: int, n: int) -> list[np.ndarray]:
        out, m = [], 1
        while m < n:
            w = pow(omega, n // (2 * m), self.q)
            out.append(np.array([pow(w, j, self.q) for j in range(m)], dtype=np.uint64))
            m *= 2
        return out

    def _cyclic(self, x: np.ndarray, stages: list[np.ndarray]) -> np.ndarray:
        """Radix-2 decimation-in-time transform: bit-reversed input, natural-order output."""
        x = x[self.order]
        n, q = len(x), np.uint64(self.q)
        for twiddles in stages:
            m = len(twiddles)
            blocks = x.reshape(n // (2 * m), 2 * m)
            u, v = blocks[:, :m], _mulmod(blocks[:, m:], twiddles, self.q)
            total, difference = u + v, u + (q - v)
            x = np.concatenate([np.where(total >= q, total - q, total),
                                np.where(difference >= q, difference - q, difference)], axis=1).reshape(n)
        return x

    def forward(self, coeffs: np.ndarray) -> np.ndarray:
        """Residues (below ``q``, any integer dtype) to SEAL's NTT order, as Python ints."""
        return self._cyclic(_mulmod(np.asarray(coeffs).astype(np.uint64), self.twist, self.q),
                            self.stages)[self.order].astype(object)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        transformed = self._cyclic(np.asarray(values).astype(np.uint64)[self.order], self.inverse_stages)
        return _mulmod(transformed, self.untwist, self.q).astype(object)


class Ring:
    """One SEAL CKKS context's ring: its primes (key level: data primes + the special prime), NTT, and I/O."""

    def __init__(self, seal_context: seal.SEALContext) -> None:
        self.context = seal_context
        key = seal_context.key_context_data()
        first = seal_context.first_context_data()
        self.n = key.parms().poly_modulus_degree()
        self.moduli = [m.value() for m in key.parms().coeff_modulus()]
        self.data_limbs = len(first.parms().coeff_modulus())
        self.key_parms_id = list(key.parms_id())
        order = _bitrev(self.n)
        self._limbs = [_Limb(q, self.n, order) for q in self.moduli]
        with _scratch() as path:
            seal.Plaintext().save(str(path))
            self._header = path.read_bytes()[: _HEADER.size]
        self._readers = [seal.Decryptor(seal_context, self.secret_key(np.full((len(self.moduli), self.n), v,
                                                                               dtype=object)))
                         for v in (0, 1)]

    def q(self, limbs: int) -> np.ndarray:
        """The first ``limbs`` primes as a column, to reduce ``(limbs, N)`` arrays with ``%``."""
        return np.array(self.moduli[:limbs], dtype=object).reshape(-1, 1)

    # -- transforms and sampling ------------------------------------------------------------------------
    def to_ntt(self, coeffs: np.ndarray, limbs: int) -> Poly:
        """Signed integer coefficients (length N) -> SEAL's NTT form over the first ``limbs`` primes."""
        signed = np.asarray(coeffs).astype(object)
        return np.stack([self._limbs[i].forward(signed % self.moduli[i]) for i in range(limbs)])

    def from_ntt(self, poly: Poly) -> np.ndarray:
        """The centred coefficients (in ``(-q/2, q/2]``) of a polynomial given in NTT form over one prime."""
        limb = self._limbs[0]
        coeffs = limb.inverse(np.asarray(poly[0], dtype=object))
        return np.where(coeffs > limb.q // 2, coeffs - limb.q, coeffs)

    def uniform(self, limbs: int, stream: Callable[[int], bytes]) -> Poly:
        """Uniform residues mod each prime by rejection sampling 64-bit words from ``stream(nbytes)``."""
        rows = []
        for q in self.moduli[:limbs]:
            mask, got = (1 << q.bit_length()) - 1, np.empty(0, dtype=np.uint64)
            while len(got) < self.n:
                words = np.frombuffer(stream(16 * self.n), dtype=np.uint64) & np.uint64(mask)
                got = np.concatenate([got, words[words < np.uint64(q)]])
            rows.append(got[: self.n].astype(object))
        return np.stack(rows)

    def gaussian(self, sigma: float, limbs: int, clip: float | None = None) -> Poly:
        """A rounded Gaussian polynomial (CSPRNG Box-Muller), optionally clipped at ``clip``, in NTT form."""
        words = np.frombuffer(os.urandom(16 * self.n), dtype=np.uint64) >> np.uint64(11)
        u1 = (words[: self.n].astype(np.float64) + 1.0) / 2.0**53
        u2 = words[self.n :].astype(np.float64) / 2.0**53
        values = sigma * np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)
        if clip is not None:
            values = np.clip(values, -clip, clip)
        return self.to_ntt(np.rint(values).astype(np.int64), limbs)

    # -- SEAL objects -----------------------------------------------------------------------------------
    def read_plaintext(self, plain: seal.Plaintext, limbs: int) -> Poly:
        values = np.array([plain.data(i) for i in range(limbs * self.n)], dtype=np.uint64)
        return values.astype(object).reshape(limbs, self.n)

    def read_ciphertext(self, ct: seal.Ciphertext) -> tuple[Poly, Poly]:
        """``(c0, c1)`` of a two-part NTT-form ciphertext, through decryption under the keys 0 and 1."""
        limbs = ct.coeff_modulus_size()
        parts = []
        for reader in self._readers:
            plain = seal.Plaintext()
            reader.decrypt(ct, plain)
            parts.append(self.read_plaintext(plain, limbs))
        c0 = parts[0]
        return c0, (parts[1] - c0) % self.q(limbs)

    def secret_key(self, poly: Poly) -> seal.SecretKey:
        return self._load(seal.SecretKey(), self._plaintext_bytes(self.key_parms_id, poly, 1.0))

    def plaintext(self, poly: Poly, parms_id: list[int], scale: float) -> seal.Plaintext:
        """An NTT-form plaintext at ``parms_id`` (what SEAL's CKKS encoder decodes)."""
        return self._load(seal.Plaintext(), self._plaintext_bytes(parms_id, poly, scale))

    def public_key(self, p0: Poly, p1: Poly) -> seal.PublicKey:
        return self._load(seal.PublicKey(), self._ciphertext_bytes(self.key_parms_id, p0, p1, 1.0))

    def relin_keys(self, keys: list[tuple[Poly, Poly]]) -> seal.RelinKeys:
        """SEAL's relinearisation keys for ``s^2`` from one key-level pair per decomposition prime
        (``KSwitchKeys::save_members``: parms id, one key vector, its length, each ``PublicKey`` framed)."""
        body = struct.pack("<4QQQ", *self.key_parms_id, 1, len(keys)) + b"".join(
            self._ciphertext_bytes(self.key_parms_id, k0, k1, 1.0) for k0, k1 in keys)
        return self._load(seal.RelinKeys(), self._framed(body))

    def galois_keys(self, keys: dict[int, list[tuple[Poly, Poly]]]) -> seal.GaloisKeys:
        """SEAL's Galois keys from one key-level pair per decomposition prime for each Galois element: the same
        ``KSwitchKeys`` form, one slot per ``(element - 1) / 2`` among N (``GaloisKeys::get_index``), empty
        slots of length 0."""
        slots = {(element - 1) >> 1: pairs for element, pairs in keys.items()}
        body = struct.pack("<4QQ", *self.key_parms_id, self.n) + b"".join(
            struct.pack("<Q", len(slots.get(k, ()))) + b"".join(
                self._ciphertext_bytes(self.key_parms_id, k0, k1, 1.0) for k0, k1 in slots.get(k, ()))
            for k in range(self.n))
        return self._load(seal.GaloisKeys(), self._framed(body))

    def galois_permutation(self, element: int) -> np.ndarray:
        """``perm`` with ``p(X^element)[k] = p[perm[k]]`` in SEAL's NTT order: slot ``k`` holds ``p`` at
        ``psi^(2 br(k) + 1)``, so the automorphism moves the exponent ``e`` to ``e * element mod 2N``."""
        exponents = 2 * _bitrev(self.n) + 1
        slot_of = np.empty(2 * self.n, dtype=np.int64)
        slot_of[exponents] = np.arange(self.n)
        return slot_of[exponents * element % (2 * self.n)]

    def ciphertext(self, c0: Poly, c1: Poly, parms_id: list[int], scale: float) -> seal.Ciphertext:
        """A two-part NTT-form ciphertext at ``parms_id``."""
        return self._load(seal.Ciphertext(), self._ciphertext_bytes(parms_id, c0, c1, scale))

    def seeded_ciphertext_bytes(self, parms_id: list[int], c0: Poly, seed: bytes, scale: float) -> bytes:
        """SEAL's serialisation of a seeded ciphertext: ``c0`` and the 64-byte seed from which SEAL's loader
        expands ``c1`` with SHAKE-256 (``Ciphertext::save_members`` for a ciphertext with a seed marker: half
        the ``DynArray``, then a ``UniformRandomGeneratorInfo``).  Its size is one polynomial and 81 bytes."""
        if len(seed) != SEED_BYTES:
            raise InvalidCiphertext(f"a SEAL seed has {SEED_BYTES} bytes, got {len(seed)}")
        members = self._ciphertext_members(parms_id, c0.shape[0], scale)
        return self._framed(members + self._dynarray(c0.reshape(-1)) + self._framed(bytes([_SHAKE256]) + seed))

    def expand_seed(self, parms_id: list[int], seed: bytes, limbs: int) -> Poly:
        """The ``c1`` SEAL expands from ``seed`` at ``parms_id`` (uniform over the first ``limbs`` primes)."""
        zero = np.zeros((limbs, self.n), dtype=object)
        return self.read_ciphertext(self._load(seal.Ciphertext(), self.seeded_ciphertext_bytes(parms_id, zero, seed,
                                                                                               1.0)))[1]

    def _ciphertext_members(self, parms_id: list[int], limbs: int, scale: float) -> bytes:
        return struct.pack("<4Q", *parms_id) + b"\x01" + struct.pack("<QQQdQ", 2, self.n, limbs, scale, 1)

    def _ciphertext_bytes(self, parms_id: list[int], c0: Poly, c1: Poly, scale: float) -> bytes:
        flat = np.concatenate([c0.reshape(-1), c1.reshape(-1)])
        return self._framed(self._ciphertext_members(parms_id, c0.shape[0], scale) + self._dynarray(flat))

    def _plaintext_bytes(self, parms_id: list[int], poly: Poly, scale: float) -> bytes:
        flat = np.asarray(poly).reshape(-1)
        body = struct.pack("<4QQd", *parms_id, len(flat), scale) + self._dynarray(flat)
        return self._framed(body)

    def _dynarray(self, values: np.ndarray) -> bytes:
        return self._framed(struct.pack("<Q", len(values)) + np.asarray(values, dtype=np.uint64).tobytes())

    def _framed(self, body: bytes) -> bytes:
        _, size, major, minor, _, _, _ = _HEADER.unpack(self._header)
        return _HEADER.pack(_SEAL_MAGIC, size, major, minor, _UNCOMPRESSED, 0, _HEADER.size + len(body)) + body

    def _load(self, obj: _SealObject, data: bytes) -> _SealObject:
        with _scratch() as path:
            path.write_bytes(data)
            try:
                obj.load(self.context, str(path))
            except Exception as exc:  # SEAL reports out-of-range values as generic C++ exceptions
                raise InvalidCiphertext(f"polynomial does not load as a SEAL {type(obj).__name__}: {exc}") from exc
        return obj


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Integers below ``2**bits`` (``bits`` <= 64), each in exactly ``bits`` bits, big-endian, concatenated."""
    words = np.asarray(values, dtype=np.uint64).astype(">u8").view(np.uint8).reshape(-1, 8)
    return np.packbits(np.unpackbits(words, axis=1)[:, 64 - bits :].reshape(-1)).tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`pack_bits` for ``count`` integers, as Python ints (``dtype=object``)."""
    if len(data) != -(-count * bits // 8):
        raise InvalidCiphertext(f"packed polynomial has {len(data)} bytes, expected {-(-count * bits // 8)}")
    full = np.zeros((count, 64), dtype=np.uint8)
    full[:, 64 - bits :] = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: count * bits].reshape(count, bits)
    return np.packbits(full, axis=1).view(">u8").reshape(count).astype(np.uint64).astype(object)


def shake_stream(seed: bytes) -> Callable[[int], bytes]:
    """A deterministic byte stream: successive SHAKE-256 blocks of ``seed`` (public randomness only)."""
    counter = 0

    def read(nbytes: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(seed + counter.to_bytes(8, "little")).digest(nbytes)

    return read
