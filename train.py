"""Train a Show, Attend and Tell captioner: `python train.py encoder=shufflenet tf=inv_sigmoid`."""

import hydra
from omegaconf import DictConfig

from captioner.cli import check_offline_weights, precheck, run_guarded
from captioner.config import register


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Compose the config, train, and return the validation objective (for Optuna sweeps)."""
    from hydra.core.hydra_config import HydraConfig

    from captioner.train.loop import train

    run_dir = HydraConfig.get().runtime.output_dir
    final = run_guarded(lambda: train(cfg, run_dir, on_validation=report_to_sweep))
    return final.get("objective") if final else None


def report_to_sweep(metric: float, epoch: int) -> None:
    """Under our Optuna sweeper, report the validation metric so a pruner can stop a poor trial."""
    from hydra_plugins.captioner_optuna_sweeper import sweep_trial

    trial = sweep_trial()
    if trial is not None:
        import optuna

        trial.report(metric, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} ({metric:.4g})")


if __name__ == "__main__":
    check_offline_weights()  # before register() imports torch and torchvision: offline, this fails in ~1 s
    register()
    precheck()
    main()
