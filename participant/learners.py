"""A participant's learner built in-process on a backbone it already holds: for simulations, benchmarks and
``fedprompt predict``.  The daemon builds its learners in ``fedprompt.participant.daemon`` instead (a black-box
daemon reaches its model service over gRPC)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedprompt.config import JobConfig, ModelServiceSection
from fedprompt.participant.learner import Learner

if TYPE_CHECKING:  # torch: only the gradient branch below loads it
    from fedprompt.models.backbone import Backbone
    from fedprompt.participant.train import Trainer


def local_learner(config: JobConfig, backbone: Backbone, trainer: Trainer | None = None) -> Learner:
    """A participant's learner on a shared in-process backbone; black-box learners query a ``ModelHost`` (the
    model service's domain object, serving the backbone's exported graph), exactly as they would over gRPC.
    ``trainer`` replaces local gradient training (default ``train_local``)."""
    if config.blackbox.enabled:
        from fedprompt.participant.blackbox import BlackboxLearner
        from fedprompt.participant.model_service import ModelHost

        host = ModelHost.load(ModelServiceSection(model=config.model.path, kind=config.model.kind,
                                                  max_batch=max(64, config.blackbox.batch_size),
                                                  max_prompt_tokens=config.model.prompt_length,
                                                  max_length=config.model.max_length))
        return BlackboxLearner(config, host)
    from fedprompt.models import build_model
    from fedprompt.participant.train import GradientLearner, train_local

    return GradientLearner(build_model(config, backbone), config.train, trainer or train_local)
