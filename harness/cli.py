"""The ``harness`` command: submit, resume, status, repair, train, ui, plots, bench, schema.

Bad input exits with status 2 and one line naming the YAML key and the rule; nothing is launched.
Only the project's own errors (:class:`harness.config.HarnessError`) are reported that way: any
other exception is a bug and keeps its traceback (exit status 1).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harness.config import HarnessError, SweepConfig, TrialConfig, flatten, load_sweep, load_trial

if TYPE_CHECKING:
    from harness.distributed import World

log = logging.getLogger("harness")

UI_QUIET = "ignore:starlette.middleware.wsgi is deprecated"
"""``PYTHONWARNINGS`` for ``harness ui``: the one library warning its start-up prints."""


def _setup_logging(verbose: bool) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "mlflow", "urllib3", "ray", "filelock", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def me() -> str:
    """How to type this command again: ``harness`` when that is on PATH and is this program,
    else the path it was started by (``.venv/bin/harness`` without the venv activated)."""
    argv0 = Path(sys.argv[0])
    found = shutil.which("harness")
    if argv0.name != "harness":
        return "harness"  # run as python -m or from a test: the usual name
    if found is not None and Path(found).resolve() == argv0.resolve():
        return "harness"
    try:
        return str(argv0.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(argv0)


def trial_table(sweep: SweepConfig, trials: list[TrialConfig],
                states: dict[str, str] | None = None, storage: Path | None = None) -> str:
    """Plain-text table: varying keys, params, sparsity, tokens, FLOPs, state (``pending`` unless
    the store has a run for the trial), how the trials to run share prefixes (the prefix
    checkpoints under ``storage``, :mod:`harness.prefix`); then the totals."""
    from harness.naming import human, run_name
    from harness.prefix import PrefixStore, describe, plan_sharing, summary_lines

    states = states or {}
    todo = [t for t in trials if states.get(t.hash) not in ("finished", "diverged")]
    plan = plan_sharing(todo, PrefixStore(storage) if storage else None, sweep.share_prefixes)
    prefix = describe(plan, todo, {t.hash: i for i, t in enumerate(trials)})
    axes = sweep.axes
    header = ["#", "name", *axes, "total", "active", "sparsity", "tokens", "FLOPs", "state",
              "prefix"]
    rows = []
    for i, t in enumerate(trials):
        flat = flatten(t.model_dump(mode="json"))
        pc = t.model.param_counts()
        rows.append([
            str(i), run_name(t, sweep), *(str(flat[a]) for a in axes), human(pc.total),
            human(pc.active), f"{t.model.sparsity:g}", human(t.train.tokens_trained),
            f"{t.total_flops:.3g}", states.get(t.hash, "pending"), prefix.get(t.hash, ""),
        ])
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), *(fmt.format(*r) for r in rows)]
    total = sum(t.total_flops for t in trials)
    lines.append(f"{len(trials)} trials, {total:.3g} training FLOPs in all; "
                 f"{len(trials) - len(todo)} already done, {len(todo)} to run")
    if todo:
        lines += summary_lines(plan, todo)
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Scaling-law and ablation harness for Kimi-K2-style MoE models.

    \b
    Example:
      harness submit sweeps/smoke.yaml --dry-run
      harness submit sweeps/smoke.yaml
      harness status smoke
      harness ui
    """
    _setup_logging(verbose)


@cli.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--profile", default=None, help="Named override from the YAML's profiles.")
@click.option("--address", default=None, help="Ray cluster address (default: local Ray).")
@click.option("--dry-run", is_flag=True, help="Print the trial table; launch nothing.")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="Trials running at once (default: the YAML's max_concurrent).")
def submit(
    sweep_file: Path, profile: str | None, address: str | None, dry_run: bool,
    max_concurrent: int | None,
) -> None:
    """Run a sweep on Ray Tune, logged to MLflow; finished trials are skipped.

    \b
    Example:
      harness submit sweeps/sparsity.yaml --profile gpu --address auto
    """
    from harness.preflight import check_sweep

    sweep = load_sweep(sweep_file, profile)
    check_sweep(sweep, str(sweep_file))
    if dry_run:
        from harness.preflight import check_data, default_storage, paths_summary
        from harness.status import known_states

        trials = sweep.expand()
        check_data(trials, load=False)
        click.echo(trial_table(sweep, trials, known_states(sweep), default_storage()))
        click.echo(paths_summary(trials))
        return
    _run(sweep, address, max_concurrent)


