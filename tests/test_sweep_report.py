"""sweeps/report.py on a synthetic sweep in a temporary MLflow store: per-seed runs in, verdicts, files and parent metrics out."""

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sweeps"))  # as `python sweeps/report.py` finds its modules

import report_collect  # noqa: E402
import report_publish  # noqa: E402
import report_render  # noqa: E402

# Known per-seed results: v17 beats v15 by 2 +- 0.1, v16 is v15 +- 0.1, both above competence.
BLEU = {"v15": [30.0, 31.0, 29.5], "v16": [30.1, 30.9, 29.5], "v17": [32.0, 33.1, 31.4]}
F1 = {"v15": [0.90, 0.91, 0.92], "v16": [0.90, 0.92, 0.91], "v17": [0.95, 0.96, 0.97]}


def _sweep(client, experiment: str, bleu: dict, f1: dict) -> str:
    """A parent run and one child per version x seed, logged as the training loop logs them."""
    from mlflow.entities import Metric

    exp = client.create_experiment(experiment)
    parent = client.create_run(exp, run_name="study", tags={"sweep.parent": "study-1"}).info.run_id
    client.set_terminated(parent)
    for version, values in bleu.items():
        for seed, value in enumerate(values):
            tags = {
                "seed_version": version,
                "seed_flags": f"--{version}",
                "seed_bleu4": "n/a",
                "mlflow.parentRunId": parent,
            }
            rid = client.create_run(exp, run_name=f"{version}-s{seed}", tags=tags).info.run_id
            client.log_param(rid, "trainer.seed", seed)
            # Two validations; the best is the first (value), the second is worse.
            metrics = [
                Metric("val.bleu4", value, 0, 10),
                Metric("val.cider_d", 10 * value, 0, 10),
                Metric("val.object_f1", f1[version][seed], 0, 10),
                Metric("val.bleu4", value - 1, 0, 20),
                Metric("val.cider_d", 0.0, 0, 20),
                Metric("val.object_f1", 0.0, 0, 20),
                Metric("test.object_f1", f1[version][seed], 0, 0),
                Metric("time.epoch_train_s", 5.0 + seed, 0, 10),
                Metric("time.epoch_train_s", 5.0, 0, 20),
                Metric("time.epoch_train_cpu_s", 4.5, 0, 10),
                Metric("time.epoch_train_cpu_s", 4.0, 0, 20),
            ]
            client.log_batch(rid, metrics=metrics)
            client.set_terminated(rid)
    return parent


@pytest.mark.slow  # a fresh MLflow SQLite store: ~10-30 s of schema migrations
def test_report_from_mlflow_runs_to_files_and_parent(tmp_path: Path) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    parent = _sweep(client, "sweep-optim_dropout-cpu", BLEU, F1)

    runs = report_collect.collect(uri, "sweep-optim_dropout-cpu")
    assert [(r["version"], r["seed"]) for r in runs] == [(v, s) for v in BLEU for s in range(3)]
    first = runs[0]["metrics"]
    assert (
        first["val.bleu4"] == 30.0 and first["val.cider_d"] == 300.0
    )  # at the best validation, not the last
    assert first["time.train_s"] == 10.0 and runs[0]["best_validation"] == "1 of 2"
    assert first["time.train_cpu_s"] == 8.5  # CPU time: what a speed claim compares on a shared machine

    s = report_collect.summarize("optim_dropout", "cpu", runs)
    claims = {c["id"]: c for c in s["claims"]}
    assert claims["adamw_same_as_adam"]["verdict"] == "holds"  # v16 - v15 CI inside +-1
    assert claims["more_dropout_helps"]["verdict"] == "holds"
    assert claims["more_dropout_helps"]["also"] == {"val.cider_d": "holds", "test.object_f1": "holds"}
    v17 = s["versions"]["v17"]["metrics"]["val.bleu4"]
    assert v17["n"] == 3 and v17["mean"] == pytest.approx(32.1666667)

    files = report_publish.write(s, tmp_path / "results" / "optim_dropout_cpu")
    md = files[0].read_text()
    assert "| more_dropout_helps |" in md and "**holds**" in md and "Baseline v15 is competent" in md
    assert json.loads(files[1].read_text())["claims"][0]["id"] == "adamw_same_as_adam"
    assert files[2].stat().st_size > 1000

    assert report_publish.log_to_parent(uri, s, files) == parent
    logged = client.get_run(parent).data
    assert logged.metrics["v17.val_bleu4.mean"] == pytest.approx(v17["mean"])
    assert logged.metrics["v17.val_bleu4.ci_low"] == pytest.approx(v17["ci_low"])
    assert logged.metrics["v17.n_seeds"] == 3
    assert not any(k.startswith("v17.val_object_f1") for k in logged.metrics)  # only the shown metrics
    assert logged.tags["claim.more_dropout_helps"] == "holds"
    assert {a.path for a in client.list_artifacts(parent, "report")} == {
        f"report/optim_dropout_cpu.{x}" for x in ("md", "json", "png")
    }
    # One summary run per version under the parent, updated (not duplicated) when the report reruns.
    assert report_publish.log_to_parent(uri, s, files) == parent
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id], f"tags.`{report_publish.SUMMARY_TAG}` != ''"
    )
    assert sorted(r.info.run_name for r in children) == [f"{v} mean of 3 seeds" for v in BLEU]
    summary = next(r for r in children if r.data.tags[report_publish.SUMMARY_TAG] == "v17").data
    assert summary.metrics["bleu4_val_mean"] == pytest.approx(v17["mean"]) and summary.tags["n_seeds"] == "3"
    assert summary.tags["mlflow.parentRunId"] == parent and "bleu4_val_seed" not in summary.metrics  # "n/a"
    assert summary.metrics["bleu4_val_ci95"] == pytest.approx(v17["ci_high"] - v17["mean"])
    assert {"cider_d_val_mean", "object_f1_test_mean", "time_train_s_mean"} <= set(summary.metrics)
    assert summary.params["seed_flags"] == "--v17"
    assert len(report_collect.collect(uri, "sweep-optim_dropout-cpu")) == 9  # summaries are not trials
    # A rerun after a config change is a new study in the same experiment: only its trials count.
    exp_id = client.get_run(parent).info.experiment_id
    tags = {"seed_version": "v15", "seed_flags": "--v15", "sweep.study": "study-2"}
    rerun = client.create_run(exp_id, run_name="v15-s0", tags=tags).info.run_id
    client.log_param(rerun, "trainer.seed", 0)
    client.log_batch(rerun, metrics=[Metric("val.bleu4", 40.0, 0, 10)])
    client.set_terminated(rerun)
    assert [
        (r["version"], r["metrics"]["val.bleu4"])
        for r in report_collect.collect(uri, "sweep-optim_dropout-cpu")
    ] == [("v15", 40.0)]
    url = report_publish.compare_url(uri, parent)
    assert url.startswith("http://127.0.0.1:5000/#/compare-runs?runs=") and summary_id(children, "v15") in url


