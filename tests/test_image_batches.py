"""Batches of whole images (data.loader.group_by_image): each image encoded once for all its captions."""

from __future__ import annotations

import torch
from hydra import compose, initialize_config_dir
from test_decoder import D, batch, tiny
from test_train import REPO, fast_overrides, shapes_data  # noqa: F401 - shapes_data is a fixture

from captioner.model.captioner import Captioner
from captioner.model.encoder import build_encoder


def test_image_index_gives_each_caption_its_images_annotations():
    enc = build_encoder("shufflenet_v2_x0_5", pretrained=False, encoder_dim=D, encoder_size=2).eval()
    model = Captioner(enc, tiny()).eval()
    images = torch.rand(2, 3, 64, 64)
    _, captions = batch(b=5)
    index = torch.tensor([0, 0, 1, 0, 1])
    with torch.no_grad():
        shared = model(images, captions, image_index=index).logits
        repeated = model(images[index], captions).logits  # one encoder pass per caption
    assert torch.allclose(shared, repeated, atol=1e-6)


def test_fine_tuning_on_whole_image_batches_encodes_each_image_once(
    shapes_data,  # noqa: F811 - a fixture
    tmp_path,
    monkeypatch,
):
    from captioner.config import register
    from captioner.model.encoder import Encoder
    from captioner.train.loop import train

    encoded: list[int] = []
    real_forward = Encoder.forward

    def counting_forward(self, images):
        if self.training:
            encoded.append(images.shape[0])
        return real_forward(self, images)

    monkeypatch.setattr(Encoder, "forward", counting_forward)
    overrides = [
        *fast_overrides(shapes_data, tmp_path / "run"),
        "trainer.epochs=1",
        "encoder.finetune=true",
        "data.loader.group_by_image=true",
        "data.loader.batch_size=10",
    ]
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    monkeypatch.setattr("sys.argv", ["train.py"])
    metrics = train(cfg, tmp_path / "run")
    assert sum(encoded) == 40 and set(encoded) == {2}  # 40 images, 2 (x 5 captions) a step: each once
    assert metrics["test"]["bleu4"] >= 0