def _run(sweep: SweepConfig, address: str | None, max_concurrent: int | None) -> None:
    from harness.launch import submit as launch
    from harness.launch.ray_setup import term_as_interrupt
    from harness.store import check_store

    term_as_interrupt()
    check_store()
    s = launch(sweep, address=address, max_concurrent=max_concurrent)
    click.echo(
        f"{sweep.name}: {s.total} trials · {s.skipped} already done · {s.finished} finished · "
        f"{s.diverged} diverged · {s.failed} failed · {s.wall_s:.0f}s"
    )
    if s.flops_budgets:
        click.echo(f"training FLOPs: {s.flops_budgets:.3g} for the budgets that ended, "
                   f"{s.flops_trained:.3g} trained for them "
                   f"({s.flops_trained / s.flops_budgets:.2f}x: shared prefixes, resumes)")
    if s.interrupted or s.failed:
        click.echo(f"next: {me()} resume {sweep.name}")
        sys.exit(1)
    click.echo(f"next: {me()} status {sweep.name} · make ui · make plots")


@cli.command()
@click.argument("name")
@click.option("--address", default=None, help="Ray cluster address (default: local Ray).")
def resume(name: str, address: str | None) -> None:
    """Continue an interrupted sweep: unfinished trials resume from their checkpoints.

    \b
    Example:
      harness resume sparsity
    """
    from harness.preflight import check_sweep
    from harness.status import stored_sweep

    sweep = stored_sweep(name)
    check_sweep(sweep, f"sweep {name}")
    _run(sweep, address, None)


@cli.command()
@click.argument("name", required=False)
def status(name: str | None) -> None:
    """List sweeps, or one sweep's trials and their states, from MLflow.

    \b
    Example:
      harness status            # every sweep
      harness status smoke      # one sweep's trials
    """
    from harness.status import status_text

    click.echo(status_text(name))


@cli.command()
@click.argument("name")
def repair(name: str) -> None:
    """Log the derived params (arm, sizes, data_sha) that finished runs of an older harness lack.

    `make plots` groups runs by these params and leaves runs without them out; run this once on
    a store written by an older version.

    \b
    Example:
      harness repair sparsity
    """
    from harness.status import repair as repair_runs

    n = repair_runs(name)
    click.echo(f"{name}: {n} runs repaired")


@cli.command()
@click.argument("name")
def rescore(name: str) -> None:
    """Evaluate every finished trial's final weights on the current val/test splits.

    Logs rescore/val/loss and rescore/test/loss at each run's last step (no new runs, no new
    steps); a second run logs nothing new. Trials finished by an older harness have no final
    weights and are listed as not rescorable.

    \b
    Example:
      harness rescore sparsity
    """
    from harness.rescore import rescore_sweep

    outcomes = rescore_sweep(name)
    for o in outcomes:
        click.echo(o.line())
    kinds = [o.kind for o in outcomes]
    click.echo(f"{name}: {len(outcomes)} finished trials · {kinds.count('rescored')} rescored · "
               f"{kinds.count('already rescored')} already rescored · "
               f"{kinds.count('not rescorable')} not rescorable")


