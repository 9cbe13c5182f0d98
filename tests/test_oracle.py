"""Toy oracles: the training data without the concept (checked on the data pipeline itself), the
command-line checks, and loading an oracle folder that holds only what differs from the shipped model."""

import json

import numpy as np
import pytest

from studio.toyworld.captions import caption
from studio.toyworld.grammar import CONCEPTS, concept
from studio.toyworld.train import Pool, TrainConfig


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return Pool(TrainConfig(pool_size=600), tmp_path_factory.mktemp("pool"))


def _words(name):
    c = CONCEPTS[name]
    return (*c.words, *c.aliases)


@pytest.mark.parametrize("name", ["triangle", "striped", "red"])
def test_oracle_data_has_no_image_and_no_caption_of_the_concept(pool, name):
    import copy

    p = copy.copy(pool)
    before = sum(labels[concept(name).attribute] == name for labels in pool.labels)
    assert before > 0  # the full pool has the concept, so the check below can fail
    dropped = p.exclude(name)
    assert dropped == before and len(p.labels) == len(pool.labels) - before == len(p.images)
    assert all(labels[concept(name).attribute] != name for labels in p.labels)
    # the images left are the pool's own images of the other labels, in order
    keep = [i for i, labels in enumerate(pool.labels) if labels[concept(name).attribute] != name]
    assert np.array_equal(p.images, pool.images[keep])
    # captions are drawn from the labels: many draws per image never name the concept
    rng = np.random.default_rng(0)
    for labels in p.labels[:200]:
        for _ in range(10):
            text = f" {caption(labels, rng)} "
            assert not any(f" {w} " in text or f" {w}," in text for w in _words(name)), text


def test_a_background_or_unknown_concept_is_refused(pool, tmp_path):
    import copy

    with pytest.raises(ValueError, match="background"):
        copy.copy(pool).exclude("dark")
    from studio.cli import main

    assert main(["toyworld", "train", "--without", "hexagon", "--quick", "--work", str(tmp_path / "w")]) == 2
    assert not (tmp_path / "w" / "export").exists()


def test_quick_training_is_never_installed(tmp_path, capsys):
    from studio.cli import main

    assert main(["toyworld", "train", "--quick", "--install", "--work", str(tmp_path / "w")]) == 2
    assert "never installed" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_an_oracle_folder_loads_as_a_complete_pipeline(tmp_path, toy_pipe):
    """Only the text encoder and UNet are written; the loader completes the pipeline from the shipped model."""
    from studio.loading import load_pipeline
    from studio.text_encoder import save_text_encoder

    folder = tmp_path / "toy-oracle-triangle"
    save_text_encoder(toy_pipe.text_encoder, folder / "text_encoder")
    toy_pipe.unet.save_pretrained(folder / "unet", safe_serialization=True)
    (folder / "oracle.json").write_text(
        json.dumps({"kind": "oracle", "base_model": "toy", "components": ["text_encoder", "unet"], "without": "triangle"})
    )
    assert sorted(p.name for p in folder.iterdir()) == ["oracle.json", "text_encoder", "unet"]
    pipe = load_pipeline(folder, device="cpu")
    assert pipe.vae.config.scaling_factor == toy_pipe.vae.config.scaling_factor
    for (k, a), b in zip(toy_pipe.unet.state_dict().items(), pipe.unet.state_dict().values()):
        assert a.equal(b), k
