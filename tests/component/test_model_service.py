"""The query-only model service on a real socket: it scores like the gradient path and refuses bad queries
with a status, staying usable afterwards."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from fedprompt.config import ModelServiceSection
from fedprompt.errors import ConfigError, InvalidUpdate, ResourceExhausted
from fedprompt.models import build_classifier, load_backbone
from fedprompt.models.classifier import SoftPrompt
from fedprompt.participant.model_client import ModelServiceClient
from fedprompt.participant.model_service import ModelHost
from fedprompt.protocol import ScoreQuery
from fedprompt.v1 import model_service_pb2_grpc
from fedprompt.wire import serde
from tests.support import REPO, LiveModelService, blackbox_job, toy_examples

MAX_BATCH = 6


@pytest.fixture(scope="module")
def service(tiny_encoder_dir: Path):
    with LiveModelService(tiny_encoder_dir, max_batch=MAX_BATCH, max_prompt_tokens=8, max_length=32) as live:
        yield live


def query(hidden: int, tokens: int = 4, n: int = 3, **changes: object) -> ScoreQuery:
    texts = tuple(e.text for e in toy_examples(n, 1))
    fields = {"texts": texts, "label_words": ("bad", "good"), "template": "{text}", "max_length": 16,
              "prompt_tokens": tokens, "prompt": np.full(tokens * hidden, 0.01, dtype=np.float32), "init_seed": 0,
              "labels": tuple(i % 2 for i in range(n)), **changes}
    return ScoreQuery(**fields)  # type: ignore[arg-type]


def test_scores_exactly_like_the_local_classifier_with_the_frozen_head(service, tiny_encoder_dir: Path) -> None:
    client = ModelServiceClient(service.target)
    info = client.describe()
    assert info.model == str(tiny_encoder_dir) and info.hidden_size == 32 and info.embedding_std > 0
    assert info.max_batch == MAX_BATCH
    q = query(info.hidden_size)
    result = client.score(q)
    assert result.logits.shape == (3, 2) and result.loss > 0
    config = blackbox_job(tiny_encoder_dir)
    local = build_classifier(config, load_backbone(str(tiny_encoder_dir)))
    assert isinstance(local.prompt, SoftPrompt)  # a job without prompt levels
    with torch.no_grad():
        local.prompt.embedding.weight.add_(torch.from_numpy(q.prompt.reshape(4, 32)))
        expected = local(**local.tokenize(list(q.texts))).numpy()
    np.testing.assert_allclose(result.logits, expected, rtol=1e-5, atol=1e-5)
    client.close()


def test_describe_is_answered_while_a_query_is_being_scored(tiny_encoder_dir: Path) -> None:
    """A forward pass runs off the event loop: while one caller's query is held mid-scoring, another caller's
    DescribeModel still gets its answer (within a 10 s deadline), and the held query then completes."""
    started, release = threading.Event(), threading.Event()
    with LiveModelService(tiny_encoder_dir, max_batch=MAX_BATCH, max_prompt_tokens=8, max_length=32) as live:
        host = live.server.host
        score = host.score

        def held(q: ScoreQuery):
            started.set()
            release.wait(60)
            return score(q)

        host.score = held
        scorer, asker = ModelServiceClient(live.target), ModelServiceClient(live.target, rpc_timeout_s=10.0,
                                                                            give_up_after_s=10.0)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(scorer.score, query(32))
            try:
                assert started.wait(30)
                assert asker.describe().hidden_size == 32
                assert not pending.done()
            finally:
                release.set()
            assert pending.result(60).logits.shape == (3, 2)
        scorer.close()
        asker.close()


@pytest.mark.parametrize("kind", ["encoder", "causal"])
def test_exported_graph_scores_like_the_torch_classifier(kind: str, tiny_encoder_dir: Path,
                                                         tiny_causal_dir: Path) -> None:
    """The service's ONNX graph and local training's ``PromptClassifier`` agree under a template, a seeded
    initial prompt and an offset, for both scoring kinds, also when the service splits a query into forward
    passes of ``forward_batch`` texts (here 2 + 1, padded apart, batched by length: the shortest text comes
    last and the longest first, so every row moves)."""
    model_dir = tiny_encoder_dir if kind == "encoder" else tiny_causal_dir
    host = ModelHost.load(ModelServiceSection(model=str(model_dir), max_prompt_tokens=8, max_length=32,
                                              forward_batch=2))
    q = query(32, labels=(0, 1, 0), template="Review: {text}", init_seed=3, max_length=12,
              texts=("a long and rather winding review of a film", "a fine film", "ok"),
              prompt=np.random.default_rng(0).normal(0, 0.05, 4 * 32).astype(np.float32))
    result = host.score(q)
    base = blackbox_job(model_dir)
    config = dataclasses.replace(base, job=dataclasses.replace(base.job, seed=3),
                                 task=dataclasses.replace(base.task, template="Review: {text}"),
                                 model=dataclasses.replace(base.model, max_length=12))
    local = build_classifier(config, load_backbone(str(model_dir)))
    assert isinstance(local.prompt, SoftPrompt)  # a job without prompt levels
    with torch.no_grad():
        local.prompt.embedding.weight.add_(torch.from_numpy(q.prompt.reshape(4, 32)))
        expected = local(**local.tokenize(list(q.texts)))
        loss = float(torch.nn.functional.cross_entropy(expected, torch.tensor(q.labels)))
    np.testing.assert_allclose(result.logits, expected.numpy(), rtol=1e-4, atol=1e-4)
    assert result.loss == pytest.approx(loss, rel=1e-4)


# The model service's process: load the host (the export runs in a child), score, report imports and memory.
SERVICE = """
import json, sys
import numpy as np
from fedprompt.config import ModelServiceSection
from fedprompt.protocol import ScoreQuery
from fedprompt.participant.model_service import ModelHost
from fedprompt.participant.learner import peak_rss_mb
host = ModelHost.load(ModelServiceSection(model=sys.argv[1]))
host.score(ScoreQuery(texts=("a fine film",), label_words=("bad", "good"), template="{text}", max_length=16,
                      prompt_tokens=2, prompt=np.zeros(64, dtype=np.float32), init_seed=0, labels=(1,)))
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "safetensors", "accelerate"})
print(json.dumps({"heavy": heavy, "peak_rss_mb": peak_rss_mb()}))
"""


def test_the_model_service_process_never_loads_torch(tiny_encoder_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SERVICE, str(tiny_encoder_dir)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["peak_rss_mb"] < 250, "torch alone would take ~250 MB"


def test_an_export_that_is_not_a_model_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="cannot export"):
        ModelHost.load(ModelServiceSection(model=str(tmp_path)))


@pytest.mark.parametrize(("changes", "code"), [
    ({"prompt": np.zeros(4 * 32 - 1, dtype=np.float32)}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"prompt": np.full(4 * 32, np.nan, dtype=np.float32)}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"prompt": np.full(4 * 32, np.inf, dtype=np.float32)}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"texts": tuple(f"text {i}" for i in range(MAX_BATCH + 1)), "labels": ()}, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ({"texts": (), "labels": ()}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"labels": (0, 1, 2)}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"label_words": ("only",)}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"template": "no placeholder"}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"template": "{text} {other}"}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"prompt_tokens": 9, "prompt": np.zeros(9 * 32, dtype=np.float32)}, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ({"max_length": 64}, grpc.StatusCode.RESOURCE_EXHAUSTED),
])
def test_refuses_malformed_queries_with_a_status(service, changes: dict, code: grpc.StatusCode) -> None:
    with grpc.insecure_channel(service.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Score(serde.score_query_to_pb(query(32, **changes)), timeout=30)
        assert caught.value.code() == code
        assert caught.value.details()
        ok = serde.score_result_from_pb(stub.Score(serde.score_query_to_pb(query(32)), timeout=30))
        assert ok.logits.shape == (3, 2), "the service stays usable after a refusal"


def test_client_raises_the_typed_error_for_each_status(service) -> None:
    client = ModelServiceClient(service.target)
    with pytest.raises(InvalidUpdate, match="NaN"):
        client.score(query(32, prompt=np.full(4 * 32, np.nan, dtype=np.float32)))
    with pytest.raises(ResourceExhausted, match="max_batch"):
        client.score(query(32, n=MAX_BATCH + 1, labels=()))
    client.close()


def test_model_service_speaks_mtls_and_refuses_callers_without_a_certificate(tmp_path: Path,
                                                                            tiny_encoder_dir: Path) -> None:
    """Callers send their institution's texts, so by default the service demands a certificate from its CA."""
    from fedprompt.errors import FedPromptError
    from tests.support import ThrowawayPki

    pki = ThrowawayPki(tmp_path)
    with LiveModelService(tiny_encoder_dir, pki=pki, max_batch=MAX_BATCH) as live:
        site = ModelServiceClient(live.target, tls=pki.tls("participant:site-a"))
        assert site.describe().hidden_size > 0 and site.score(query(site.describe().hidden_size)).logits.shape == (3, 2)
        site.close()
        anonymous = ModelServiceClient(live.target, give_up_after_s=0.5)
        with pytest.raises(FedPromptError):
            anonymous.describe()
        anonymous.close()
        stranger = ModelServiceClient(live.target, give_up_after_s=0.5, tls=ThrowawayPki(tmp_path / "other").tls(
            "participant:site-a"))
        with pytest.raises(FedPromptError):
            stranger.describe()
        stranger.close()
