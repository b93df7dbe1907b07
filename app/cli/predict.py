"""``fedprompt predict``: classify texts with an exported prompt."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedprompt.app.cli.common import group_parser

if TYPE_CHECKING:
    from fedprompt.app.cli.common import Subparsers


def cmd_predict(args: argparse.Namespace) -> int:
    from fedprompt.app.admin_client import load_prompt
    from fedprompt.config import JobConfig, parse_toml
    from fedprompt.models import build_classifier, load_backbone

    vector, config_toml = load_prompt(Path(args.prompt))
    config = parse_toml(config_toml, JobConfig, str(args.prompt))
    texts = args.text or [line.strip() for line in sys.stdin if line.strip()]
    if config.blackbox.enabled:  # the export is a search state: score p0 + A z on a local model host
        from fedprompt.participant.learners import local_learner

        learner = local_learner(config, load_backbone(config.model.path, config.model.kind))
        probabilities = learner.predict_proba(vector, texts)
    else:
        model = build_classifier(config)
        model.set_vector(vector)
        probabilities = model.predict_proba(texts)
    for text, probs in zip(texts, probabilities, strict=True):
        best = int(probs.argmax())
        print(json.dumps({"text": text, "label": config.task.label_names[best], "confidence": round(float(probs[best]), 4)}))
    return 0


def register(sub: Subparsers) -> None:
    """``predict``."""
    predict = group_parser(sub, "predict", "classify texts with an exported prompt",
                           'fedprompt predict --prompt prompt.safetensors "A moving, beautifully shot film."')
    predict.add_argument("--prompt", required=True, help="file written by `fedprompt admin export`")
    predict.add_argument("text", nargs="*", help="texts to classify (default: one per line on stdin)")
    predict.set_defaults(fn=cmd_predict)
