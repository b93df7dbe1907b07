"""CKKS secure aggregation: parameters, contexts, chunked encryption, folding and decryption.

CKKS is the approximate-number scheme of Cheon, Kim, Kim and Song ("Homomorphic Encryption for Arithmetic of
Approximate Numbers", ASIACRYPT 2017), here through TenSEAL's bindings of Microsoft SEAL.  Aggregation needs
only ciphertext additions: participants encrypt ``n_i * delta_i`` together with their weight ``n_i`` and
divide after decrypting the sum, so no rescaling level, relinearisation or Galois key is ever needed and the
ciphertexts live at a single 59-bit prime.

Wire size is kept small by three choices, each measured by ``fedprompt bench he``:

* **complex packing**: CKKS slots are complex numbers; two reals go into one slot (real and imaginary part),
  so a ciphertext of ring degree N carries N reals instead of N/2.  Additions act on both parts alike.
* **seeded symmetric encryption**: key holders own the secret key, so they encrypt symmetrically, and SEAL
  then serialises the uniformly random half ``c1`` of a fresh ciphertext as the seed it was expanded from,
  halving the upload.  (Folded sums are no longer seeded: downloads are twice the upload size.)
* **one data prime**: a ciphertext at the single data prime costs ``2 * N * 8`` bytes unseeded.

Jobs with a Gram defence, and levelled jobs that discover their cohorts, use a one-multiplication chain
instead (``crypto.gram``): the coordinator then also computes the encrypted Gram matrix of the updates with
public evaluation keys; with a Gram defence participants encrypt 0 in the weight slot.

The coordinator holds a :class:`PublicContext` (parameters only, no key of any kind) and refuses a context
that carries a secret key.  Ciphertexts are bound to their job's key by a key id (a SHA-256 of the secret
key's serialisation, which does not reveal the key); a ciphertext made under another key is refused by id,
because a coordinator without the key cannot tell it apart otherwise.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import math
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal

from fedprompt.crypto.errors import InvalidCiphertext, InvalidValue, ParameterError

ENCODING = "ckks-v1"
MAGIC = b"FPCK1"
KEY_ID_BYTES = 32
_HEADER = struct.Struct("<5s32sIH")
_LENGTH = struct.Struct("<I")
_SECURITY_LEVELS = ((256, seal.SEC_LEVEL_TYPE.TC256), (192, seal.SEC_LEVEL_TYPE.TC192),
                    (128, seal.SEC_LEVEL_TYPE.TC128))
#: Margin (in bits) between the largest encrypted sum and the data prime, so rounding never wraps around.
_HEADROOM_BITS = 2


@dataclass(frozen=True)
class CkksParams:
    """Encryption parameters of a job, chosen for an addition-only workload.

    Defaults: ring degree 4096 with primes of 59 + 16 bits (75 bits total).  By the Homomorphic Encryption
    Standard's table (Albrecht et al., 2018) 4096 allows 109 bits at 128-bit, 75 bits at 192-bit security, so
    these parameters give 192-bit security.  The 16-bit prime is SEAL's key-switching prime, which TenSEAL's
    context requires but this workload never uses; ciphertexts live at the 59-bit data prime alone.  The
    scale 2^30 trades precision for range: any sum below ``2^(59-30-2)`` in magnitude decrypts without
    wrap-around, so one summand (``n_i * delta_i`` and the weight ``n_i``) may hold up to ``value_bound`` =
    2^27 / ``max_summands`` (134,217 for 1,000 summands), while the decrypted weighted mean of 1,000 updates
    errs by well under 1e-4 (``fedprompt bench he`` measures it).
    """

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (59, 16)
    scale_bits: int = 30
    max_summands: int = 1000

    def check(self, prefix: str = "he") -> None:
        """Raise ``ParameterError`` naming the key if the parameters are unusable or below 128-bit security."""
        n = self.poly_modulus_degree
        if n not in (4096, 8192, 16384, 32768):
            raise ParameterError(f"{prefix}.poly_modulus_degree: must be 4096, 8192, 16384 or 32768, got {n}")
        if len(self.coeff_mod_bit_sizes) not in (2, 4) or not all(16 <= b <= 60 for b in self.coeff_mod_bit_sizes):
            raise ParameterError(f"{prefix}.coeff_mod_bit_sizes: need [data prime, key-switching prime] (an "
                                 "addition-only chain) or [data prime, data prime, rescaling prime, key-switching prime] (one "
                                 f"multiplication, for Gram defences), each 16..60 bits, got {list(self.coeff_mod_bit_sizes)}")
        if self.security_bits < 128:
            raise ParameterError(f"{prefix}.coeff_mod_bit_sizes: {sum(self.coeff_mod_bit_sizes)} bits exceed the "
                                 f"{seal.CoeffModulus.MaxBitCount(n, seal.SEC_LEVEL_TYPE.TC128)} allowed for 128-bit "
                                 f"security at degree {n}")
        if not 20 <= self.scale_bits <= self.coeff_mod_bit_sizes[0] - 12:
            raise ParameterError(f"{prefix}.scale_bits: must be in [20, {self.data_bits - 12}] for a "
                                 f"{self.data_bits}-bit data prime, got {self.scale_bits}")
        if not 1 <= self.max_summands <= 1_000_000:
            raise ParameterError(f"{prefix}.max_summands: must be in [1, 1000000], got {self.max_summands}")

    @property
    def data_bits(self) -> int:
        """Bits of the modulus fresh ciphertexts live at: every prime but the key-switching one."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def multiplicative(self) -> bool:
        """True for a chain with a rescaling prime: one ciphertext multiplication (the encrypted Gram matrix)."""
        return len(self.coeff_mod_bit_sizes) == 4

    @property
    def security_bits(self) -> int:
        """The highest HE-standard level (128/192/256) the total modulus size meets; 0 if none."""
        total = sum(self.coeff_mod_bit_sizes)
        for bits, level in _SECURITY_LEVELS:
            if total <= seal.CoeffModulus.MaxBitCount(self.poly_modulus_degree, level):
                return bits
        return 0

    @property
    def reals_per_ciphertext(self) -> int:
        """N/2 complex slots, two reals each."""
        return self.poly_modulus_degree

    @property
    def sum_bound(self) -> float:
        """Largest magnitude a decrypted sum may have without wrapping around: beyond it lies garbage."""
        return 2.0 ** (self.data_bits - self.scale_bits - _HEADROOM_BITS)

    @property
    def value_bound(self) -> float:
        """Largest magnitude one summand may encrypt so that ``max_summands`` of them never wrap around."""
        return self.sum_bound / self.max_summands

    def num_ciphertexts(self, vector_size: int) -> int:
        """Ciphertexts for a vector plus its weight slot."""
        return -(-(vector_size + 1) // self.reals_per_ciphertext)

    def describe(self) -> dict[str, object]:
        """The parameters as printed at job start and stored in reports."""
        return {"scheme": "CKKS", "poly_modulus_degree": self.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes), "scale_bits": self.scale_bits,
                "security_bits": self.security_bits, "max_summands": self.max_summands,
                "packing": "complex (2 reals per slot)", "encryption": "symmetric, seeded"}


