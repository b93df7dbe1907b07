"""A participant's prompt levels (PLMM; formats in ``fedprompt.wire.levels``): the shared levels' sizes, and
the personal prompt it keeps.

The exchanged vector is ``global | expert`` (``PromptClassifier.level_sizes``); how its levels travel is the
codec's business (``participant.codec.LevelledCodec``).  The **personal** level is trained with the others
but is never part of any payload: it lives in the model and, with a state directory, in
``personal/<job_id>.npy`` so a restarted daemon continues with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedprompt.errors import InvalidUpdate
from fedprompt.participant.learner import Learner
from fedprompt.protocol import checked_job_id
from fedprompt.wire.levels import shared_levels


class SiteLevels:
    """One site's levels: the sizes of the shared ones (checked against the job), and its personal prompt's
    persistence."""

    def __init__(self, learner: Learner, expert_tokens: int, job_id: str, state_dir: Path | None) -> None:
        from fedprompt.participant.train import local_model  # torch: only levelled (gradient) jobs get here

        model = local_model(learner, "levels.enabled")
        self.model = model
        self.sizes = model.level_sizes()
        names = shared_levels(expert_tokens)
        if tuple(self.sizes) != names:
            raise InvalidUpdate(f"model levels {list(self.sizes)} differ from the job's {list(names)}")
        self.personal_file = (state_dir / "personal" / f"{checked_job_id(job_id, 'personal prompt')}.npy"
                              if state_dir is not None else None)
        if self.personal_file is not None and self.personal_file.exists():
            model.set_personal_vector(np.load(self.personal_file))

    def keep_personal(self) -> None:
        """Save the personal prompt locally after training (never sent anywhere)."""
        if self.personal_file is not None:
            self.personal_file.parent.mkdir(parents=True, exist_ok=True)
            np.save(self.personal_file, self.model.personal_vector())
