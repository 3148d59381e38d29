"""Score a checkpoint on prepared splits: `python evaluate.py checkpoint=runs/.../best.pt split=all decode=beam`.

A thin wrapper for the checkout (`torchrun ... evaluate.py` too); installed, the same command is
`captioner-evaluate` (captioner.commands.evaluate).
"""

from captioner.commands.evaluate import main

if __name__ == "__main__":
    main()
