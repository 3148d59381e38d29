"""Training: the loop, teacher-forcing schedules, optimisers and LR schedules, checkpoints, distributed setup."""
