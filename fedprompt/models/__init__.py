"""Frozen backbones and the soft-prompt classifier built on them."""

from __future__ import annotations

from fedprompt.config import JobConfig
from fedprompt.models.backbone import Backbone, load_backbone
from fedprompt.models.classifier import PromptClassifier
from fedprompt.wire.levels import EXPERT, GLOBAL, PERSONAL


def build_classifier(config: JobConfig, backbone: Backbone | None = None) -> PromptClassifier:
    """The job's classifier; pass ``backbone`` to share one loaded PLM between several participants."""
    bb = backbone or load_backbone(config.model.path, config.model.kind)
    levels = config.levels
    tokens = {GLOBAL: levels.global_tokens, EXPERT: levels.expert_tokens, PERSONAL: levels.personal_tokens}
    return PromptClassifier(bb, config.task.label_words, config.model.prompt_length, config.model.max_length,
                            config.task.template, seed=config.job.seed, train_head=config.model.train_head,
                            level_tokens=tokens if levels.enabled else None)


__all__ = ["Backbone", "PromptClassifier", "build_classifier", "load_backbone"]