_SCRATCH: dict[int, Path] = {}  # process id -> its private scratch directory
_SCRATCH_NAMES = itertools.count()


def _scratch_directory() -> Path:
    """This process's private (0700) scratch directory, made once and removed at exit: creating and removing a
    directory per object cost ~4 ms on a loaded disk, more than the SEAL call it served.  Keyed by process id,
    so a forked child makes its own and never removes its parent's."""
    pid = os.getpid()
    if pid not in _SCRATCH:
        directory = Path(tempfile.mkdtemp(prefix="fedprompt-ckks-"))

        def remove() -> None:
            if os.getpid() == pid:
                shutil.rmtree(directory, ignore_errors=True)

        atexit.register(remove)
        _SCRATCH[pid] = directory
    return _SCRATCH[pid]


@contextmanager
def _scratch() -> Iterator[Path]:
    """A private scratch file: SEAL's Python bindings (de)serialise through file paths only.

    Ciphertexts, key-less parameters, public keys and (in ``crypto.rns``) decrypted aggregates and the trivial
    reader keys 0 and 1 pass through it, in a directory only this user can read (one per process, a file name
    per use and thread), removed after use; secret keys are serialised by TenSEAL in memory.
    """
    path = _scratch_directory() / f"obj-{threading.get_ident()}-{next(_SCRATCH_NAMES)}"
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _saved(save: Callable[[str], None]) -> bytes:
    with _scratch() as path:
        save(str(path))
        return path.read_bytes()


def _make_context(params: CkksParams) -> ts.Context:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    ctx.global_scale = 2.0 ** params.scale_bits
    return ctx


