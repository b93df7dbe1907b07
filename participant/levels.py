"""A participant's prompt levels (PLMM; formats in ``fedprompt.wire.levels``): what it sends, what it rebuilds,
and the personal prompt it keeps.

The exchanged vector is ``global | expert`` (``PromptClassifier.level_sizes``); each update and each
download is a level container with one part per shared level, plain float32 or, in encrypted jobs, each
part encrypted separately as ``weight * part`` with its own weight slot, so the coordinator can sum the
global parts over everyone and the expert parts per cohort.  The **personal** level is trained with the
others but is never part of any payload: it lives in the model and, with a state directory, in
``personal/<job_id>.npy`` so a restarted daemon continues with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedprompt.crypto.ckks import ENCODING as CKKS
from fedprompt.crypto.ckks import SecretContext
from fedprompt.errors import InvalidUpdate
from fedprompt.participant.learner import Learner
from fedprompt.protocol import Payload
from fedprompt.wire.levels import encoding, pack, shared_levels, shared_parts
from fedprompt.wire.payload import FLOAT32, decode_vector, encode_vector


class SiteLevels:
    """Level-aware encoding and decoding of one site's payloads, and its personal prompt's persistence."""

    def __init__(self, learner: Learner, expert_tokens: int, encrypted: bool, job_id: str,
                 state_dir: Path | None) -> None:
        from fedprompt.participant.train import local_model  # torch: only levelled (gradient) jobs get here

        model = local_model(learner, "levels.enabled")
        self.model = model
        self.sizes = model.level_sizes()
        self.names = shared_levels(expert_tokens)
        if tuple(self.sizes) != self.names:
            raise InvalidUpdate(f"model levels {list(self.sizes)} differ from the job's {list(self.names)}")
        self.encoding = encoding(CKKS if encrypted else FLOAT32)
        self.job_id = job_id
        self.personal_file = state_dir / "personal" / f"{job_id}.npy" if state_dir is not None else None
        if self.personal_file is not None and self.personal_file.exists():
            model.set_personal_vector(np.load(self.personal_file))

    def _split(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        out, offset = {}, 0
        for name, size in self.sizes.items():
            out[name] = vector[offset : offset + size]
            offset += size
        return out

    def payload(self, round_: int, vector: np.ndarray, weight: int, secret: SecretContext | None) -> Payload:
        """The shared levels of ``vector`` as one container: float32 parts, or each part's encryption of
        ``weight * part`` with ``weight``."""
        if secret is None:
            parts = {name: (len(v), encode_vector(v)) for name, v in self._split(vector).items()}
        else:
            parts = {name: (len(v), secret.encrypt(np.asarray(v, dtype=np.float64) * weight, weight))
                     for name, v in self._split(vector).items()}
        return Payload(self.job_id, round_, self.encoding, sum(self.sizes.values()), pack(parts),
                       num_examples=weight if round_ else 0)

    def decode(self, payload: Payload) -> np.ndarray:
        """A plaintext version as this member sees it (global part and its cohort's expert part)."""
        parts = shared_parts(payload.data, self.names, self.sizes)
        return np.concatenate([decode_vector(Payload(payload.job_id, payload.round, FLOAT32, size, data), size)
                               for size, data in parts.values()])

    def decrypt(self, payload: Payload, secret: SecretContext, previous: np.ndarray | None) -> np.ndarray:
        """Encrypted version ``v`` from version ``v - 1`` (``previous``; None for the initial prompt): each level
        adds its decrypted ``sum / weight``; an empty expert part means the cohort's prompt is unchanged."""
        parts = shared_parts(payload.data, self.names, self.sizes)
        befores = list(self._split(previous).values()) if previous is not None else [None] * len(parts)
        levels = []
        for (name, (size, data)), before in zip(parts.items(), befores, strict=True):
            if not data:
                if before is None:
                    raise InvalidUpdate(f"the initial prompt lacks its {name} level")
                levels.append(before)
                continue
            total, weight = secret.decrypt(data, size)
            levels.append(total / weight if before is None else before + total / weight)
        return np.concatenate(levels)

    def keep_personal(self) -> None:
        """Save the personal prompt locally after training (never sent anywhere)."""
        if self.personal_file is not None:
            self.personal_file.parent.mkdir(parents=True, exist_ok=True)
            np.save(self.personal_file, self.model.personal_vector())
