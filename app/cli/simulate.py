"""``fedprompt simulate``: run a job with many participants without sockets, in this process or on Ray."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fedprompt.app.cli.common import (
    add_command,
    add_placement_args,
    add_plan_args,
    add_track_flag,
    load_summary,
    parse_overrides,
    plan_overrides,
)
from fedprompt.app.engines import ENGINES

if TYPE_CHECKING:
    from fedprompt.app.cli.common import Subparsers


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedprompt.app.progress import RoundFeed
    from fedprompt.app.report import (
        attack_summary,
        majority_warning,
        plot_rounds,
        round_table,
        summary,
        write_json,
    )
    from fedprompt.app.simulate import load_simulation, parse_simulation, simulate
    from fedprompt.app.tracking import check_track, job_params, tracking
    from fedprompt.config import check_placement, dump_toml
    from fedprompt.errors import ConfigError
    from fedprompt.files import writable

    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    check_placement("", args.device, args.dtype)  # the spelling before loading torch; whether the GPU is there below
    for path, flag in ((args.report, "--report"), (args.export, "--export"), (args.plot, "--plot")):
        if path:
            writable(path, flag)  # before the run, not after it
    check_track(args.track)
    overrides = {**parse_overrides(args.set), **plan_overrides(args, "simulation."), **engine_overrides(args)}
    sim = load_simulation(args.config, overrides) if args.config else parse_simulation("", overrides=overrides)
    if args.address and sim.engine.engine != "ray":
        raise ConfigError("--address: names the Ray cluster of the ray engine; add --engine ray")
    if args.export and sim.job.levels.enabled:
        raise ConfigError("--export: with levels.enabled a site's prompt is its global, expert and personal "
                          "prompts together, so no single global prompt can be exported; turn levels off to export")
    import torch

    from fedprompt.models import resolve_placement

    resolve_placement(args.device, args.dtype, "")  # an absent GPU is refused before any work
    sites, read = sim.simulation.deal(sim.job.task.label_names, sim.job.task.kind)
    print(load_summary(sim.simulation.dataset, read))
    torch.set_num_threads(args.threads)
    with tracking(args.track, "simulate", job_params(dump_toml(sim.job))) as track:
        feed = RoundFeed(sim.job.job.rounds, len(sites), show=not args.no_progress, tracking=track)
        try:
            report = simulate(sim.job, sites, attack=sim.attack, on_round=feed.update,
                              export=Path(args.export) if args.export else None, engine=sim.engine,
                              placement=(args.device, args.dtype))
        except BaseException:
            feed.close()
            raise
        feed.finish(report["rounds"])
        print(round_table(report))
        print(summary(report))
        if warning := majority_warning(report):
            print(warning)
        if "attack" in report:
            print(attack_summary(report))
        if args.report:
            write_json(report, args.report)
        if args.plot:
            plot_rounds(report, args.plot, f"fedprompt simulate: {len(sites)} sites, {sim.simulation.dataset}")
        track.finish(report, [args.report, args.plot])
    if args.export:
        print(f"final prompt written to {args.export}; try it with: fedprompt predict --prompt {args.export} TEXT"
              if report.get("exported") else f"--export: no round finished, so nothing was written to {args.export}")
    return 0


def engine_overrides(args: argparse.Namespace) -> dict[str, str]:
    """``--engine`` and ``--address`` as the ``[simulation]`` keys they override."""
    flags = {"simulation.engine": args.engine, "simulation.ray.address": args.address}
    return {key: value for key, value in flags.items() if value is not None}


def register(sub: Subparsers) -> None:
    """``simulate``."""
    sim = add_command(sub, "simulate", "run a job with many participants in one process (no sockets)",
                      "fedprompt simulate --config examples/backdoor.toml --report reports/backdoor.json",
                      description="A simulation file is a job TOML plus optional [simulation] (data, sites, "
                                     "partition) and [attack] (attack simulator) tables; flags override them.")
    sim.add_argument("--config", help="simulation TOML, e.g. examples/backdoor.toml (default: built-in defaults)")
    sim.add_argument("--report", help="write the JSON report here")
    sim.add_argument("--plot", metavar="FILE.png", help="plot accuracy and loss by round here, as the demo does")
    sim.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a key, e.g. job.aggregator=\"multi_krum\" or attack.scale=1")
    sim.add_argument("--export", metavar="FILE.safetensors",
                     help="write the final global prompt here, as admin export does (for predict --prompt)")
    sim.add_argument("--threads", type=int, default=1, help="torch threads for this process (default 1)")
    sim.add_argument("--no-progress", action="store_true",
                     help="no progress bar over the rounds (the line each round prints stays)")
    add_track_flag(sim)
    add_placement_args(sim)
    sim.add_argument("--engine", choices=ENGINES,
                     help="where the sites run: inprocess (default) or ray (pip install 'fedprompt[ray]'; a local "
                          "Ray for the run, or --address); [simulation.ray] sizes its workers")
    sim.add_argument("--address", metavar="ADDR",
                     help="with --engine ray: an existing Ray cluster, e.g. auto or ray://head:10001")
    add_plan_args(sim)
    sim.set_defaults(fn=cmd_simulate)
