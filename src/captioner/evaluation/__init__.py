"""One evaluation path: decode a split and score it (``core``), for the training loop and for a saved
checkpoint (``checkpoint``); report writers (``report``) and temperature calibration (``calibrate``)."""

from captioner.evaluation.core import TEST_METRICS, VALIDATION_METRICS, SplitResult, evaluate_split

__all__ = ["TEST_METRICS", "VALIDATION_METRICS", "SplitResult", "evaluate_split"]
