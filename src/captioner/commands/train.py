"""Train a Show, Attend and Tell captioner: ``captioner-train encoder=shufflenet tf=inv_sigmoid`` (= ``python train.py``)."""

import hydra
from omegaconf import DictConfig

from captioner.cli import CONF_DIR, check_conf_dir, check_offline_weights, precheck, run_guarded
from captioner.config import register


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def train_main(cfg: DictConfig) -> float | None:
    """Compose the config, train, and return the validation objective (for Optuna sweeps)."""
    from hydra.core.hydra_config import HydraConfig

    from captioner.train.loop import RunPruned, train

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        final = run_guarded(lambda: train(cfg, run_dir, on_validation=report_to_sweep))
    except RunPruned as pruned:  # what our sweeper records as a PRUNED trial
        import optuna

        raise optuna.TrialPruned(str(pruned)) from pruned
    return final.get("objective") if final else None


def report_to_sweep(metric: float, epoch: int) -> None:
    """Under our Optuna sweeper, report the validation metric so a pruner can stop a poor trial."""
    from hydra_plugins.captioner_optuna_sweeper import sweep_trial

    trial = sweep_trial()
    if trial is not None:
        from captioner.train.loop import RunPruned

        trial.report(metric, epoch)
        if trial.should_prune():
            raise RunPruned(epoch, f"pruned after epoch {epoch} ({metric:.4g})")


def main() -> None:
    """Console entry: one-line errors for missing weights and bad overrides, then Hydra."""
    check_conf_dir()  # before check_offline_weights reads the default encoder from config.yaml
    check_offline_weights()  # before register() imports torch and torchvision: offline, this fails in ~1 s
    register()
    precheck()
    train_main()
