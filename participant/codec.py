"""A participant's payload codec: how its vectors leave the site and how it reads global versions back.

One codec is chosen when a site joins a job (``job_codec``), so the rest of the participant never asks
which kind of job it is in.  Two layers:

* a **part codec** carries one vector, a whole prompt or one level of it: ``PlainPart`` as float32 (a
  served version is the whole vector), ``EncryptedPart`` as the CKKS encryption of ``weight * vector`` with
  ``weight`` in the slot after it (a served version is the encrypted aggregate of one round, so versions
  are rebuilt here: ``prompt_v = prompt_{v-1} + sum_v / weight_v``).  With a Gram defence a round update
  encrypts 0 in the weight slot, since the coordinator adds the accepted weights itself
  (``coordinator.hegram``); the initial prompt still encrypts its weight 1.
  ``ThresholdPart`` carries a threshold job's seeded uploads and combines its members' decryption shares; its
  weight is the site's example count in units of ``he.weight_unit`` (``JobConfig.summand_weight``).
* a **payload codec** frames the parts: ``VectorCodec`` sends the whole vector as one part,
  ``LevelledCodec`` one part per shared level in a level container (``fedprompt.wire.levels``); in an
  encrypted levelled version an empty part means that level did not change.

Every rebuilt encrypted version is rounded to float32 (what a plaintext job stores) before the next one is
added to it, so the global is the same bits at every site whatever versions it rebuilt in one go (e.g.
after a restart), and is handed to ``keep`` (the coordinator never holds it in the clear).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import structlog

from fedprompt.crypto.audit import Verdict, check
from fedprompt.crypto.ckks import ENCODING as CKKS
from fedprompt.crypto.ckks import SecretContext
from fedprompt.crypto.sealing import open_for_group, seal_for_group
from fedprompt.errors import InvalidUpdate
from fedprompt.participant.keys import KeyHolder
from fedprompt.participant.threshold_gramkeys import GramKeys
from fedprompt.participant.threshold_keys import ThresholdKeys
from fedprompt.protocol import Payload
from fedprompt.wire.levels import COHORTS_PART, EXPERT, GLOBAL, encoding, pack, shared_parts, unpack
from fedprompt.wire.payload import FLOAT32, decode_vector, encode_vector
from fedprompt.wire.threshold import ENCODING as THRESHOLD
from fedprompt.wire.threshold_gram import pack_upload

#: Fetches global version ``v`` as the coordinator serves it to this site.
Download = Callable[[int], Payload]
#: Receives each global version rebuilt here from encrypted aggregates.
Keep = Callable[[int, np.ndarray], None]
#: The FedAvg weight of an update of n examples in an encrypted sum, capped or not (``JobConfig.summand_weight``).
Weigh = Callable[[int, bool], float]

log = structlog.get_logger("participant.codec")


class PartCodec(ABC):
    """How one vector travels: its encoding, and how a served version of it becomes the vector."""

    encoding: str
    #: True when a served version holds the change since the version before it, not the whole vector.
    cumulative: bool

    @abstractmethod
    def encode(self, round_: int, vector: np.ndarray, weight: int, attempt: int = 0) -> bytes:
        """The bytes that carry ``vector`` from a site with ``weight`` (round 0: the initial prompt) for round
        attempt ``attempt`` (threshold jobs seed their uploads with it)."""

    @abstractmethod
    def decode(self, payload: Payload, size: int, previous: np.ndarray | None) -> np.ndarray:
        """Version ``v`` of the vector from what is served for it and version ``v - 1`` (None for version 0)."""

    def check(self, data: bytes, size: int, masked: bool) -> Verdict:
        """A key holder's verdict on an encrypted aggregate or masked update (``fedprompt.crypto.audit``)."""
        raise InvalidUpdate(f"{self.encoding} vectors are not checked by key holders")