def run_record(version: str, seed: int, metrics: dict, **fields: object) -> dict:
    """One finished run as ``report_collect.collect`` returns it (``fields`` override the defaults)."""
    return {
        "version": version,
        "seed": seed,
        "run_id": f"{version}{seed}" * 4,
        "parent_run_id": None,
        "flags": "",
        "seed_bleu4": "n/a",
        "best_validation": "1 of 1",
        "start": 0,
        "end": 1000,
        "metrics": metrics,
        **fields,
    }


def test_report_refuses_verdicts_below_competence(tmp_path: Path) -> None:
    smoke = {v: [7.2e-8, 8.0e-8] for v in ("x_base", "x_lstm2", "x_att_gamma2", "x_no_bucket")}
    zero = {v: [0.0, 0.0] for v in smoke}
    runs = [
        run_record(
            v,
            seed,
            {
                "val.bleu4": smoke[v][seed],
                "test.object_f1": zero[v][seed],
                # the bucket sampler's runs are faster by 2 s on each seed
                "time.train_s": (10.0 if v == "x_base" else 12.0) + seed,
            },
        )
        for v in smoke
        for seed in range(2)
    ]
    s = report_collect.summarize("extra_claims", "smoke", runs)
    md = report_render.markdown(s)
    assert "**No verdict: baseline below competence**" in md and "x_base val.bleu4 mean 7.6e-08 < 1" in md
    claims = {c["id"]: c["verdict"] for c in s["claims"]}
    assert claims["att_gamma_2_worse"].startswith("no verdict: baseline below competence")
    assert claims["bucket_sampler_saves_time"] == "holds"  # wall time needs no competence
    assert claims["glove_vs_random_embeddings"].startswith("not tested: needs GloVe vectors")
    assert "7.2e-08" in md  # tiny numbers keep their exponent
    assert math.isclose(s["wall_time"]["runs_s"], 8.0)


def summary_id(runs: list, version: str) -> str:
    """The run id of ``version``'s summary run among ``runs``."""
    return next(r.info.run_id for r in runs if r.data.tags[report_publish.SUMMARY_TAG] == version)