def _check_matches(ctx: ts.Context, params: CkksParams) -> None:
    data = ctx.seal_context().data.key_context_data().parms()
    bits = tuple(m.bit_count() for m in data.coeff_modulus())
    if data.poly_modulus_degree() != params.poly_modulus_degree or bits != params.coeff_mod_bit_sizes:
        raise InvalidCiphertext(f"context has degree {data.poly_modulus_degree()} and primes {list(bits)}, the job "
                                f"uses {params.poly_modulus_degree} and {list(params.coeff_mod_bit_sizes)}")


def _public_bytes(ctx: ts.Context) -> bytes:
    return bytes(ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False,
                               save_relin_keys=False))


class _Codec:
    """What both sides share: the parameters, the SEAL context and how vectors map onto ciphertexts."""

    #: Whether a decrypted sum's weight slot holds whole example counts (threshold jobs: fractions of a unit).
    whole_weights = True

    def __init__(self, ctx: ts.Context, params: CkksParams) -> None:
        _check_matches(ctx, params)
        self.params = params
        self.ctx = ctx
        self.seal_context = ctx.seal_context().data
        self.encoder = seal.CKKSEncoder(self.seal_context)
        self.evaluator = seal.Evaluator(self.seal_context)

    def encode(self, vector: np.ndarray, weight: float) -> list[seal.Plaintext]:
        """``vector`` and ``weight`` (in the slot after it) as plaintexts, two reals per complex slot; values
        beyond what ``max_summands`` of them can sum to without wrapping around are refused."""
        scale, plains = 2.0 ** self.params.scale_bits, []
        for slots in self.slots(vector, weight):
            plain = seal.Plaintext()
            self.encoder.encode(slots.tolist(), scale, plain)
            plains.append(plain)
        return plains

    def slots(self, vector: np.ndarray, weight: float) -> np.ndarray:
        """The complex slots of :meth:`encode`'s plaintexts, ``(ciphertexts, N / 2)``, checked the same way."""
        reals = np.concatenate([np.asarray(vector, dtype=np.float64).reshape(-1), [float(weight)]])
        if not np.isfinite(reals).all():
            raise InvalidValue("cannot encrypt NaN or Inf")
        bound = self.params.value_bound
        if np.abs(reals).max() > bound:
            raise InvalidValue(f"a value exceeds the encryptable range {bound:.4g} of these parameters "
                               f"({self.params.max_summands} summands); lower the weight or clip the update")
        per = self.params.reals_per_ciphertext
        padded = np.zeros(self.params.num_ciphertexts(len(reals) - 1) * per)
        padded[: len(reals)] = reals
        return padded.reshape(-1, per)[:, 0::2] + 1j * padded.reshape(-1, per)[:, 1::2]

    def decode(self, plains: list[seal.Plaintext]) -> np.ndarray:
        """The reals of decrypted plaintexts (real and imaginary part of each slot), in order."""
        parts = []
        for plain in plains:
            slots = np.asarray(self.encoder.decode_complex(plain))
            parts.append(np.stack([slots.real, slots.imag], axis=1).reshape(-1))
        return np.concatenate(parts)

    def checked(self, reals: np.ndarray, vector_size: int) -> tuple[np.ndarray, float]:
        """(vector, weight) of the decrypted reals of a sum.

        The weight slot holds a sum of integer example counts; one that decrypts far from an integer, or values
        beyond what a sum can hold without wrapping around, mean a wrong key (or decryption share) or a
        corrupted sum, and are refused rather than silently used.  Without ``whole_weights`` (threshold jobs
        weigh in units of ``he.weight_unit`` examples) the weight must be positive, and its caller checks it
        against the declared weights (``participant.threshold_keys``).
        """
        weight = float(reals[vector_size])
        whole = abs(weight - round(weight)) < 1e-3 and round(weight) >= 1
        if not (math.isfinite(weight) and (whole if self.whole_weights else weight > 0)):
            kind = "whole number" if self.whole_weights else "number"
            raise InvalidCiphertext(f"decrypted weight is not a positive {kind}: wrong key or corrupted data")
        if not np.all(np.abs(reals) <= self.params.sum_bound):
            raise InvalidCiphertext("decrypted values exceed what a sum can hold: wrong key or corrupted data")
        return reals[:vector_size], float(round(weight)) if self.whole_weights else weight

    def expected_size(self, vector_size: int) -> int:
        """An upper bound on the wire size of an encrypted vector (unseeded ciphertexts, plus framing)."""
        one = 2 * self.params.poly_modulus_degree * 8 * (len(self.params.coeff_mod_bit_sizes) - 1) + 1024
        return _HEADER.size + self.params.num_ciphertexts(vector_size) * (_LENGTH.size + one)

    def frame(self, key_id: bytes, vector_size: int, blobs: list[bytes]) -> bytes:
        parts = [_HEADER.pack(MAGIC, key_id, vector_size, len(blobs))]
        for blob in blobs:
            parts += [_LENGTH.pack(len(blob)), blob]
        return b"".join(parts)

    def parse(self, data: bytes, key_id: bytes, vector_size: int) -> list[seal.Ciphertext]:
        """Ciphertexts of an encrypted vector, each checked against this context; ``InvalidCiphertext`` if not."""
        return self.load(self.blobs(data, key_id, vector_size), self.seal_context.first_parms_id(),
                         2.0 ** self.params.scale_bits, "fresh")

    def blobs(self, data: bytes, key_id: bytes, vector_size: int) -> list[bytes]:
        """The serialised ciphertexts of an encrypted vector of ``vector_size`` values under ``key_id``."""
        def check(size: int, count: int) -> None:
            if size != vector_size:
                raise InvalidCiphertext(f"encrypted vector has {size} parameters, expected {vector_size}")
            expected = self.params.num_ciphertexts(vector_size)
            if count != expected:
                raise InvalidCiphertext(f"payload has {count} ciphertexts, a vector of {vector_size} needs {expected}")

        return self.unframe(data, key_id, check)

    def unframe(self, data: bytes, key_id: bytes, check: Callable[[int, int], None]) -> list[bytes]:
        """The ciphertext blobs of a framed payload made under ``key_id``; ``check(size, count)`` vets the
        header's size field and ciphertext count before any blob is read."""
        if len(data) < _HEADER.size:
            raise InvalidCiphertext(f"encrypted payload of {len(data)} bytes is shorter than its header")
        magic, got_key, size, count = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise InvalidCiphertext(f"not a {ENCODING} payload (bad magic)")
        if got_key != key_id:
            raise InvalidCiphertext("ciphertext was made under another key (key id differs from this job's)")
        check(size, count)
        offset = _HEADER.size
        blobs = []
        for index in range(count):
            if offset + _LENGTH.size > len(data):
                raise InvalidCiphertext(f"payload truncated before ciphertext {index}")
            (length,) = _LENGTH.unpack_from(data, offset)
            offset += _LENGTH.size
            if offset + length > len(data):
                raise InvalidCiphertext(f"ciphertext {index} truncated ({len(data) - offset} of {length} bytes)")
            blobs.append(data[offset : offset + length])
            offset += length
        if offset != len(data):
            raise InvalidCiphertext(f"{len(data) - offset} unexpected bytes after the last ciphertext")
        return blobs

    def load(self, blobs: list[bytes], parms_id: list[int], scale: float, what: str) -> list[seal.Ciphertext]:
        """Parse ciphertext blobs, each required to be a 2-part NTT ciphertext at ``parms_id`` and ``scale``."""
        out = []
        with _scratch() as path:
            for index, blob in enumerate(blobs):
                path.write_bytes(blob)
                out.append(self._load(path, index, parms_id, scale, what))
        return out

    def _load(self, path: Path, index: int, parms_id: list[int], scale: float, what: str) -> seal.Ciphertext:
        ct = seal.Ciphertext()
        try:
            ct.load(self.seal_context, str(path))
        except Exception as exc:  # SEAL reports malformed or out-of-range data as generic C++ exceptions
            raise InvalidCiphertext(f"ciphertext {index} does not parse under this job's context: {exc}") from exc
        if ct.parms_id() != parms_id or ct.size() != 2 or not ct.is_ntt_form() or ct.scale != scale:
            raise InvalidCiphertext(f"ciphertext {index} is not a {what} ciphertext at this job's level and scale")
        return ct


