"""Caption image files: `python caption.py checkpoint=runs/.../best.pt images=photos/ decode=beam decode.n_best=3`.

A thin wrapper for the checkout; installed, the same command is `captioner-caption` (captioner.commands.caption).
"""

from captioner.commands.caption import main

if __name__ == "__main__":
    main()