@cli.command()
@click.argument("trial_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--experiment", default="train", show_default=True, help="MLflow experiment.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where checkpoints go (default: .harness/checkpoints/<trial hash>).")
@click.option("--jsonl", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Log to this JSON-lines file instead of MLflow (no MLflow needed).")
def train(trial_file: Path, experiment: str, checkpoint_dir: Path | None,
          jsonl: Path | None) -> None:
    """Run one trial in this process (no Ray), logged to MLflow or to a JSON-lines file.

    A trial of train.workers N > 1 runs under torchrun, one process per worker (rank 0 logs,
    writes checkpoints and the record).

    \b
    Example:
      harness train my_trial.yaml   # a TrialConfig YAML: model/optim/data/train
      harness train my_trial.yaml --jsonl runs/my_trial.jsonl   # where MLflow is not installed
      torchrun --standalone --nproc-per-node 2 -m harness train two.yaml --jsonl runs/t.jsonl
    """
    from harness.preflight import check_data, check_trial, default_storage
    from harness.tracking import MemoryTracker
    from harness.train import run_trial

    trial = load_trial(trial_file)
    check_trial(trial, str(trial_file))
    world = _torchrun_world(trial.train.workers, trial.train.device)
    if world.main:
        check_data([trial])
    tracker = (_trial_tracker(trial, trial_file.stem, experiment, jsonl) if world.main
               else MemoryTracker())
    ckpt = checkpoint_dir or default_storage() / "checkpoints" / trial.hash
    steps = trial.train.steps

    def on_log(step: int, m: dict[str, float]) -> None:
        val = f" val {m['val/loss']:.4f}" if "val/loss" in m else ""
        log.info("step %d/%d  loss %.4f%s  %.0f tok/s  max logit %.1f", step, steps,
                 m["train/loss"], val, m["perf/tokens_per_s"], m["attn/max_logit"])

    result = run_trial(trial, tracker, ckpt, on_log=on_log if world.main else None,
                       world=world)
    world.leave()
    if world.main:
        click.echo(json.dumps(result.__dict__, indent=1))
        click.echo(f"logged to {jsonl}" if jsonl else
                   f"next: {me()} ui  (experiment '{experiment}')")


def _torchrun_world(workers: int, device: str) -> World:
    """This process's rank of a multi-worker ``harness train`` (``torchrun`` sets
    ``WORLD_SIZE``): the process group is set up here, nccl on CUDA, else gloo."""
    from harness.distributed import World

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 and workers == 1:
        return World()
    if size != workers:
        raise HarnessError(
            f"train.workers is {workers} but {size} process(es) run it: start it as "
            f"`torchrun --standalone --nproc-per-node {workers} -m harness train FILE`, or in a "
            "sweep")
    import torch
    import torch.distributed as dist

    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return World.current()


def _trial_tracker(trial: TrialConfig, name: str, experiment: str, jsonl: Path | None) -> Any:
    """The tracker of ``harness train``: a JSON-lines file, else a run in the MLflow store."""
    from harness.env import importable
    from harness.tracking import JsonlTracker

    if jsonl is not None:
        return JsonlTracker(jsonl)
    if not importable("mlflow"):
        raise HarnessError("MLflow is not installed; pass --jsonl FILE to log "
                           "to a JSON-lines file instead")
    from harness.store import Store, check_store

    check_store()
    store = Store()
    exp = store.ensure_experiment(experiment)
    return store.open_trial(exp, trial.hash, name, {"sweep": experiment})


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address.")
@click.option("--port", default=5000, show_default=True, type=int)
def ui(host: str, port: int) -> None:
    """Serve the MLflow UI over the harness's store (local only unless --host is given).

    \b
    Example:
      harness ui --port 5001
    """
    from harness.store import UI_PATH, Store, default_tracking_uri

    uri = default_tracking_uri()
    where = "this machine only" if host == "127.0.0.1" else f"ALL interfaces via {host}"
    if uri.startswith(("http://", "https://")):
        click.echo(f"{uri} is an MLflow server: open {uri.rstrip('/')}{UI_PATH}", err=True)
        return
    click.echo(
        f"MLflow UI on http://{host}:{port}{UI_PATH} ({where}; ready in ~30 s); store {uri}",
        err=True,
    )
    Store(uri)  # a new store is created and migrated here, under its lock, never by the server
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # MLflow's server imports a Starlette module Starlette deprecates, and each of its four
    # worker processes says so at start-up: nothing the user can act on
    os.environ.setdefault("PYTHONWARNINGS", UI_QUIET)
    args = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", host, "--port", str(port), "--app-name", "harness"]
    os.execv(sys.executable, args)


@cli.command()
@click.option("--experiment", "experiments", multiple=True, help="Sweep name (repeatable).")
@click.option("--refresh", is_flag=True, help="Reread MLflow instead of the parquet cache.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write every sweep here (default: the sweeps of sweeps/*.yaml to results/, "
              "any other sweep to results-local/).")
def plots(experiments: tuple[str, ...], refresh: bool, out: Path | None) -> None:
    """Fit the laws and regenerate every figure, CSV table and report.md.

    The repository's studies (sweeps/*.yaml) go to results/, your own sweeps to results-local/
    (not tracked by git), unless --out names one folder for all.

    \b
    Example:
      harness plots --experiment sparsity --refresh
      harness plots --experiment mine --out my-results
    """
    from analysis.report import make_all, make_routed

    if out is not None:
        routed = {out: make_all(list(experiments) or None, refresh=refresh, out_dir=out)}
    else:
        routed = make_routed(list(experiments) or None, refresh=refresh)
    for folder, written in routed.items():
        click.echo(f"wrote {len(written)} files under {folder}/ (report: {folder / 'report.md'})")


@cli.command()
def schema() -> None:
    """Print the YAML reference as Markdown.

    Every sweep and trial key with its type, bounds, default and unit, generated from the
    pydantic models (docs/yaml-reference.md is this output).

    \b
    Example:
      harness schema > docs/yaml-reference.md     # what `make docs` does
    """
    from harness.schema import yaml_reference

    click.echo(yaml_reference(), nl=False)


@cli.command()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--quick", is_flag=True, help="Fewer repeats and smaller cases (a few minutes).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True)
def bench(device: str, quick: bool, out: Path) -> None:
    """Time the hot paths against their baselines, side by side in one run.

    \b
    Example:
      harness bench --quick       # writes results/bench.json and results/bench.md
    """
    from harness.bench import run_bench

    run_bench(device, quick, out)
    click.echo(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")


def main(argv: list[str] | None = None) -> Any:
    """Entry point: the project's own errors -> one line on stderr, exit status 2."""
    try:
        return cli.main(args=argv, standalone_mode=False)
    except HarnessError as e:
        click.echo(f"harness: error: {str(e).strip(chr(39))}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"harness: error: {e.format_message()}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
