"""The encrypted Gram matrix of a round's updates: evaluation keys, the coordinator's computation on
ciphertexts, and the key holders' decryption of the Gram scalars (and of nothing else).

Why: distance- and similarity-based defences (norm bounding, Krum / Multi-Krum, FoolsGold-like clustering)
need only the Gram matrix ``G_uv = <x_u, x_v>`` of the updates (``coordinator.robust``).  So under CKKS the
coordinator computes ``G`` on the ciphertexts, two key holders decrypt only those scalars, and the ordinary
decision functions run on them.

Parameters (``gram_params``): ring degree 8192 with primes [60, 40, 40, 60] (200 bits; the Homomorphic
Encryption Standard allows 218 bits at 128-bit security for 8192, Albrecht et al. 2018).  Fresh ciphertexts
live at the three data primes with scale 2^40; the product of two is at scale 2^80 and the rescale by the
last 40-bit prime leaves the Gram entries at scale 2^40 over 100 bits, so an entry decrypts without
wrap-around while ``|G_uv| < 2^59``, with an absolute error of ~1e-6 plus ~2^-26 sqrt(G_uu) (measured).
A smaller chain ([60, 40, 60], scale 2^30) was measured first: its absolute error of ~0.5 ruined small
updates (e.g. weight-1 DP-clipped deltas).  With complex packing (two reals per slot, ``crypto.ckks``) one
ciphertext carries 8,192 reals, so the demo's 6,914-float prompt is one ciphertext (163 KB seeded).

Computation (Cheon et al. 2017 for the CKKS operations; the packing is ours), for two entries at a time:

1. ``p = ct_u * conj(ct_v)`` slot-wise (conjugation is the Galois automorphism ``X -> X^(2N-1)``),
   relinearised and rescaled: ``Re(p_k)`` is the inner product of the two reals packed in slot ``k``,
   ``Im(p_k)`` a cross term that must not be revealed;
2. ``(p1 + X p2) + conj(p1 - X p2)`` with the exact monomial ``X = X^(N/2)`` keeps only the real parts, two
   entries in one ciphertext for one conjugation (``_real_parts``);
3. rotate-and-sum over the slots (``_sum_slots``): the ciphertext now encrypts the polynomial
   ``2 <x_u, x_v> + 2 <x_u', x_v'> X^(N/2)``, every other coefficient zero;
4. multiply by the exact monomial ``X^j`` (a plaintext at scale 1: no noise, no level) and add: pair ``j``
   lands at coefficients ``j`` and ``j + N/2`` of one ciphertext holding up to ``N`` entries.

The key holders thus receive one ciphertext per ``N`` entries (235 KB; all 210 entries of 20 updates),
decrypt it, read the polynomial's coefficients (inverting the canonical embedding, ``coefficients``), and
return only the entries.

Key material: the coordinator needs relinearisation keys and Galois keys for conjugation and the
``log2(N/2)`` power-of-two rotations, and nothing else (``evaluation_keys``, made by the key dealer; 13
Galois keys instead of SEAL's default 25).  They are public evaluation keys: they let one compute on
ciphertexts, never decrypt.  Serialised seeded they are about 9.7 MB, sent once per job.

Decryption noise: Li and Micciancio ("On the Security of Homomorphic Encryption on Approximate Numbers",
EUROCRYPT 2021) show that CKKS decryptions handed back to the party that chose the ciphertext can reveal the
secret key through their noise.  ``decrypt_gram`` therefore floods each scalar with Gaussian noise ``2^6``
times the measured noise bound and rounds it to a grid of that size.  The flooding noise is derived
deterministically from the secret key and the ciphertext (HMAC-SHA256), so two honest decryptors return the
same numbers (that is what lets the coordinator compare them) while the coordinator cannot predict it.
This is a heuristic mitigation sized for precision, not the ``2^(lambda/2)`` flooding of the provable fix.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from collections.abc import Sequence

import numpy as np
import tenseal.sealapi as seal

from fedprompt.crypto.ckks import CkksParams, PublicContext, SecretContext, _Codec, _saved, _scratch
from fedprompt.crypto.errors import InvalidCiphertext, InvalidValue

GRAM_ENCODING = "ckks-gram-v1"
EVALUATION_KEYS = "ckks-evalkeys-v1"
GRAM_DEGREE = 8192
GRAM_CHAIN = (60, 40, 40, 60)
GRAM_SCALE_BITS = 40
_KEYS_MAGIC = b"FPEK1"
_KEYS_HEADER = struct.Struct("<5s32sII")
#: Measured: the input-independent noise of a packed Gram entry stays below 2^21 at the coefficient level
#: (~1e-6 at scale 2^40, 210 packed entries); flooding and rounding work in multiples of the noise bound.
NOISE_BITS = 21
#: Measured: the input-dependent part of that noise stays below 2^-24 * sqrt(G_uu).
RELATIVE_NOISE_BITS = 24
#: Flooding noise (and rounding grid) is 2^FLOOD_BITS times the noise bound.
FLOOD_BITS = 6
#: Largest evaluation-key upload accepted (the keys are ~9.7 MB).
MAX_EVALUATION_KEY_BYTES = 32 * 1024 * 1024


def gram_params(base: CkksParams) -> CkksParams:
    """The one-multiplication chain of a job with an encrypted Gram matrix (a Gram defence or cohort discovery;
    ``base`` gives ``max_summands``)."""
    return CkksParams(GRAM_DEGREE, GRAM_CHAIN, GRAM_SCALE_BITS, base.max_summands)


def galois_elements(params: CkksParams) -> list[int]:
    """Conjugation and the power-of-two left rotations of the ``N/2`` slots (SEAL's generator is 3)."""
    m = 2 * params.poly_modulus_degree
    steps = (params.poly_modulus_degree // 2).bit_length() - 1
    return [m - 1] + [pow(3, 1 << k, m) for k in range(steps)]


def pairs(n: int) -> list[tuple[int, int]]:
    """The upper triangle ``(u, v), u <= v``, row by row: the order Gram entries are packed and returned."""
    return [(u, v) for u in range(n) for v in range(u, n)]


def evaluation_keys(secret: SecretContext) -> bytes:
    """Relinearisation and the needed Galois keys, seeded, framed with the key id; never the secret key."""
    if not secret.params.multiplicative:
        raise InvalidCiphertext("evaluation keys need a chain with a rescaling prime (gram_params)")
    keygen = seal.KeyGenerator(secret.seal_context, secret.secret_key)
    return frame_evaluation_keys(secret.key_id, keygen.create_relin_keys(),
                                 keygen.create_galois_keys(galois_elements(secret.params)))


def frame_evaluation_keys(key_id: bytes, relin: seal.RelinKeys, galois: seal.GaloisKeys) -> bytes:
    """SEAL's keys, serialised (zstd) and framed with the key id of the key they evaluate under: what
    ``GramEvaluator`` loads, whether one dealer made them or the members collectively (``crypto.threshold_gram``)."""
    relin_bytes, galois_bytes = _saved(relin.save), _saved(galois.save)
    return _KEYS_HEADER.pack(_KEYS_MAGIC, key_id, len(relin_bytes), len(galois_bytes)) + relin_bytes + galois_bytes


def _monomial(encoder: seal.CKKSEncoder, degree: int, j: int, parms_id: list[int]) -> seal.Plaintext:
    """The plaintext ``X^j`` at scale 1: its slots are ``zeta^(j * 3^k)``, so encoding them rounds exactly."""
    m = 2 * degree
    exponents = (j * np.array([pow(3, k, m) for k in range(degree // 2)], dtype=np.int64)) % m
    plain = seal.Plaintext()
    encoder.encode(np.exp(1j * np.pi * exponents / degree).tolist(), parms_id, 1.0, plain)
    return plain


class GramEvaluator:
    """The coordinator's side: the job's public context plus evaluation keys; computes packed Gram ciphertexts."""

    def __init__(self, context: PublicContext, keys: bytes) -> None:
        if not context.params.multiplicative:
            raise InvalidCiphertext("this job's context has no multiplication level for an encrypted Gram matrix")
        if len(keys) < _KEYS_HEADER.size:
            raise InvalidCiphertext("evaluation keys are shorter than their header")
        magic, key_id, relin_len, galois_len = _KEYS_HEADER.unpack_from(keys)
        if magic != _KEYS_MAGIC or len(keys) != _KEYS_HEADER.size + relin_len + galois_len:
            raise InvalidCiphertext("evaluation keys are malformed (bad magic or lengths)")
        if key_id != context.key_id:
            raise InvalidCiphertext("evaluation keys were made under another key than the job's public context")
        self.context = context
        self.relin = seal.RelinKeys()
        self.galois = seal.GaloisKeys()
        body = keys[_KEYS_HEADER.size :]
        with _scratch() as path:
            try:
                path.write_bytes(body[:relin_len])
                self.relin.load(context.seal_context, str(path))
                path.write_bytes(body[relin_len:])
                self.galois.load(context.seal_context, str(path))
            except Exception as exc:  # SEAL reports malformed keys as generic C++ exceptions
                raise InvalidCiphertext(f"evaluation keys do not parse under this job's context: {exc}") from exc
        missing = [g for g in galois_elements(context.params) if not self.galois.has_key(g)]
        if missing:
            raise InvalidCiphertext(f"evaluation keys lack Galois keys for elements {missing}")
        self.size = len(keys)
        self.monomials: dict[int, seal.Plaintext] = {}

    def gram(self, updates: Sequence[list[seal.Ciphertext]]) -> bytes:
        """Packed ciphertext(s) of ``2 <x_u, x_v>`` for every pair of ``pairs(len(updates))``, framed."""
        ctx = self.context
        ev, half = ctx.evaluator, ctx.params.poly_modulus_degree // 2
        conjugates = [[self._conjugate(ct) for ct in cts] for cts in updates]
        entries = pairs(len(updates))
        packed: list[seal.Ciphertext] = []
        for start in range(0, len(entries), 2):
            products = [self._product(updates[u], conjugates[v]) for u, v in entries[start : start + 2]]
            both = self._sum_slots(self._real_parts(*products))
            j = (start // 2) % half
            if j == 0:
                packed.append(both)
            else:
                ev.multiply_plain_inplace(both, self._monomial(j, both.parms_id()))
                ev.add_inplace(packed[-1], both)
        return ctx.frame(ctx.key_id, len(updates), [_saved(ct.save) for ct in packed])

    def _conjugate(self, ct: seal.Ciphertext) -> seal.Ciphertext:
        out = seal.Ciphertext()
        self.context.evaluator.complex_conjugate(ct, self.galois, out)
        return out

    def _monomial(self, j: int, parms_id: list[int]) -> seal.Plaintext:
        if j not in self.monomials:
            self.monomials[j] = _monomial(self.context.encoder, self.context.params.poly_modulus_degree, j, parms_id)
        return self.monomials[j]

    def _product(self, left: list[seal.Ciphertext], right_conj: list[seal.Ciphertext]) -> seal.Ciphertext:
        """Slot-wise ``z_u * conj(z_v)`` summed over the update's ciphertexts, relinearised and rescaled."""
        ev = self.context.evaluator
        total = None
        for a, b in zip(left, right_conj, strict=True):
            product = seal.Ciphertext()
            ev.multiply(a, b, product)
            if total is None:
                total = product
            else:
                ev.add_inplace(total, product)  # size-3 products add before one relinearisation
        assert total is not None
        ev.relinearize_inplace(total, self.relin)
        ev.rescale_to_next_inplace(total)
        return total

    def _real_parts(self, first: seal.Ciphertext, second: seal.Ciphertext | None = None) -> seal.Ciphertext:
        """Slots ``a_k + i s_k b_k`` with ``a = 2 Re(p1)``, ``b = 2 Re(p2)``: ``(p1 + X p2) + conj(p1 - X p2)`` for
        the exact monomial ``X = X^(N/2)``, one conjugation for two entries; the imaginary cross terms cancel.

        ``X^(N/2)`` multiplies slot ``k`` (the root ``zeta^(3^k)``) by ``i^(3^k) = i s_k`` with ``s_k = +1`` for
        even ``k`` and ``-1`` for odd ``k``; ``_sum_slots`` undoes the sign.
        """
        ev = self.context.evaluator
        if second is None:
            out = self._conjugate(first)
            ev.add_inplace(out, first)
            return out
        ev.multiply_plain_inplace(second, self._monomial(self.context.params.poly_modulus_degree // 2,
                                                          second.parms_id()))
        plus, minus = seal.Ciphertext(), seal.Ciphertext()
        ev.add(first, second, plus)
        ev.sub(first, second, minus)
        ev.add_inplace(plus, self._conjugate(minus))
        return plus

    def _sum_slots(self, ct: seal.Ciphertext) -> seal.Ciphertext:
        """From slots ``a_k + i s_k b_k`` to every slot ``A + i s_k B`` (``A = sum a``, ``B = sum b``), which is
        the polynomial ``A + B X^(N/2)``: rotate-and-sum within each parity (steps 2, 4, ..., N/4), then add
        the conjugate of the other parity (rotation by 1, whose sign ``s`` is opposite)."""
        ev = self.context.evaluator
        step = 2
        while step < self.context.params.poly_modulus_degree // 2:
            rotated = seal.Ciphertext()
            ev.rotate_vector(ct, step, self.galois, rotated)
            ev.add_inplace(ct, rotated)
            step <<= 1
        neighbour = seal.Ciphertext()
        ev.rotate_vector(ct, 1, self.galois, neighbour)
        ev.add_inplace(ct, self._conjugate(neighbour))
        return ct


def gram_scale(codec: _Codec) -> float:
    """The scale of a packed Gram ciphertext: ``scale^2 / q1`` exactly as SEAL's rescale leaves it."""
    rescaled_by = codec.seal_context.first_context_data().parms().coeff_modulus()[-1].value()
    return (2.0 ** codec.params.scale_bits) ** 2 / rescaled_by


def gram_level(codec: _Codec) -> list[int]:
    """The level packed Gram ciphertexts live at: one below fresh ciphertexts (after the rescale)."""
    return codec.seal_context.first_context_data().next_context_data().parms_id()


def flood_grid(codec: _Codec, largest_square: float) -> float:
    """The flooding noise's standard deviation (and rounding grid) in units of the Gram entries, for a Gram
    matrix whose largest diagonal entry is ``largest_square``: ``2^FLOOD_BITS`` times the noise bound.

    Measured noise of a Gram entry: an absolute floor of ~1e-6 (key switching and rescaling, ``2^NOISE_BITS``
    at the coefficient level) plus ~2^-26 times ``sqrt(G_uu)`` (the encryption noise of the inputs carried
    through the product); the bound takes ``2^-RELATIVE_NOISE_BITS`` for the second.
    """
    bound = 2.0 ** NOISE_BITS / gram_scale(codec) + 2.0 ** -RELATIVE_NOISE_BITS * math.sqrt(max(largest_square, 0.0))
    return 2.0 ** FLOOD_BITS * bound


def coefficients(slots: np.ndarray, degree: int) -> np.ndarray:
    """The real coefficients of the polynomial whose decoded CKKS slots are ``slots`` (inverse embedding).

    Slot ``k`` is the polynomial at ``zeta^(3^k)`` and its conjugate at ``zeta^(-3^k)`` (``zeta = e^(i pi/N)``);
    together they are its values at every odd power ``zeta^(2r+1)``, which is a DFT of ``c_j zeta^j``.
    """
    m = 2 * degree
    t = np.array([pow(3, k, m) for k in range(degree // 2)], dtype=np.int64)
    values = np.zeros(degree, dtype=complex)
    values[(t - 1) // 2] = slots
    values[(m - t - 1) // 2] = np.conj(slots)
    return (np.fft.fft(values) / degree * np.exp(-1j * np.pi * np.arange(degree) / degree)).real


def load_gram(codec: _Codec, data: bytes, n: int, key_id: bytes) -> list[seal.Ciphertext]:
    """The packed Gram ciphertexts of ``n`` updates in ``data`` (``GramEvaluator.gram``'s framing), at the Gram
    level and scale under ``key_id``; anything else is refused, so a decryptor never decrypts what is not shaped
    like a Gram payload."""
    entries = len(pairs(n))

    def check(size: int, count: int) -> None:
        if size != n or count != -(-entries // codec.params.poly_modulus_degree):
            raise InvalidCiphertext(f"a Gram payload for {n} updates must hold {entries} entries, got size {size} in "
                                    f"{count} ciphertexts")

    blobs = codec.unframe(data, key_id, check)
    return codec.load(blobs, gram_level(codec), gram_scale(codec), "packed Gram")


def packed_values(codec: _Codec, plains: Sequence[seal.Plaintext]) -> np.ndarray:
    """Every coefficient of decrypted packed plaintexts in entry order: twice the Gram scalars of ``pairs(n)``
    first (coefficients ``j`` and ``j + N/2`` hold entries ``2j`` and ``2j + 1``, ``GramEvaluator.gram``), then
    the positions no entry uses, which hold noise alone."""
    degree = codec.params.poly_modulus_degree
    half = degree // 2
    values = []
    for plain in plains:
        coeffs = coefficients(np.asarray(codec.encoder.decode_complex(plain)), degree)
        values.append(np.stack([coeffs[:half], coeffs[half:]], axis=1).reshape(-1))
    return np.concatenate(values)


def unpack_scalars(codec: _Codec, plains: Sequence[seal.Plaintext], n: int) -> np.ndarray:
    """The ``n (n + 1) / 2`` raw Gram scalars ``<x_u, x_v>`` (``pairs(n)`` order) of decrypted packed plaintexts."""
    return packed_values(codec, plains)[: len(pairs(n))] / 2.0


def decrypt_gram(secret: SecretContext, data: bytes, n: int) -> np.ndarray:
    """A key holder's answer: the ``n (n + 1) / 2`` Gram scalars ``<x_u, x_v>`` in ``pairs(n)`` order,
    flooded and rounded (module docstring); refuses anything but packed Gram ciphertexts of ``n`` updates."""
    plains = []
    for ct in load_gram(secret, data, n, secret.key_id):
        plain = seal.Plaintext()
        secret.decryptor.decrypt(ct, plain)
        plains.append(plain)
    raw = unpack_scalars(secret, plains, n)
    entries = raw.size
    grid = flood_grid(secret, float(np.abs(np.diag(to_matrix(raw, n))).max()))
    seed = hmac.new(secret.secret_bytes(), b"fedprompt-gram-flood\0" + hashlib.sha256(data).digest(),
                    hashlib.sha256).digest()
    rng = np.random.default_rng(int.from_bytes(seed, "big"))
    return np.round((raw + rng.normal(0.0, grid, entries)) / grid) * grid


def agreement_tolerance(codec: _Codec, scalars: np.ndarray, n: int) -> float:
    """How far two honest decryptors' answers may differ.

    Both apply the same deterministic function (SEAL decryption, an FFT, flooding seeded by the shared secret
    key and the ciphertext, rounding to the flooding grid) to the same ciphertext, so on one platform they
    agree exactly.  Across platforms the FFT may differ in the last bits (relative ~1e-15), which can move
    the grid (derived from the largest diagonal entry) by as much and push a value across a rounding
    boundary: one grid step, doubled for the two grids, plus 1e-9 of the largest entry.  A lie smaller than
    that is smaller than the flooding noise already in every entry (~1e-9 of the demo's entries, see
    ``flood_grid``) and cannot move a decision that the CKKS noise itself would not.
    """
    grid = flood_grid(codec, float(np.abs(np.diag(to_matrix(scalars, n))).max()))
    return 2.0 * grid + 1e-9 * float(np.abs(scalars).max(initial=0.0))


def to_matrix(scalars: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """The symmetric ``n x n`` matrix of scalars given in ``pairs(n)`` order."""
    values = np.asarray(scalars, dtype=np.float64)
    if values.shape != (len(pairs(n)),) or not np.isfinite(values).all():
        raise InvalidValue(f"a Gram answer for {n} updates must be {len(pairs(n))} finite numbers")
    g = np.zeros((n, n))
    for value, (u, v) in zip(values, pairs(n), strict=True):
        g[u, v] = g[v, u] = value
    return g


def add_weight(context: PublicContext, total: list[seal.Ciphertext], vector_size: int, weight: float) -> None:
    """Add the plaintext total weight into the weight slot of an encrypted sum (Gram-defence jobs encrypt 0
    there: the weights are the upload headers' example counts, the same ones plaintext FedAvg uses)."""
    per = context.params.reals_per_ciphertext
    index, offset = divmod(vector_size, per)
    reals = np.zeros(per)
    reals[offset] = weight
    plain = seal.Plaintext()
    context.encoder.encode((reals[0::2] + 1j * reals[1::2]).tolist(), total[index].parms_id(),
                           total[index].scale, plain)
    context.evaluator.add_plain_inplace(total[index], plain)

