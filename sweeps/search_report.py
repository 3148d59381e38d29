"""Report an Optuna search sweep: its best trial, parameter importances and plots, logged to MLflow.

    python sweeps/search_report.py --experiment search-quality-cpu
    python sweeps/search_report.py --experiment search-quality-cpu --export conf/experiment/quality_searched.yaml

Finds the study of the search's newest MLflow runs (their ``sweep.study`` tag) in the sweeper's storage
(``multirun/optuna.db`` unless ``--storage`` says otherwise) and writes sweeps/results/<search>_<scale>
.md, .json, _history.png (objective per trial, best so far) and _parallel.png (parameters of every
finished trial, coloured by objective). Importances are Optuna's fANOVA over the completed trials
(``optuna.importance.get_param_importances``, seeded). The same files go to the study's MLflow parent
run as artifacts, with the best value as a metric and the importances as ``importance.<param>`` metrics.
``--export`` writes the best trial's settings as an experiment config: the searched experiment's own
settings (``--base``) with the search file's fixed settings and the best parameters on top, and beside
it the base's SCST stage on the searched model where the base has one (quality -> quality_scst).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf

DEFAULT_STORAGE = "sqlite:///multirun/optuna.db"


def study_of(tracking_uri: str, experiment: str) -> tuple[str, str | None]:
    """(study name, MLflow parent run id) of the newest search trial in ``experiment``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(
            f"error: no MLflow experiment {experiment!r} in {tracking_uri}; run the search first"
        )
    runs = client.search_runs(
        [exp.experiment_id],
        "tags.`sweep.study` != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise SystemExit(f"error: experiment {experiment!r} has no search trial; run the search first")
    return runs[0].data.tags["sweep.study"], runs[0].data.tags.get("mlflow.parentRunId")


def summarize(study: optuna.Study) -> dict[str, Any]:
    """The search as plain data: trial counts by state, the best trial, importances, every trial."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials) for state in optuna.trial.TrialState}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if complete else None
    importances: dict[str, float] = {}
    if len(complete) >= 2:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return {
        "study": study.study_name,
        "direction": study.direction.name.lower(),
        "counts": {k: v for k, v in counts.items() if v},
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
        "importances": importances,
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "epochs_reported": len(t.intermediate_values),
            }
            for t in trials
        ],
    }


def markdown(s: dict[str, Any], name: str) -> str:
    """The search report as Markdown."""
    counts = ", ".join(f"{n} {state.lower()}" for state, n in s["counts"].items())
    lines = [f"# Search `{name}`", "", f"Optuna study `{s['study']}` ({s['direction']}): {counts}.", ""]
    best = s["best"]
    if best is None:
        return "\n".join([*lines, "No trial completed yet.", ""])
    lines += [
        f"**Best trial {best['number']}: {best['value']:.4f}**",
        "",
        "| parameter | best value | importance (fANOVA) |",
        "|---|---|---|",
    ]
    for param, value in best["params"].items():
        importance = s["importances"].get(param)
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(f"| {param} | {shown} | {'–' if importance is None else f'{importance:.3f}'} |")
    lines += [
        "",
        f"![optimisation history]({name}_history.png)",
        f"![parallel coordinates]({name}_parallel.png)",
    ]
    return "\n".join(lines) + "\n"


def plots(study: optuna.Study, out: Path) -> list[Path]:
    """Optimisation history and parallel coordinates as PNGs beside ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    paths = []
    for suffix, draw in (
        ("history", ov.plot_optimization_history),
        ("parallel", ov.plot_parallel_coordinate),
    ):
        ax = draw(study)
        fig = ax.figure if hasattr(ax, "figure") else plt.gcf()
        fig.set_size_inches(10, 4.5)
        fig.tight_layout()
        path = out.with_name(f"{out.name}_{suffix}.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


# The keys that shape the model: a later stage started from the searched checkpoint must keep them.
MODEL_KEYS = ("decoder.", "encoder.")


def export(best_params: dict[str, Any], base: Path, search_file: Path, path: Path, study: str) -> list[Path]:
    """Write ``base`` (an experiment YAML) with the search's fixed settings (``search_file``, e.g. the
    objective that picks best.pt) and ``best_params`` on top, as an experiment config: the trial's recipe.

    When ``base`` has an SCST stage beside it (``<base>_scst.yaml``, e.g. quality_scst), also write
    ``<path>_scst.yaml``: that stage's own recipe (reward, learning rate, batch, epochs) on the searched
    model (the ``decoder.*`` and ``encoder.*`` parameters), to start from the searched run's best.pt.
    Returns the files written.
    """
    header = (
        "# @package _global_\n"
        f"# experiment={base.stem} with the best trial of Optuna study {study} on top\n"
        f"# (written by sweeps/search_report.py --export; sweeps/results/ has the search's report).\n"
    )
    cfg = OmegaConf.load(base)
    for key, value in {**fixed_settings(search_file), **best_params}.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.update(cfg, "logger.experiment", path.stem, force_add=True)
    path.write_text(header + OmegaConf.to_yaml(cfg))
    written = [path]
    scst_base = base.with_name(f"{base.stem}_scst.yaml")
    if scst_base.is_file():
        scst = OmegaConf.create({"defaults": [scst_base.stem]})
        for key, value in best_params.items():
            if key.startswith(MODEL_KEYS):
                OmegaConf.update(scst, key, value, force_add=True)
        scst_path = path.with_name(f"{path.stem}_scst.yaml")
        OmegaConf.update(scst, "logger.experiment", scst_path.stem, force_add=True)
        scst_header = (
            "# @package _global_\n"
            f"# experiment={scst_base.stem}'s stage on the model of experiment={path.stem} (Optuna study\n"
            f"# {study}): python train.py experiment={scst_path.stem} trainer.init_from=<its run>/best.pt\n"
            "# (written by sweeps/search_report.py --export).\n"
        )
        scst_path.write_text(scst_header + OmegaConf.to_yaml(scst))
        written.append(scst_path)
    return written


def log_to_parent(tracking_uri: str, parent: str, s: dict[str, Any], files: list[Path]) -> None:
    """The report's files, best value and importances on the study's MLflow parent run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if s["best"] is not None:
        client.log_metric(parent, "search.best_value", s["best"]["value"])
        client.set_tag(parent, "search.best_trial", str(s["best"]["number"]))
    for param, value in s["importances"].items():
        if math.isfinite(value):
            client.log_metric(parent, f"importance.{param}", value)
    for path in files:
        client.log_artifact(parent, str(path), artifact_path="report")


def fixed_settings(search_file: Path) -> dict[str, Any]:
    """The settings a search file gives every trial besides its parameters (e.g. the objective metric):
    its keys outside ``defaults``, ``hydra`` and ``logger``, as dotted keys."""
    cfg = OmegaConf.load(search_file)
    kept = {k: v for k, v in cfg.items() if k not in ("defaults", "hydra", "logger")}

    def flatten(node: Any, prefix: str) -> dict[str, Any]:
        if isinstance(node, dict):
            return {k: v for key, sub in node.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    return flatten(OmegaConf.to_container(OmegaConf.create(kept)), "")


def overrides(base: Path, search_file: Path, params: dict[str, Any] | None) -> str:
    """Hydra overrides that compose a trial outside the search: the base experiment, the search's fixed
    settings and (``params``) a trial's parameters. Given after ``scale=...`` on the command line they
    win over the scale's values, as they did in the search (a scale file outranks an experiment file)."""
    settings = {"experiment": base.stem, **fixed_settings(search_file), **(params or {})}
    return " ".join(f"{key}={value}" for key, value in settings.items())


def main() -> None:
    """CLI: report one search."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--experiment", required=True, help="MLflow experiment of the search, e.g. search-quality-cpu"
    )
    p.add_argument(
        "--study", help="the Optuna study's name (default: the study of the experiment's newest trial)"
    )
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="the sweeper's Optuna storage URL")
    p.add_argument(
        "--out", default=None, help="output path without suffix (default sweeps/results/<experiment>)"
    )
    p.add_argument("--export", metavar="YAML", help="write the best trial as an experiment config here")
    p.add_argument(
        "--overrides",
        choices=("base", "best"),
        help="instead: print the Hydra overrides of the search's base recipe or of its best trial, to run "
        "either outside the search (make search-check); writes nothing",
    )
    p.add_argument(
        "--base", default="conf/experiment/quality.yaml", help="the experiment the search started from"
    )
    args = p.parse_args()
    name, parent = (args.study, None) if args.study else study_of(args.tracking_uri, args.experiment)
    try:
        study = optuna.load_study(study_name=name, storage=args.storage)
    except KeyError:
        raise SystemExit(
            f"error: study {name!r} is not in {args.storage}; pass the sweeper's storage with --storage"
        ) from None
    search_file = Path("sweeps/search") / f"{args.experiment.split('-')[1]}.yaml"
    if args.overrides:  # no report: skip the importances
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if args.overrides == "best" and not complete:
            raise SystemExit("error: --overrides best needs a completed trial; run the search further")
        params = study.best_trial.params if args.overrides == "best" else None
        print(overrides(Path(args.base), search_file, params))
        return
    s = summarize(study)
    out = Path(args.out or f"sweeps/results/{args.experiment}")
    out.parent.mkdir(parents=True, exist_ok=True)
    files = [out.with_suffix(".md"), out.with_suffix(".json")]
    files[0].write_text(markdown(s, out.name))
    files[1].write_text(json.dumps(s, indent=1) + "\n")
    if s["best"] is not None:
        files += plots(study, out)
    if parent:
        log_to_parent(args.tracking_uri, parent, s, files)
    print(markdown(s, out.name) + f"wrote {', '.join(map(str, files))}")
    if args.export:
        if s["best"] is None:
            raise SystemExit("error: --export needs a completed trial; run the search further")
        for path in export(s["best"]["params"], Path(args.base), search_file, Path(args.export), name):
            print(f"wrote {path}: python train.py experiment={path.stem}")


if __name__ == "__main__":
    main()