class PlainPart(PartCodec):
    """Float32 vectors: the weight travels in the payload header, and each version is served whole."""

    encoding = FLOAT32
    cumulative = False

    def encode(self, round_: int, vector: np.ndarray, weight: int, attempt: int = 0) -> bytes:
        return encode_vector(vector)

    def decode(self, payload: Payload, size: int, previous: np.ndarray | None) -> np.ndarray:
        return decode_vector(payload, size)


class EncryptedPart(PartCodec):
    """CKKS vectors under the job's secret context (``secret`` fetches it: it may arrive after joining)."""

    encoding = CKKS
    cumulative = True

    def __init__(self, secret: Callable[[], SecretContext], gram_defence: bool) -> None:
        self.secret = secret
        self.gram_defence = gram_defence

    def encode(self, round_: int, vector: np.ndarray, weight: int, attempt: int = 0) -> bytes:
        slot = 0 if round_ and self.gram_defence else weight  # Gram defence: the coordinator adds the weights
        return self.secret().encrypt(np.asarray(vector, dtype=np.float64) * weight, slot)

    def decode(self, payload: Payload, size: int, previous: np.ndarray | None) -> np.ndarray:
        total, weight = self.secret().decrypt(payload.data, size)
        return total / weight if previous is None else previous.astype(np.float64) + total / weight

    def check(self, data: bytes, size: int, masked: bool) -> Verdict:
        return check(self.secret(), data, size, masked)


class ThresholdPart(PartCodec):
    """Threshold-CKKS vectors (``participant.threshold_keys``): a round's update is this member's seeded upload
    of ``w * vector`` and ``w`` for the task's attempt, ``w = weigh(weight)`` the example count in units of
    ``he.weight_unit`` (the threshold parameters' summands are small); a served version is one compressed
    polynomial per chunk, the aggregate plus t decryption shares masked under the members' group key, unmasked
    here.  The initial prompt is sealed under the members' group key (AES-GCM), which the coordinator never
    holds, so no decryption share is spent on it."""

    encoding = THRESHOLD
    cumulative = True

    def __init__(self, keys: Callable[[], ThresholdKeys], weigh: Weigh) -> None:
        self.keys = keys
        self.weigh = weigh

    def _summand(self, weight: int) -> float:
        summand, uncapped = self.weigh(weight, True), self.weigh(weight, False)
        if summand < uncapped:
            log.warning("update weight capped at the threshold parameters' summand bound; raise he.weight_unit so "
                        "every site's count fits", job_id=self.keys().job_id, examples=weight, weight=uncapped,
                        capped_to=summand)
        return summand

    def encode(self, round_: int, vector: np.ndarray, weight: int, attempt: int = 0) -> bytes:
        keys = self.keys()
        if round_ == 0:
            return seal_for_group(encode_vector(vector), keys.group, keys.job_id, "initial")
        summand = self._summand(weight)
        return keys.encrypt(np.asarray(vector, dtype=np.float64) * summand, summand, round_, attempt)

    def decode(self, payload: Payload, size: int, previous: np.ndarray | None) -> np.ndarray:
        keys = self.keys()
        if previous is None:
            opened = open_for_group(payload.data, keys.group, keys.job_id, "initial")
            return decode_vector(Payload(payload.job_id, 0, FLOAT32, size, opened), size)
        total, weight = keys.open_version(payload.data, size)
        return previous.astype(np.float64) + total / weight


