"""Train a Show, Attend and Tell captioner: `python train.py encoder=shufflenet tf=inv_sigmoid`."""

import hydra
from omegaconf import DictConfig

from captioner.cli import precheck, run_guarded
from captioner.config import register

register()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Compose the config, train, and return the validation objective (for Optuna sweeps)."""
    from hydra.core.hydra_config import HydraConfig

    from captioner.train.loop import train

    run_dir = HydraConfig.get().runtime.output_dir
    final = run_guarded(lambda: train(cfg, run_dir))
    return final.get("objective") if final else None


if __name__ == "__main__":
    precheck()
    main()