def test_overview_flags_each_group_that_misses_the_scales_targets(tmp_path: Path) -> None:
    """--overview: one row per group of claims.yaml; a baseline under the F1 target and a group over
    the wall-time budget are named, runs still improving at their last epoch are counted."""
    f1 = {
        "x_base": [0.79, 0.80],
        "x_lstm2": [0.85, 0.86],
        "x_att_gamma2": [0.81, 0.83],
        "x_no_bucket": [0.8, 0.8],
    }
    runs = [
        run_record(
            v,
            seed,
            {"val.bleu4": 60.0 + seed, "test.object_f1": f1[v][seed], "time.train_s": 100.0 + seed},
            best_validation="5 of 5" if v == "x_base" else "3 of 5",
            end=46 * 60 * 1000,  # every run spans 46 min: the group is over cpu's 45
            commit="abcdef0123",
        )
        for v in f1
        for seed in range(2)
    ]
    report_publish.write(report_collect.summarize("extra_claims", "cpu", runs), tmp_path / "extra_claims_cpu")
    table = report_render.overview("cpu", tmp_path)
    row = next(line for line in table.splitlines() if line.startswith("| extra_claims "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:5] == ["8 (4 x 2 seeds)", "abcdef0", "46.0 (over 45)", "x_base"]
    assert cells[5].startswith("0.795 [") and cells[5].endswith("(under 0.8)")
    assert cells[6] == "2 of 2"  # both x_base runs were best at their last epoch
    assert "| optim_dropout | no report |" in table
    assert "0.8; the group's wall time" in table and "<= 45 min" in table


def test_rejudge_rewrites_a_committed_report_unchanged_and_refuses_other_files(tmp_path: Path) -> None:
    """--rejudge on an unchanged claims.yaml gives the committed JSON back; a wrong path is one line."""
    import shutil
    import subprocess

    committed = REPO / "sweeps" / "results" / "tf_scheduler_cpu.json"
    copy = tmp_path / committed.name
    shutil.copy(committed, copy)
    script = str(REPO / "sweeps" / "report.py")
    subprocess.run([sys.executable, script, "--rejudge", str(copy)], check=True, capture_output=True)
    assert json.loads(copy.read_text()) == json.loads(committed.read_text())
    bad = subprocess.run(
        [sys.executable, script, "--rejudge", str(tmp_path / "nope.json")], capture_output=True, text=True
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "not a report JSON" in bad.stderr


def _two_sittings(changed: float = 0.0) -> tuple[list[dict], list[dict]]:
    """Seeds 0-1 as committed (study A), seeds 1-3 rerun later (study B); ``changed`` moves seed 1's v15."""
    bleu = {"v15": [30.0, 31.0, 29.5, 30.5], "v16": [30.1, 30.9, 29.5, 30.6], "v17": [32.0, 33.1, 31.4, 32.6]}
    committed = [
        run_record(v, s, {"val.bleu4": b[s], "time.train_s": 9.0}, study="A", start=0, end=60_000)
        for v, b in bleu.items()
        for s in (0, 1)
    ]
    new = [
        run_record(
            v,
            s,
            {
                "val.bleu4": b[s] + (changed if (v, s) == ("v15", 1) else 0.0),
                "time.train_s": 7.0,  # times differ between sittings: never a changed number
                "time.train_cpu_s": 6.5,
            },
            study="B",
            start=10**9,
            end=10**9 + 120_000,
        )
        for v, b in bleu.items()
        for s in (1, 2, 3)
    ]
    return committed, new


def test_merge_adds_new_seeds_and_refuses_a_committed_number_that_changed() -> None:
    """--merge: seeds run later join the committed ones, each sitting keeps its own wall time, and a
    rerun point whose numbers differ from the committed report stops the report naming it."""
    committed, new = _two_sittings()
    runs = report_collect.merge(committed, new, "committed.json")
    assert [(r["version"], r["seed"]) for r in runs][:4] == [("v15", 0), ("v15", 1), ("v15", 2), ("v15", 3)]
    s = report_collect.summarize("optim_dropout", "cpu", runs)
    assert s["seeds"] == [0, 1, 2, 3]
    assert [(p["study"], p["seeds"], p["first_start_to_last_end_s"]) for p in s["sittings"]] == [
        ("A", [0], 60.0),  # seed 1 was rerun in B: its record is B's (same numbers)
        ("B", [1, 2, 3], 120.0),
    ]
    assert s["wall_time"]["first_start_to_last_end_s"] == 180.0  # sittings added up, not the days between
    md = report_render.markdown(s)
    assert "sweep.first_seed=1 sweep.seeds=4" in md and "--merge sweeps/results/optim_dropout_cpu.json" in md
    committed, new = _two_sittings(changed=1e-9)
    with pytest.raises(
        SystemExit, match=r"1 committed per-seed numbers in committed.json changed: v15 seed 1"
    ):
        report_collect.merge(committed, new, "committed.json")


def test_undecided_claims_say_how_many_seeds_would_decide_them(tmp_path: Path) -> None:
    """An undecided claim carries the seeds a paired t-test needs for the seed's own effect (its reported
    val BLEU-4 per version) or, where the seed reports none, the observed one; the overview lists them
    and counts decisive verdicts at the archived and the current number of seeds."""
    # v17 - v15: +1 +- 2 over 3 seeds (undecided); the seed claims +3 for v17 over v15.
    runs = [
        run_record(v, s, {"val.bleu4": b, "test.object_f1": 0.9}, seed_bleu4=sb)
        for v, sb, values in (
            ("v15", "20.0", [30.0, 31.0, 29.0]),
            ("v16", "20.0", [30.0, 31.0, 29.0]),
            ("v17", "23.0", [33.0, 30.0, 30.0]),
        )
        for s, b in enumerate(values)
    ]
    s = report_collect.summarize("optim_dropout", "cpu", runs)
    claim = next(c for c in s["claims"] if c["id"] == "more_dropout_helps")
    assert claim["verdict"] == "not distinguishable at 3 seeds"
    (pair,) = claim["pairs"]
    assert pair["effect_from"] == "seed" and pair["effect"] == pytest.approx(3.0)
    assert claim["seeds_needed"] == pair["seeds_needed"]
    from captioner.ablation import minimum_detectable_effect

    n, sd = claim["seeds_needed"], pair["diff"]["sd"]
    assert minimum_detectable_effect(sd, n) <= 3.0 < minimum_detectable_effect(sd, n - 1)
    same = next(c for c in s["claims"] if c["id"] == "adamw_same_as_adam")
    assert same["verdict"] == "holds" and same["seeds_needed"] is None  # decided: nothing to add
    (tmp_path / "3seeds").mkdir()
    report_publish.write(s, tmp_path / "3seeds" / "optim_dropout_cpu")
    more = runs + [
        run_record(v, 3, {"val.bleu4": 31.0 + (v == "v17") * 3, "test.object_f1": 0.9})
        for v in ("v15", "v16", "v17")
    ]
    report_publish.write(
        report_collect.summarize("optim_dropout", "cpu", more), tmp_path / "optim_dropout_cpu"
    )
    table = report_render.overview("cpu", tmp_path)
    row = next(line for line in table.splitlines() if line.startswith("| optim_dropout "))
    assert row.endswith("| 3 seeds: 1 of 2<br>4 seeds: 1 of 2 |")
    assert "| optim_dropout | more_dropout_helps | 4 |" in table


ARCHIVED = sorted((REPO / "sweeps" / "results" / "3seeds").glob("*_cpu.json"))


@pytest.mark.parametrize("archived", ARCHIVED, ids=[p.stem for p in ARCHIVED])
def test_committed_reports_keep_every_archived_per_seed_number(archived: Path) -> None:
    """Seeds added to a group (sweep.first_seed) never move the committed 3-seed numbers: the current
    report holds every archived (version, seed) with exactly its numbers."""
    current = json.loads((archived.parents[1] / archived.name).read_text())
    now = {(r["version"], r["seed"]): report_collect._numbers(r) for r in current["runs"]}
    before = {
        (r["version"], r["seed"]): report_collect._numbers(r)
        for r in json.loads(archived.read_text())["runs"]
    }
    assert set(before) <= set(now)
    for point, numbers in before.items():
        differ = [
            k
            for k in numbers
            if k in now[point] and not report_collect.same_number(numbers[k], now[point][k])
        ]
        assert not differ, (point, differ)
        assert set(numbers) - set(now[point]) <= {"test.meteor"}, point  # METEOR left scale=cpu at bb5eb11


def test_search_check_report_judges_the_best_trial_against_its_base() -> None:
    """`make search-check`'s report: group search_quality, versions base and best, paired verdicts on the
    search's objective and on test exact scene, and the command that reruns it."""
    f1 = {"base": [0.90, 0.91, 0.92, 0.90, 0.91], "best": [0.93, 0.935, 0.95, 0.92, 0.94]}
    exact = {"base": [0.80, 0.82, 0.81, 0.80, 0.83], "best": [0.80, 0.83, 0.80, 0.81, 0.82]}
    runs = [
        run_record(
            v,
            seed,
            {
                "val.bleu4": 60.0,
                "val.object_f1": f1[v][seed],
                "test.object_f1": 0.9,
                "test.exact_scene": exact[v][seed],
            },
        )
        for v in ("base", "best")
        for seed in range(5)
    ]
    s = report_collect.summarize("search_quality", "cpu", runs)
    verdicts = {c["id"]: c["verdict"] for c in s["claims"]}
    assert verdicts == {
        "searched_recipe_higher_val_f1": "holds",
        "searched_recipe_higher_exact_scene": "not distinguishable at 5 seeds",
    }
    md = report_render.markdown(s)
    assert md.startswith("# Search check `quality` at scale `cpu`: the best trial against its base")
    assert "`make search-check SEARCH=quality SCALE=cpu SEEDS=5`" in md
