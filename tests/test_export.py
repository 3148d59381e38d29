"""captioner.export: the exported greedy captioner reproduces the Python model's captions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TinyRun

from captioner.data.dataset import ImageDataset
from captioner.data.transforms import build_eval_transform
from captioner.decode import greedy
from captioner.errors import DataError
from captioner.export import export_program, load_exported, main
from captioner.model.load import load_captioner

MAX_LEN = 10


@pytest.fixture(scope="module")
def exported(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_program(tiny_run.checkpoint, tmp_path_factory.mktemp("export") / "model.pt2", MAX_LEN)


def test_export_gives_the_same_greedy_captions(tiny_run: TinyRun, exported: Path):
    model = load_exported(exported)
    loaded = load_captioner(tiny_run.checkpoint)
    assert model.vocab == loaded.vocab and model.image_size == loaded.image_size and model.max_len == MAX_LEN
    data = ImageDataset(tiny_run.data_root, "test", build_eval_transform(loaded.image_size))
    real = torch.stack([data[i]["image"] for i in range(3)])
    for images in (real, real[:1], torch.rand(2, *real.shape[1:])):  # dynamic batch size, unseen inputs
        with torch.inference_mode():
            annotations, _ = loaded.model.encode(images)
            expected = greedy(loaded.model.decoder, annotations, max_len=MAX_LEN)
            tokens, alphas = model.module(images)
        steps = expected.tokens.shape[2]
        assert torch.equal(tokens[:, :steps], expected.tokens[:, 0])
        assert (tokens[:, steps:] == 0).all()  # <pad> after every caption ended
        torch.testing.assert_close(alphas[:, :steps], expected.alphas[:, 0], atol=1e-5, rtol=1e-4)
        assert model.caption(images) == [loaded.vocab.decode(row) for row in expected.tokens[:, 0].tolist()]


def test_export_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["out=x.pt2"]) == 2
    assert main(["checkpoint=a.pt", "bogus=1"]) == 2
    assert main([f"checkpoint={tmp_path / 'missing.pt'}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert "needs checkpoint=" in lines[0] and "bogus" in lines[1] and "checkpoint not found" in lines[2]


def test_loading_a_non_export_is_one_line_error(tiny_run: TinyRun):
    with pytest.raises(DataError, match="is not a captioner export"):
        load_exported(tiny_run.checkpoint)
