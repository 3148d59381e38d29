"""The Hydra entry points: console scripts ``captioner-train``, ``captioner-evaluate``, ``captioner-caption``
(train.py, evaluate.py and caption.py in a checkout call the same ``main``)."""
