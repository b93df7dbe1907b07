"""``fedprompt model``: serve a query-only model service, export its scoring graph ahead of time."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fedprompt.app.cli.common import add_command, serve_until_signalled, server_settings

if TYPE_CHECKING:
    from fedprompt.app.cli.common import Subparsers


def cmd_model_serve(args: argparse.Namespace) -> int:
    from fedprompt.config import ModelServiceConfig
    from fedprompt.participant.model_server import ModelServer
    from fedprompt.participant.model_service import ModelHost

    settings = server_settings(args, ModelServiceConfig, "model_service",
                               ("listen", "model", "threads", "max_batch", "ca_cert", "cert", "key", "device", "dtype"))
    serve_until_signalled(ModelServer(settings, ModelHost.load(settings)), args.port_file)
    return 0


def cmd_model_export(args: argparse.Namespace) -> int:
    from fedprompt.participant.model_service import prepare_scorer

    print(prepare_scorer(args.model, args.kind))
    return 0


def register(sub: Subparsers) -> None:
    """``model serve`` and ``model export``."""
    model = add_command(sub, "model", "run a query-only model service",
                         "fedprompt model serve --model builtin:minilm --insecure --listen 127.0.0.1:50061"
                         ).add_subparsers(dest="sub", required=True)
    mserve = add_command(model, "serve", "host a frozen PLM that scores texts under a caller's soft prompt",
                         "fedprompt model serve --model builtin:minilm --listen 0.0.0.0:50061 --ca-cert ca/ca.crt "
                         "--cert gpu-1/model-gpu-1.crt --key gpu-1/model-gpu-1.key",
                         description="Serve a frozen PLM's scoring graph with ONNX Runtime (no torch in this "
                                          "process); the graph is exported once on first use, see `model export`.")
    mserve.add_argument("--config", help="model service TOML ([model_service] table)")
    mserve.add_argument("--model", help="backbone: builtin:minilm, builtin:smollm2 or a model directory")
    mserve.add_argument("--listen", help="host:port to bind (port 0 picks a free port)")
    mserve.add_argument("--threads", type=int, help="inference threads (default 1)")
    mserve.add_argument("--max-batch", dest="max_batch", type=int, help="most texts per query (default 64)")
    mserve.add_argument("--device", help="auto | cpu | cuda | cuda:N: onnxruntime's provider (default auto: CUDA "
                                         "where this onnxruntime has it); the exported graph is float32")
    mserve.add_argument("--dtype", help="auto | float32: the graph's precision (exported in float32 only)")
    mserve.add_argument("--ca-cert", dest="ca_cert", help="CA whose certificates callers must present (mTLS)")
    mserve.add_argument("--cert", help="this service's certificate (its SANs must name the address callers use)")
    mserve.add_argument("--key", help="this service's private key")
    mserve.add_argument("--insecure", action="store_true", help="no TLS, callers unverified: local development only")
    mserve.add_argument("--port-file", help="write the bound port to this file once listening")
    mserve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    mserve.set_defaults(fn=cmd_model_serve)
    mexport = add_command(model, "export", "export a backbone's scoring graph for `model serve` ahead of time",
                          "fedprompt model export --model builtin:smollm2",
                          description="Export the backbone's scoring graph to ONNX (checked against torch) "
                                           "into the cache ($FEDPROMPT_CACHE/scorers) and print its directory. "
                                           "`model serve` does this on first use; run it ahead to start fast.")
    mexport.add_argument("--model", default="builtin:minilm", help="backbone: builtin:minilm, builtin:smollm2 or a "
                                                                    "model directory (default builtin:minilm)")
    mexport.add_argument("--kind", default="auto", choices=["auto", "encoder", "causal"],
                         help="how labels are scored (default: detected from the model)")
    mexport.set_defaults(fn=cmd_model_export)
