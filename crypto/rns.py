"""Polynomials of SEAL's CKKS ring as arrays: RNS limbs in SEAL's NTT order, sampling, and SEAL objects to and fro.

Multiparty key generation and threshold decryption (``crypto.threshold``) are modular arithmetic on the
polynomials inside SEAL's secret keys, public keys and ciphertexts.  TenSEAL's ``sealapi`` can read a
plaintext's coefficients but not a ciphertext's, and can write neither, so this module:

* **reads** a serialised ciphertext from its bytes (SEAL's own zstd-compressed form inflated in memory by the
  zstd inside SEAL's extension), or a SEAL ciphertext object by decrypting it with the public, trivial secret
  keys 0 and 1 (SEAL's decryptor returns ``c0`` and ``c0 + c1`` as NTT-form plaintexts, whose coefficients
  ``Plaintext.data(i)`` reads, one binding call each);
* **writes** a plaintext, secret key or public key by building SEAL's uncompressed serialisation
  (``SEALHeader`` + members + a nested ``DynArray``; SEAL 4's ``Plaintext::save_members`` and
  ``Ciphertext::save_members``) and ``load``-ing it, so SEAL validates every value against the moduli;
* **transforms** small polynomials (noise) into SEAL's NTT domain itself: SEAL stores ``a(psi^(2 br(k) + 1))``
  at index ``k`` (``br`` = bit reversal, ``psi`` = the smallest primitive 2N-th root of unity mod the prime),
  which ``tests/unit/test_threshold_rns.py`` checks against SEAL's own transform.

Public methods return ``(limbs, N)`` arrays of Python ints (``dtype=object``), whose products cannot
overflow; the round path (uploads, compression, decryption shares, combining) works on the ``uint64``
variants (``*_residues``) with ``crypto.modarith``'s exact modular products and NTT.  SEAL's expansion of a
seeded ciphertext's ``c1`` is reproduced here (:meth:`Ring.expand_seed`) rather than read back from SEAL.
Randomness for secrets comes from the operating system's CSPRNG (``os.urandom``); noise from ChaCha20 keyed by
32 fresh bytes of it for each draw (:func:`secret_bytes`: the construction of the kernel's own generator, and
~13x faster than ``os.urandom`` here for the 64 KiB a polynomial's Gaussians take); public randomness from
SHAKE-256 of a public seed.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import math
import os
import struct
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import tenseal.sealapi as seal
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.lib.stride_tricks import sliding_window_view

from fedprompt.crypto.ckks import _scratch
from fedprompt.crypto.errors import InvalidCiphertext, InvalidValue
from fedprompt.crypto.modarith import bit_reversal, ntt, submod

Poly = np.ndarray
_SealObject = TypeVar("_SealObject", seal.Plaintext, seal.SecretKey, seal.PublicKey, seal.Ciphertext,
                       seal.RelinKeys, seal.GaloisKeys)
_HEADER = struct.Struct("<HBBBBHQ")
_UNCOMPRESSED, _ZSTD = 0, 2  # SEAL's compr_mode_type
_SHAKE256 = 2  # SEAL's prng_type::shake256
SEED_BYTES = 64  # SEAL's prng_seed_byte_count


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
        self._ntts = [ntt(q, self.n) for q in self.moduli]
        self._evaluator = seal.Evaluator(seal_context)
        powers = np.array([pow(3, i, 2 * self.n) for i in range(self.n // 2)])  # slot i sits at psi^(3^i)
        self._slot_index = ((powers - 1) // 2, (2 * self.n - powers - 1) // 2)
        self._untwist = np.exp(-1j * math.pi * np.arange(self.n) / self.n)
        with _scratch() as path:
            seal.Plaintext().save(str(path))
            # this SEAL's header fields (magic, header size, version), unpacked once: every frame repeats them
            self._seal_header = _HEADER.unpack(path.read_bytes()[: _HEADER.size])[:4]
        self._readers = [seal.Decryptor(seal_context, self.secret_key(np.full((len(self.moduli), self.n), v,
                                                                               dtype=object)))
                         for v in (0, 1)]

    def q(self, limbs: int) -> np.ndarray:
        """The first ``limbs`` primes as a column, to reduce ``(limbs, N)`` arrays with ``%``."""
        return np.array(self.moduli[:limbs], dtype=object).reshape(-1, 1)

    def q64(self, limbs: int) -> np.ndarray:
        """The first ``limbs`` primes as a ``uint64`` column (``crypto.modarith``'s reductions)."""
        return np.array(self.moduli[:limbs], dtype=np.uint64).reshape(-1, 1)

    # -- transforms and sampling ------------------------------------------------------------------------
    def to_ntt(self, coeffs: np.ndarray, limbs: int) -> Poly:
        """Signed integer coefficients (length N) -> SEAL's NTT form over the first ``limbs`` primes."""
        return self.to_ntt_residues(coeffs, limbs).astype(object)

    def to_ntt_residues(self, coeffs: np.ndarray, limbs: int) -> np.ndarray:
        """:meth:`to_ntt` as ``uint64`` residues (coefficients of magnitude below 2^63), for each row of
        ``(..., N)`` coefficients at once: ``(..., limbs, N)``."""
        signed = np.asarray(coeffs, dtype=np.int64)[..., None, :]
        residues = np.mod(signed, np.array(self.moduli[:limbs], dtype=np.int64).reshape(-1, 1)).astype(np.uint64)
        return np.stack([self._ntts[i].forward(residues[..., i, :]) for i in range(limbs)], axis=-2)

    def from_ntt(self, poly: Poly) -> np.ndarray:
        """The centred coefficients (in ``(-q/2, q/2]``, ``int64``) of a polynomial given in NTT form over one
        prime."""
        q = self.moduli[0]
        coeffs = self.from_ntt_residues(poly).astype(np.int64)
        return np.where(coeffs > q // 2, coeffs - q, coeffs)

    def from_ntt_residues(self, poly: Poly) -> np.ndarray:
        """The coefficients (``uint64`` residues) over the first prime of a polynomial given in NTT form
        (``(limbs, N)``, or ``(..., limbs, N)`` for several at once: ``(..., N)``)."""
        return self._ntts[0].inverse(np.asarray(poly, dtype=np.uint64)[..., 0, :])

    def uniform(self, limbs: int, stream: Callable[[int], bytes]) -> Poly:
        """Uniform residues mod each prime by rejection sampling 64-bit words from ``stream(nbytes)``."""
        return self.uniform_residues(limbs, stream).astype(object)

    def uniform_residues(self, limbs: int, stream: Callable[[int], bytes], words: int = 0,
                         count: int = 1) -> np.ndarray:
        """:meth:`uniform` as ``uint64`` residues (the same draws); ``words``: 64-bit words read from ``stream`` at a
        time (default 2N; with primes just below a power of two N almost always suffice, as for masks); ``count``
        polynomials drawn as one sequence per prime, ``(limbs, count N)``."""
        rows = []
        for q in self.moduli[:limbs]:
            mask, got = (1 << q.bit_length()) - 1, np.empty(0, dtype=np.uint64)
            while len(got) < count * self.n:
                words_read = np.frombuffer(stream(8 * (words or 2 * self.n)), dtype=np.uint64) & np.uint64(mask)
                got = np.concatenate([got, words_read[words_read < np.uint64(q)]])
            rows.append(got[: count * self.n])
        return np.stack(rows)

    def encode_coefficients(self, slots: np.ndarray, scale: float) -> np.ndarray:
        """The coefficients (``int64``, ``(..., N)``) of the CKKS plaintext holding the complex ``slots``
        (``(..., N / 2)``) at ``scale``, as SEAL's ``CKKSEncoder`` lays them out: slot ``i`` is the value at
        ``psi^(3^i)`` and its conjugate at ``psi^(-3^i)`` (``psi = exp(i pi / N)``), so the coefficients are
        ``round(scale / N * psi^-k * DFT(v)[k])`` of the values ``v_j`` at ``psi^(2j + 1)``.  Computed with
        numpy's FFT instead of SEAL's: a coefficient may differ from SEAL's by a unit of rounding (at ``scale``
        2^45, 3e-14 of a value; ``tests/unit/test_rns_encoding.py``), far below the encryption noise."""
        values = np.zeros((*slots.shape[:-1], self.n), dtype=np.complex128)
        values[..., self._slot_index[0]] = slots
        values[..., self._slot_index[1]] = np.conj(slots)
        coeffs = np.rint((np.fft.fft(values) * self._untwist).real * (scale / self.n))
        if np.abs(coeffs).max(initial=0.0) >= self.moduli[0] / 2:
            raise InvalidValue("encoded values exceed what the data prime holds")
        return coeffs.astype(np.int64)

    def decode_coefficients(self, coeffs: np.ndarray, scale: float) -> np.ndarray:
        """The reals (real and imaginary part of each slot, in order) of the plaintexts whose centred coefficients
        are the rows of ``coeffs`` (``(chunks, N)``): :meth:`encode_coefficients` undone, ``v_j = c(psi^(2j + 1)) /
        scale = N / scale * IDFT(c_k psi^k)[j]``, as SEAL's ``CKKSEncoder`` decodes (``tests/unit/
        test_rns_encoding.py`` compares them), without loading plaintexts into SEAL."""
        values = np.fft.ifft(np.asarray(coeffs, dtype=np.float64) * np.conj(self._untwist)) * (self.n / scale)
        slots = values[..., self._slot_index[0]]
        return np.stack([slots.real, slots.imag], axis=-1).reshape(-1)

    def gaussian(self, sigma: float, limbs: int, clip: float | None = None, count: int = 1,
                 plus: np.ndarray | None = None) -> np.ndarray:
        """``count`` rounded Gaussian polynomials (CSPRNG Box-Muller, both outputs of each pair: independent
        standard normals), optionally clipped at ``clip``, plus the integer coefficients ``plus`` (``(count, N)``)
        if given, in NTT form (``uint64`` residues, ``(count, limbs, N)``), transformed together."""
        pairs = self.n * count // 2
        words = np.frombuffer(secret_bytes(16 * pairs), dtype=np.uint64).reshape(2, pairs)
        u1 = ((words[0] >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0**53
        angle = (2.0 * math.pi / 2.0**53) * (words[1] >> np.uint64(11)).astype(np.float64)
        radius = sigma * np.sqrt(-2.0 * np.log(u1))
        values = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)]).reshape(count, self.n)
        if clip is not None:
            values = np.clip(values, -clip, clip)
        noise = np.rint(values).astype(np.int64)
        return self.to_ntt_residues(noise if plus is None else noise + plus, limbs)

    # -- SEAL objects -----------------------------------------------------------------------------------
    def read_plaintext(self, plain: seal.Plaintext, limbs: int) -> Poly:
        return self.read_plaintext_residues(plain, limbs).astype(object)

    def read_plaintext_residues(self, plain: seal.Plaintext, limbs: int) -> np.ndarray:
        """A plaintext's ``(limbs, N)`` coefficients as ``uint64`` (one binding call per coefficient: the
        bindings expose no buffer)."""
        count = limbs * self.n
        return np.fromiter(map(plain.data, range(count)), dtype=np.uint64, count=count).reshape(limbs, self.n)

    def read_ciphertext(self, ct: seal.Ciphertext) -> tuple[Poly, Poly]:
        """``(c0, c1)`` of a two-part NTT-form ciphertext, through decryption under the keys 0 and 1."""
        c0, c1 = self.read_parts(ct, 2)
        return c0.astype(object), c1.astype(object)

    def read_parts(self, ct: seal.Ciphertext, count: int) -> list[np.ndarray]:
        """``[c0]`` (``count`` 1) or ``[c0, c1]`` (2) of a two-part NTT-form ciphertext as ``uint64`` residues:
        SEAL decrypts it under the key 0 to ``c0`` and under the key 1 to ``c0 + c1``."""
        limbs = ct.coeff_modulus_size()
        parts = []
        for reader in self._readers[:count]:
            plain = seal.Plaintext()
            reader.decrypt(ct, plain)
            parts.append(self.read_plaintext_residues(plain, limbs))
        if count == 2:
            parts[1] = submod(parts[1], parts[0], self.q64(limbs))
        return parts

    def parse_residues(self, data: bytes, offset: int, count: int, limbs: int) -> list[np.ndarray]:
        """``count`` polynomials of ``limbs`` limbs (``uint64``) from ``data[offset:]``, which they must fill
        exactly, each residue below its prime (threshold key material and shares on the wire)."""
        size = count * limbs * self.n * 8
        if len(data) != offset + size:
            raise InvalidCiphertext(f"threshold key material has {len(data) - offset} bytes of polynomials, "
                                    f"expected {size}")
        values = np.frombuffer(data, dtype=np.uint64, offset=offset).reshape(count, limbs, self.n)
        if not np.all(values < self.q64(limbs)):
            raise InvalidCiphertext("threshold key material holds a residue beyond its prime")
        return list(values)

    def secret_key(self, poly: Poly) -> seal.SecretKey:
        return self._load(seal.SecretKey(), self._plaintext_bytes(self.key_parms_id, poly, 1.0))

    def plaintext(self, poly: Poly, parms_id: list[int], scale: float) -> seal.Plaintext:
        """An NTT-form plaintext at ``parms_id`` (what SEAL's CKKS encoder decodes)."""
        return self._load(seal.Plaintext(), self._plaintext_bytes(parms_id, poly, scale))

    def public_key(self, p0: Poly, p1: Poly) -> seal.PublicKey:
        return self._load(seal.PublicKey(), self.ciphertext_bytes(self.key_parms_id, p0, p1, 1.0))

    def relin_keys(self, keys: list[tuple[Poly, Poly]]) -> seal.RelinKeys:
        """SEAL's relinearisation keys for ``s^2`` from one key-level pair per decomposition prime
        (``KSwitchKeys::save_members``: parms id, one key vector, its length, each ``PublicKey`` framed)."""
        body = struct.pack("<4QQQ", *self.key_parms_id, 1, len(keys)) + b"".join(
            self.ciphertext_bytes(self.key_parms_id, k0, k1, 1.0) for k0, k1 in keys)
        return self._load(seal.RelinKeys(), self._framed(body))

    def galois_keys(self, keys: dict[int, list[tuple[Poly, Poly]]]) -> seal.GaloisKeys:
        """SEAL's Galois keys from one key-level pair per decomposition prime for each Galois element: the same
        ``KSwitchKeys`` form, one slot per ``(element - 1) / 2`` among N (``GaloisKeys::get_index``), empty
        slots of length 0."""
        slots = {(element - 1) >> 1: pairs for element, pairs in keys.items()}
        body = struct.pack("<4QQ", *self.key_parms_id, self.n) + b"".join(
            struct.pack("<Q", len(slots.get(k, ()))) + b"".join(
                self.ciphertext_bytes(self.key_parms_id, k0, k1, 1.0) for k0, k1 in slots.get(k, ()))
            for k in range(self.n))
        return self._load(seal.GaloisKeys(), self._framed(body))

    def galois_permutation(self, element: int) -> np.ndarray:
        """``perm`` with ``p(X^element)[k] = p[perm[k]]`` in SEAL's NTT order: slot ``k`` holds ``p`` at
        ``psi^(2 br(k) + 1)``, so the automorphism moves the exponent ``e`` to ``e * element mod 2N``."""
        exponents = 2 * bit_reversal(self.n) + 1
        slot_of = np.empty(2 * self.n, dtype=np.int64)
        slot_of[exponents] = np.arange(self.n)
        return slot_of[exponents * element % (2 * self.n)]

    def ciphertext(self, c0: Poly, c1: Poly, parms_id: list[int], scale: float) -> seal.Ciphertext:
        """A two-part NTT-form ciphertext at ``parms_id`` (SEAL's own ``save`` then compresses it)."""
        return self._load(seal.Ciphertext(), self.ciphertext_bytes(parms_id, c0, c1, scale))

    def seeded_ciphertext_bytes(self, parms_id: list[int], c0: Poly, seed: bytes, scale: float) -> bytes:
        """SEAL's serialisation of a seeded ciphertext: ``c0`` and the 64-byte seed from which SEAL's loader
        expands ``c1`` with SHAKE-256 (``Ciphertext::save_members`` for a ciphertext with a seed marker: half
        the ``DynArray``, then a ``UniformRandomGeneratorInfo``).  Its size is one polynomial and 81 bytes."""
        if len(seed) != SEED_BYTES:
            raise InvalidCiphertext(f"a SEAL seed has {SEED_BYTES} bytes, got {len(seed)}")
        members = self._ciphertext_members(parms_id, c0.shape[0], scale)
        return self._framed(members + self._dynarray(c0.reshape(-1)) + self._framed(bytes([_SHAKE256]) + seed))

    def expand_seed(self, seed: bytes, limbs: int) -> np.ndarray:
        """The ``c1`` SEAL's loader expands from a seeded ciphertext's ``seed`` (uniform over the first ``limbs``
        primes, ``uint64``), computed as SEAL 4 does rather than read back: ``Shake256PRNG`` fills 4,096-byte
        buffers with SHAKE-256 of the seed and a 64-bit block counter; ``sample_poly_uniform`` takes
        ``limbs * N`` little-endian words, and each word at or above the largest multiple of the prime below
        2^64 (less one) is replaced, in order, by the next acceptable word drawn after them; then reduces."""
        stream = _Shake256Stream(seed)
        words = stream.words(limbs * self.n).reshape(limbs, self.n)
        for limb, q in enumerate(self.moduli[:limbs]):
            stream.replace_rejected(words[limb], np.uint64(2**64 - 1 - (2**64 - 1) % q - 1))
        return words % self.q64(limbs)

    def parse_ciphertext(self, blob: bytes, parms_id: list[int], scale: float, limbs: int) -> list[np.ndarray] | None:
        """``[c0, c1]`` (``uint64``) of a serialised two-part NTT-form ciphertext at ``parms_id`` and ``scale``
        when ``blob`` is exactly SEAL's uncompressed form of one (every byte before the residues as
        :meth:`ciphertext_bytes` writes them, every residue below its prime), or that form compressed by SEAL's
        ``save`` (zstd, :meth:`_inflated`); None for any other blob, which then needs SEAL's loader."""
        size = 2 * limbs * self.n * 8
        zero = np.zeros((limbs, self.n), dtype=np.uint64)
        prefix = self.ciphertext_bytes(parms_id, zero, zero, scale)[:-size]
        if len(blob) >= _HEADER.size and _HEADER.unpack_from(blob)[4] == _ZSTD:
            blob = self._inflated(blob, len(prefix) + size) or b""
        if len(blob) != len(prefix) + size or not blob.startswith(prefix):
            return None
        values = np.frombuffer(blob, dtype=np.uint64, offset=len(prefix)).reshape(2, limbs, self.n)
        if not np.all(values < self.q64(limbs)):
            raise InvalidCiphertext("ciphertext holds a residue beyond its prime")
        return [values[0], values[1]]

    def _inflated(self, blob: bytes, size: int) -> bytes | None:
        """SEAL's zstd-compressed serialisation ``blob`` as its uncompressed form of exactly ``size`` bytes, inflated
        in memory by the zstd that SEAL's own extension bundles (what its loader runs, without the file SEAL's
        bindings read through); None if its header is not this SEAL's, or it inflates to anything else."""
        inflate = _zstd_decompress()
        if inflate is None or len(blob) < _HEADER.size or _HEADER.unpack_from(blob) != (
                *self._seal_header, _ZSTD, 0, len(blob)):
            return None
        body = ctypes.create_string_buffer(size - _HEADER.size)
        got = inflate(body, len(body), blob[_HEADER.size:], len(blob) - _HEADER.size)
        return self._framed(body.raw) if got == len(body) else None  # zstd's error codes are near 2^64

    def _ciphertext_members(self, parms_id: list[int], limbs: int, scale: float) -> bytes:
        return struct.pack("<4Q", *parms_id) + b"\x01" + struct.pack("<QQQdQ", 2, self.n, limbs, scale, 1)

    def ciphertext_bytes(self, parms_id: list[int], c0: Poly, c1: Poly, scale: float) -> bytes:
        """SEAL's uncompressed serialisation of the two-part NTT-form ciphertext ``(c0, c1)`` at ``parms_id``
        (what SEAL's ``Ciphertext.load`` reads)."""
        flat = np.concatenate([c0.reshape(-1), c1.reshape(-1)])
        return self._framed(self._ciphertext_members(parms_id, c0.shape[0], scale) + self._dynarray(flat))

    def _plaintext_bytes(self, parms_id: list[int], poly: Poly, scale: float) -> bytes:
        flat = np.asarray(poly).reshape(-1)
        body = struct.pack("<4QQd", *parms_id, len(flat), scale) + self._dynarray(flat)
        return self._framed(body)

    def _dynarray(self, values: np.ndarray) -> bytes:
        return self._framed(struct.pack("<Q", len(values)) + np.asarray(values, dtype=np.uint64).tobytes())

    def _framed(self, body: bytes) -> bytes:
        return _HEADER.pack(*self._seal_header, _UNCOMPRESSED, 0, _HEADER.size + len(body)) + body

    def _load(self, obj: _SealObject, data: bytes) -> _SealObject:
        with _scratch() as path:
            path.write_bytes(data)
            try:
                obj.load(self.context, str(path))
            except Exception as exc:  # SEAL reports out-of-range values as generic C++ exceptions
                raise InvalidCiphertext(f"polynomial does not load as a SEAL {type(obj).__name__}: {exc}") from exc
        return obj


@functools.lru_cache(maxsize=1)
def _zstd_decompress() -> Callable[..., int] | None:
    """``ZSTD_decompress`` of the zstd library linked into SEAL's Python extension, or None if it is not exported."""
    spec = importlib.util.find_spec("_sealapi_cpp")  # the extension tenseal.sealapi re-exports
    if spec is None or spec.origin is None:
        return None
    try:
        function = ctypes.CDLL(spec.origin).ZSTD_decompress
    except (OSError, AttributeError):
        return None
    function.restype, function.argtypes = ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p,
                                                           ctypes.c_size_t]
    return function


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Integers below ``2**bits`` (``bits`` <= 64), each in exactly ``bits`` bits, big-endian, concatenated: each
    one ORed into the one or two 64-bit words its bits fall in (no array of single bits)."""
    flat = np.asarray(values, dtype=np.uint64).reshape(-1)
    word, offset = _bit_positions(flat.size, bits, 6)
    aligned = flat << np.uint64(64 - bits)
    words = np.zeros(-(-flat.size * bits // 64) + 1, dtype=np.uint64)
    np.bitwise_or.at(words, word, aligned >> offset)
    spill = offset > 0
    np.bitwise_or.at(words, word[spill] + 1, aligned[spill] << (np.uint64(64) - offset[spill]))
    return words.astype(">u8").tobytes()[: -(-flat.size * bits // 8)]


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`pack_bits` for ``count`` integers (``uint64``): each read from the 9 bytes its bits
    start in."""
    if len(data) != -(-count * bits // 8):
        raise InvalidCiphertext(f"packed polynomial has {len(data)} bytes, expected {-(-count * bits // 8)}")
    first, offset = _bit_positions(count, bits, 3)
    window = sliding_window_view(np.frombuffer(data + bytes(9), dtype=np.uint8), 9)[first]
    high = np.ascontiguousarray(window[:, :8]).view(">u8")[:, 0].astype(np.uint64)
    return ((high << offset) | (window[:, 8].astype(np.uint64) >> (np.uint64(8) - offset))) >> np.uint64(64 - bits)


@functools.lru_cache(maxsize=32)
def _bit_positions(count: int, bits: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``count`` ``bits``-bit fields starts: its unit (byte for ``shift`` 3, 64-bit word for 6) and
    its bit offset in that unit (``uint64``), read-only (cached)."""
    starts = np.arange(count, dtype=np.int64) * bits
    unit, offset = starts >> shift, (starts & ((1 << shift) - 1)).astype(np.uint64)
    unit.flags.writeable = offset.flags.writeable = False
    return unit, offset


class _Shake256Stream:
    """SEAL's ``Shake256PRNG`` as a stream of 64-bit words: buffer ``k`` is SHAKE-256 of the 64-byte seed
    followed by ``k`` as a little-endian 64-bit integer, 4,096 bytes long."""

    _BUFFER = 4096

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise InvalidCiphertext(f"a SEAL seed has {SEED_BYTES} bytes, got {len(seed)}")
        self.seed, self.position = seed, 0  # position: words consumed

    def _bytes(self, start: int, stop: int) -> bytes:
        first, last = start // self._BUFFER, -(-stop // self._BUFFER)
        data = b"".join(hashlib.shake_256(self.seed + k.to_bytes(8, "little")).digest(self._BUFFER)
                        for k in range(first, last))
        return data[start - first * self._BUFFER : stop - first * self._BUFFER]

    def words(self, count: int) -> np.ndarray:
        start = self.position * 8
        self.position += count
        return np.frombuffer(self._bytes(start, start + 8 * count), dtype=np.uint64).copy()

    def replace_rejected(self, row: np.ndarray, ceiling: np.uint64) -> None:
        """Replace each word of ``row`` at or above ``ceiling``, in order, by the next word drawn below it."""
        rejected = np.flatnonzero(row >= ceiling)
        while rejected.size:
            extra = self.words(2 * rejected.size + 8)
            accepted = np.flatnonzero(extra < ceiling)
            take = min(accepted.size, rejected.size)
            row[rejected[:take]] = extra[accepted[:take]]
            if take == rejected.size:  # the words after the last one used stay in the stream
                self.position -= extra.size - int(accepted[take - 1]) - 1
            rejected = rejected[take:]


def secret_bytes(nbytes: int) -> bytes:
    """``nbytes`` secret random bytes: ChaCha20's keystream (Bernstein 2008; RFC 8439) under 32 fresh bytes of
    ``os.urandom``, a key used for this draw alone (so a forked process shares no state)."""
    return chacha_stream(os.urandom(32))(nbytes)


def chacha_stream(key: bytes) -> Callable[[int], bytes]:
    """A deterministic byte stream: ChaCha20's keystream under a 32-byte ``key`` used for this stream alone (the
    nonce is zero), read on where the last call stopped; a pseudorandom pad for whoever holds the key."""
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return lambda nbytes: encryptor.update(bytes(nbytes))


def shake_stream(seed: bytes) -> Callable[[int], bytes]:
    """A deterministic byte stream: successive SHAKE-256 blocks of ``seed`` (public randomness only)."""
    counter = 0

    def read(nbytes: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(seed + counter.to_bytes(8, "little")).digest(nbytes)

    return read