class GramThresholdPart(ThresholdPart):
    """A Gram-defended threshold job's vectors (``participant.threshold_gramkeys``): a round's update is the
    public-key encryption of ``w * vector`` under the collective key with this member's attestation of it
    (``fedprompt.wire.threshold_gram``), its weight slot 0 (the coordinator adds the accepted weights); a served
    version is the accepted sum's download.  ``w * vector`` is scaled down to ``norm_bound``
    (``he.gram_norm_bound``, the public bound the Gram decryptions' flooding is sized on) when it exceeds it."""

    def __init__(self, keys: Callable[[], ThresholdKeys], weigh: Weigh, gram: Callable[[], GramKeys],
                 norm_bound: float) -> None:
        super().__init__(keys, weigh)
        self.gram, self.norm_bound = gram, norm_bound

    def encode(self, round_: int, vector: np.ndarray, weight: int, attempt: int = 0) -> bytes:
        if round_ == 0:
            return super().encode(round_, vector, weight, attempt)
        summand = np.asarray(vector, dtype=np.float64) * self._summand(weight)
        norm = float(np.linalg.norm(summand))
        if norm > self.norm_bound:
            log.warning("weighted update scaled down to he.gram_norm_bound", job_id=self.keys().job_id,
                        norm=round(norm, 3), bound=self.norm_bound)
            summand *= self.norm_bound / norm * (1 - 1e-9)
        return pack_upload(*self.gram().encrypt(summand, round_, attempt, self.norm_bound))

    def decode(self, payload: Payload, size: int, previous: np.ndarray | None) -> np.ndarray:
        if previous is None:
            return super().decode(payload, size, previous)
        total, weight = self.gram().open_version(payload.data, size)
        return previous.astype(np.float64) + total / weight


class PayloadCodec(ABC):
    """One job's payloads at one site: updates and the initial prompt out, global versions in.

    Keeps the newest global version it was asked for, so an encrypted job adds only the rounds after it.
    """

    def __init__(self, part: PartCodec, job_id: str, size: int, download: Download, keep: Keep) -> None:
        self.part = part
        self.job_id = job_id
        self.size = size
        self.download = download
        self.keep = keep
        self._globals: dict[int, np.ndarray] = {}

    @property
    @abstractmethod
    def encoding(self) -> str:
        """The payload encoding on the wire."""

    @abstractmethod
    def _data(self, round_: int, vector: np.ndarray, weight: int, attempt: int) -> bytes:
        """A payload's data for ``vector``."""

    @abstractmethod
    def _version(self, payload: Payload, previous: np.ndarray | None) -> np.ndarray:
        """Version ``v`` from its served payload and version ``v - 1`` (None for version 0 or a plain job)."""

    @abstractmethod
    def check(self, data: bytes, masked: bool) -> Verdict:
        """A key holder's verdict on one part of a check bundle: the candidate aggregate as the coordinator
        would store it, or one masked update (``coordinator.checks``)."""

    def initial(self, vector: np.ndarray) -> Payload:
        """The initial prompt (version 0), with weight 1 and no example count."""
        return self.encode_update(0, vector, 1)

    def encode_update(self, round_: int, vector: np.ndarray, weight: int, attempt: int = 0) -> Payload:
        """A round's update: the plain vector, or the encryption of ``weight * vector`` (and the weight slot)."""
        return Payload(self.job_id, round_, self.encoding, self.size, self._data(round_, vector, weight, attempt),
                       num_examples=weight if round_ else 0)

    def global_vector(self, version: int) -> np.ndarray:
        """Global ``version`` as this site knows it: downloaded, or rebuilt from encrypted aggregates."""
        if version not in self._globals:
            self._globals = {version: self._rebuild(version)}
        return self._globals[version]

    def _rebuild(self, version: int) -> np.ndarray:
        if not self.part.cumulative:  # a plain version is the whole vector
            return self._version(self.download(version), None)
        known = [v for v in self._globals if v <= version]
        current, vector = (known[0], self._globals[known[0]]) if known else (-1, np.zeros(self.size, np.float32))
        while current < version:
            current += 1
            vector = self._version(self.download(current), vector if current else None).astype(np.float32)
            self.keep(current, vector)
        return vector


class VectorCodec(PayloadCodec):
    """The whole exchanged vector as one part."""

    @property
    def encoding(self) -> str:
        return self.part.encoding

    def _data(self, round_: int, vector: np.ndarray, weight: int, attempt: int) -> bytes:
        return self.part.encode(round_, vector, weight, attempt)

    def _version(self, payload: Payload, previous: np.ndarray | None) -> np.ndarray:
        return self.part.decode(payload, self.size, previous)

    def check(self, data: bytes, masked: bool) -> Verdict:
        return self.part.check(data, self.size, masked)


