"""Self-critical sequence training (Rennie et al. 2017): REINFORCE on sampled captions, reward vs a baseline.

For each training image the decoder samples k captions in train mode (``decode.sample_with_grad``);
each gets a reward r (a mix of CIDEr-D and BLEU-4 against the image's training references, and on
shapes the object F1 of the grounding parser), and the loss is

    - sum_j (r_j - b_j) log p(w_j) / (tokens),

with b the reward of the greedy caption (``baseline=greedy``, Rennie et al.) or the mean reward of
the other k-1 samples (``baseline=mean``, the "new SCST" of ruotianluo/self-critical.pytorch).
Rewards are on coco's scale: CIDEr-D and BLEU-4 as fractions (our 0-100 numbers / 100), F1 in [0, 1].
On the training fast path (``trainer.compile``) both rollouts step through its compiled cell
(``decode.fast_rollout``): the same captions and loss, up to rounding, with no host sync per step on CUDA.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from captioner.data.records import ImageRecord
from captioner.data.vocab import SPECIALS, Vocab
from captioner.errors import ConfigError

if TYPE_CHECKING:
    from captioner.decode.policy import Rollout

BASELINES = ("greedy", "mean")
REWARDS = ("cider_d", "bleu4", "object_f1")


def check_scst(cfg: DictConfig) -> None:
    """One-line errors for SCST settings that cannot work."""
    if cfg.baseline not in BASELINES:
        raise ConfigError(
            f"objective.baseline={cfg.baseline!r} is unknown; choose one of: {', '.join(BASELINES)}"
        )
    if cfg.samples < 1 or (cfg.baseline == "mean" and cfg.samples < 2):
        raise ConfigError(
            f"objective.samples={cfg.samples}: need >= 1, and >= 2 with baseline=mean (the others' mean)"
        )
    unknown = sorted(set(cfg.reward) - set(REWARDS))
    if unknown:
        raise ConfigError(f"objective.reward has unknown terms {unknown}; use {', '.join(REWARDS)}")
    if not any(float(w) != 0 for w in cfg.reward.values()):
        raise ConfigError("objective.reward weights are all 0; give e.g. objective.reward.cider_d=1.0")


class Reward:
    """The configured reward mix of captions (word lists) for training images, one float each."""

    def __init__(self, weights: Mapping[str, float], records: Mapping[str, ImageRecord]):
        from captioner.metrics import CiderD

        self.weights = {k: float(v) for k, v in weights.items() if float(v) != 0}
        train = {i: r for i, r in records.items() if r.split == "train"}
        self.references = {i: r.tokens for i, r in train.items()}
        self.metas = {i: r.meta for i, r in train.items()}
        if "object_f1" in self.weights and not all("objects" in m for m in self.metas.values()):
            raise ConfigError(
                "objective.reward.object_f1 needs the shapes ground truth (data=shapes*); set it to 0 here"
            )
        # Document frequencies from every training reference, once per run (not per minibatch).
        self.cider = CiderD(self.references) if "cider_d" in self.weights else None

    def __call__(self, captions: Sequence[list[str]], ids: Sequence[str]) -> np.ndarray:
        """Weighted reward per caption, (len(captions),)."""
        from captioner.metrics import bleu
        from captioner.metrics.grounding import object_scores

        total = np.zeros(len(captions))
        if self.cider is not None:
            total += self.weights["cider_d"] * np.asarray(self.cider.score(captions, ids)) / 100
        if "bleu4" in self.weights:
            scores = bleu(captions, [self.references[i] for i in ids]).per_caption["bleu4"]
            total += self.weights["bleu4"] * np.asarray(scores) / 100
        if "object_f1" in self.weights:
            f1 = [object_scores([c], [self.metas[i]])["object_f1"] for c, i in zip(captions, ids)]
            total += self.weights["object_f1"] * np.asarray(f1)
        return total


class SelfCritical:
    """``loss, parts = scst(model, inputs, batch, eps, features)`` for one minibatch of training images.

    ``fast``: sample and decode the baseline through the training fast path's compiled step, compiled
    for the device ``model`` is on (``train.fast_path.use_fast_path`` decides).
    """

    def __init__(
        self,
        cfg: DictConfig,
        model: torch.nn.Module,
        vocab: Vocab,
        records: Mapping[str, ImageRecord],
        fast: bool = False,
    ):
        check_scst(cfg)
        self.cfg = cfg
        self.model = model  # unwrapped: SCST calls decoder methods, not forward
        self.vocab = vocab
        self.reward = Reward(cfg.reward, records)
        self.compiled = None  # the fast path's (step, prologue)
        if fast:
            from captioner.decode.fast_rollout import policy_step
            from captioner.model.fast_train import check_fusable, compile_pass

            check_fusable(model.decoder)
            self.compiled = compile_pass(next(model.parameters()).device, policy_step)

    def sample(self, decoder: torch.nn.Module, annotations: Tensor) -> Rollout:
        """``objective.samples`` captions per image with their log-probabilities' graph."""
        from captioner.decode import sample_with_grad
        from captioner.decode.fast_rollout import sample_fused

        k, max_len = self.cfg.samples, self.cfg.max_len
        if self.compiled is None:
            return sample_with_grad(decoder, annotations, k, max_len)
        if annotations.device.type == "cuda":  # a new step: the last one's CUDA-graph outputs are free
            torch.compiler.cudagraph_mark_step_begin()
        return sample_fused(decoder, annotations, k, max_len, 1.0, *self.compiled)

    def greedy_tokens(self, decoder: torch.nn.Module, annotations: Tensor) -> Tensor:
        """The greedy caption's word ids per image, (B, T), decoded in eval mode."""
        from captioner.decode import greedy
        from captioner.decode.fast_rollout import greedy_fused

        if self.compiled is None:
            return greedy(decoder, annotations, self.cfg.max_len).tokens[:, 0]
        return greedy_fused(decoder, annotations, self.cfg.max_len, *self.compiled)

    def words(self, tokens: Tensor) -> list[list[str]]:
        """Token ids (N, T) -> word lists without special tokens."""
        return [[w for w in self.vocab.decode(row) if w not in SPECIALS] for row in tokens.tolist()]

    def __call__(
        self, model: torch.nn.Module, inputs: Tensor, batch: Mapping[str, Any], eps: float, features: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The self-critical loss of one batch and its parts (reward, baseline, entropy, sample length)."""
        del model, eps  # SCST samples from the unwrapped model and never teacher-forces
        model = self.model
        annotations, _ = model.annotate(inputs, features)
        k, ids = self.cfg.samples, list(batch["image_ids"])
        rollout = self.sample(model.decoder, annotations)
        sample_ids = [i for i in ids for _ in range(k)]
        rewards = self.reward(self.words(rollout.tokens.flatten(0, 1)), sample_ids).reshape(len(ids), k)
        if self.cfg.baseline == "greedy":
            model.eval()  # the test-time decode (dropout off, hard attention's argmax) is the baseline
            try:
                best = self.greedy_tokens(model.decoder, annotations.detach())
            finally:
                model.train()
            baseline = self.reward(self.words(best), ids)[:, None].repeat(k, axis=1)
        else:  # the mean reward of the other k-1 samples of the same image
            baseline = (rewards.sum(axis=1, keepdims=True) - rewards) / (k - 1)
        advantage = torch.as_tensor(
            rewards - baseline, dtype=rollout.log_probs.dtype, device=annotations.device
        )
        mask = rollout.mask.to(rollout.log_probs.dtype)
        loss = -(advantage[..., None] * rollout.log_probs).sum() / mask.sum().clamp_min(1.0)
        parts = {
            "reward": torch.tensor(float(rewards.mean())),
            "baseline": torch.tensor(float(baseline.mean())),
            "entropy": (rollout.entropy * mask).sum() / mask.sum().clamp_min(1.0),
            "sample_length": mask.sum(-1).mean(),
        }
        return loss, parts
