"""The bottom layer: device and precision, torchrun distributed set-up, checkpoint I/O and atomic writes.

Nothing here imports another captioner package but ``captioner.errors``.
"""