class LevelledCodec(PayloadCodec):
    """The shared levels (``sizes``: name -> parameters, in vector order) as one level container, each level
    carried by the part codec; the personal level is never part of the vector."""

    def __init__(self, part: PartCodec, job_id: str, sizes: dict[str, int], download: Download, keep: Keep) -> None:
        super().__init__(part, job_id, sum(sizes.values()), download, keep)
        self.sizes = sizes
        self.names = tuple(sizes)

    @property
    def encoding(self) -> str:
        return encoding(self.part.encoding)

    def _split(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        out, offset = {}, 0
        for name, size in self.sizes.items():
            out[name] = vector[offset : offset + size]
            offset += size
        return out

    def _data(self, round_: int, vector: np.ndarray, weight: int, attempt: int) -> bytes:
        return pack({name: (len(v), self.part.encode(round_, v, weight, attempt)) for name, v in self._split(vector).items()})

    def _version(self, payload: Payload, previous: np.ndarray | None) -> np.ndarray:
        """Each level decoded on its own (global part and this member's cohort's expert part); in a cumulative
        version an empty part means the level is unchanged."""
        parts = shared_parts(payload.data, self.names, self.sizes)
        befores = list(self._split(previous).values()) if previous is not None else [None] * len(parts)
        levels = []
        for (name, (size, data)), before in zip(parts.items(), befores, strict=True):
            if not data and self.part.cumulative:
                if before is None:
                    raise InvalidUpdate(f"the initial prompt lacks its {name} level")
                levels.append(before)
                continue
            part = Payload(payload.job_id, payload.round, self.part.encoding, size, data)
            levels.append(self.part.decode(part, size, before))
        return np.concatenate(levels)

    def check(self, data: bytes, masked: bool) -> Verdict:
        """Every encrypted level of the container: an update's shared levels, or a candidate version's global
        part and every cohort's expert sum (an empty one is an unchanged cohort; the cohorts list is plain).
        Usable only if every level is; the weight is the global level's."""
        verdicts = {}
        for name, (size, part) in unpack(data).items():
            if name == COHORTS_PART or not part:
                continue
            level = GLOBAL if name == GLOBAL else EXPERT if name.split(":", 1)[0] == EXPERT else ""
            if level not in self.sizes or size != self.sizes[level]:
                raise InvalidUpdate(f"a checked container part {name[:40]!r} of {size} parameters is not a level "
                                    "of this job")
            verdicts[name] = self.part.check(part, size, masked)
        if GLOBAL not in verdicts:
            raise InvalidUpdate("a checked container lacks its global level")
        valid = all(v.valid for v in verdicts.values())
        return Verdict(valid, verdicts[GLOBAL].weight if valid else 0.0)


def job_codec(gram_defence: bool, job_id: str, vector_size: int, keys: KeyHolder | None,
              level_sizes: dict[str, int] | None, download: Download, keep: Keep,
              threshold: tuple[Callable[[], ThresholdKeys], Weigh] | None = None,
              gram: tuple[Callable[[], GramKeys], float] | None = None) -> PayloadCodec:
    """The codec of a job: threshold parts when the job shares its key among its members (``threshold``: what
    fetches this member's keys, and the job's ``Weigh``), encrypted parts when the site holds (or awaits) a key, plain otherwise;
    levelled when the job exchanges prompt levels (``level_sizes``), the whole vector otherwise.  Under a Gram
    defence (``JobDescription.gram_defence``) an encrypted update carries 0 in its weight slot; a threshold job's
    (``gram``: what fetches this member's Gram keys, and ``he.gram_norm_bound``) is an attested public-key upload."""
    part: PartCodec = (GramThresholdPart(*threshold, *gram) if threshold is not None and gram is not None
                       else ThresholdPart(*threshold) if threshold is not None
                       else EncryptedPart(keys.require, gram_defence) if keys is not None else PlainPart())
    if level_sizes is not None:
        return LevelledCodec(part, job_id, level_sizes, download, keep)
    return VectorCodec(part, job_id, vector_size, download, keep)
