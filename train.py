"""Train a Show, Attend and Tell captioner: `python train.py encoder=shufflenet tf=inv_sigmoid`.

A thin wrapper for the checkout; installed, the same command is `captioner-train` (captioner.commands.train).
"""

from captioner.commands.train import main

if __name__ == "__main__":
    main()
