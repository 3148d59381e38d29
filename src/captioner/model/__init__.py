"""Show, Attend and Tell model: encoder zoo, soft attention, LSTM decoder, loss and calibration."""

from captioner.model.calibration import fit_temperature
from captioner.model.captioner import Captioner
from captioner.model.decoder import Decoder, DecoderOutput
from captioner.model.embeddings import load_glove
from captioner.model.encoder import ARCHS, Encoder, build_encoder
from captioner.model.loss import caption_loss
from captioner.model.state import DecoderState

__all__ = [
    "ARCHS",
    "Captioner",
    "Decoder",
    "DecoderOutput",
    "DecoderState",
    "Encoder",
    "build_encoder",
    "caption_loss",
    "fit_temperature",
    "load_glove",
]