class SecretContext(_Codec):
    """A key holder's context: encrypts, decrypts, and exports the public half.  Never leaves a participant
    except sealed for another participant (``crypto.sealing``)."""

    def __init__(self, ctx: ts.Context, params: CkksParams) -> None:
        if not ctx.is_private():
            raise InvalidCiphertext("a key holder's context must contain the secret key")
        super().__init__(ctx, params)
        self.secret_key = ctx.secret_key().data
        self.encryptor = seal.Encryptor(self.seal_context, self.secret_key)
        self.decryptor = seal.Decryptor(self.seal_context, self.secret_key)
        self.key_id = hashlib.sha256(b"fedprompt-ckks-key-id\0" + _saved(self.secret_key.save)).digest()

    @classmethod
    def create(cls, params: CkksParams) -> SecretContext:
        """Fresh keys for a new job (per job: a new job never reuses a key)."""
        return cls(_make_context(params), params)

    @classmethod
    def from_secret_bytes(cls, data: bytes, params: CkksParams) -> SecretContext:
        try:
            ctx = ts.context_from(data)
        except Exception as exc:
            raise InvalidCiphertext(f"secret context does not parse: {exc}") from exc
        return cls(ctx, params)

    def secret_bytes(self) -> bytes:
        """The secret key and parameters, for sealing to another participant or the site's own state."""
        return bytes(self.ctx.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False,
                                        save_relin_keys=False))

    def public_bytes(self) -> bytes:
        """Parameters only: no secret, public, relinearisation or Galois key (additions need none)."""
        return _public_bytes(self.ctx)

    def encrypt(self, vector: np.ndarray, weight: float) -> bytes:
        """Encrypt ``vector`` and ``weight`` (in the slot after it) as the job's wire format."""
        blobs = [_saved(self.encryptor.encrypt_symmetric(plain).save) for plain in self.encode(vector, weight)]
        return self.frame(self.key_id, int(np.asarray(vector).size), blobs)

    def decrypt(self, data: bytes, vector_size: int) -> tuple[np.ndarray, float]:
        """(vector, weight) of an encrypted vector or of a folded sum of them (see :meth:`_Codec.checked`)."""
        return self.checked(self.decrypt_reals(data, vector_size), vector_size)

    def decrypt_reals(self, data: bytes, vector_size: int) -> np.ndarray:
        """Every decrypted real of an encrypted vector (the vector, its weight slot and the padding), unchecked."""
        parts = []
        for ct in self.parse(data, self.key_id, vector_size):
            plain = seal.Plaintext()
            self.decryptor.decrypt(ct, plain)
            parts.append(plain)
        return self.decode(parts)


