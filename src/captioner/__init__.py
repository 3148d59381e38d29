"""captioner: Show, Attend and Tell image captioning experiments."""

__version__ = "0.1.0"
