"""Frozen backbones and the soft-prompt classifier built on them."""

from __future__ import annotations

from fedprompt.config import JobConfig
from fedprompt.models.backbone import Backbone, load_backbone
from fedprompt.models.classifier import AdaptedModel, PromptClassifier
from fedprompt.models.placement import CPU_FLOAT32, Placement, resolve_placement
from fedprompt.wire.levels import EXPERT, GLOBAL, PERSONAL


def build_classifier(config: JobConfig, backbone: Backbone | None = None,
                     placement: Placement = CPU_FLOAT32) -> PromptClassifier:
    """The job's classifier; pass ``backbone`` to share one loaded PLM between several participants, else one
    is loaded where ``placement`` says."""
    bb = backbone or load_backbone(config.model.path, config.model.kind, placement=placement)
    levels = config.levels
    tokens = {GLOBAL: levels.global_tokens, EXPERT: levels.expert_tokens, PERSONAL: levels.personal_tokens}
    return PromptClassifier(bb, config.task.label_words, config.model.prompt_length, config.model.max_length,
                            config.task.template, seed=config.job.seed, train_head=config.model.train_head,
                            level_tokens=tokens if levels.enabled else None, peft=config.peft)


def build_model(config: JobConfig, backbone: Backbone | None = None,
                placement: Placement = CPU_FLOAT32) -> AdaptedModel:
    """The job's trainable model: its classifier, or for ``task.kind = "generation"`` its generator."""
    if config.task.kind != "generation":
        return build_classifier(config, backbone, placement)
    from fedprompt.models.generator import PromptGenerator

    bb = backbone or load_backbone(config.model.path, config.model.kind, placement=placement)
    return PromptGenerator(bb, config.model.prompt_length, config.model.max_length, config.task.template,
                           seed=config.job.seed, peft=config.peft, max_new_tokens=config.task.max_new_tokens,
                           chat=config.task.chat)


__all__ = ["CPU_FLOAT32", "AdaptedModel", "Backbone", "Placement", "PromptClassifier", "build_classifier", "build_model", "load_backbone",
           "resolve_placement"]