class PublicContext(_Codec):
    """The coordinator's context: parses and adds ciphertexts, holds no key and refuses one that has."""

    def __init__(self, data: bytes, params: CkksParams, key_id: bytes) -> None:
        try:
            ctx = ts.context_from(data)
        except Exception as exc:
            raise InvalidCiphertext(f"public context does not parse: {exc}") from exc
        if ctx.is_private() or ctx.has_secret_key():
            raise InvalidCiphertext("refusing a context that contains a secret key: send the public context only")
        if len(key_id) != KEY_ID_BYTES:
            raise InvalidCiphertext(f"key id must be {KEY_ID_BYTES} bytes, got {len(key_id)}")
        super().__init__(ctx, params)
        self.key_id = key_id
        self.data = _public_bytes(ctx)

    def new_sum(self, vector_size: int) -> EncryptedSum:
        return EncryptedSum(self, vector_size)


class EncryptedSum:
    """A running sum of encrypted vectors: memory is one vector's ciphertexts, whatever the number of terms."""

    def __init__(self, context: PublicContext, vector_size: int) -> None:
        self.context = context
        self.vector_size = vector_size
        self.total: list[seal.Ciphertext] | None = None
        self.count = 0

    def parse(self, data: bytes) -> list[seal.Ciphertext]:
        """Validate an encrypted vector for this sum without changing the sum."""
        if self.count >= self.context.params.max_summands:
            raise InvalidValue(f"the sum already holds the {self.context.params.max_summands} terms these "
                               "parameters allow")
        return self.context.parse(data, self.context.key_id, self.vector_size)

    def add(self, ciphertexts: list[seal.Ciphertext]) -> None:
        """Fold parsed ciphertexts (from :meth:`parse`) into the sum."""
        if self.total is None:
            self.total = ciphertexts
        else:
            for acc, ct in zip(self.total, ciphertexts, strict=True):
                self.context.evaluator.add_inplace(acc, ct)
        self.count += 1

    def to_bytes(self) -> bytes:
        if self.total is None:
            raise InvalidValue("an empty sum has no ciphertext")
        return self.context.frame(self.context.key_id, self.vector_size, [_saved(ct.save) for ct in self.total])

