"""`studio edit` end to end on a tiny model saved to disk: edit, save the inversion, edit again from it, clear errors."""

import pytest

from conftest import build_tiny_pipe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_pipe().save_pretrained(str(path))
    return path


def _image(path):
    from PIL import Image

    from studio.toyworld.render import render

    Image.fromarray(render({"shape": "circle", "colour": "red"}, seed=0).image).resize((60, 48)).save(path)
    return path


def test_methods_listed_in_step():
    import inversion
    import inversion.cli
    from inversion.editing import INVERTERS

    assert inversion.METHODS == inversion.cli.METHODS == tuple(INVERTERS)


def test_studio_edit_and_reuse_of_the_inversion(model_dir, tmp_path, capsys):
    from studio.cli import main

    image = _image(tmp_path / "in.png")
    inv = tmp_path / "in.inv.safetensors"
    args = ["edit", "--model", str(model_dir), "--image", str(image), "--source", "a red circle", "--steps", "4"]
    rc = main(
        [
            *args,
            "--target",
            "a blue circle",
            "--target",
            "a green circle",
            "--blend",
            "circle | circle",
            "--method",
            "negative-prompt",
            "--save-inversion",
            str(inv),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "blend-mask-0.png",
        "blend-mask-1.png",
        "edit-0-a-blue-circle.png",
        "edit-1-a-green-circle.png",
        "grid.png",
        "input.png",
        "reconstruction.png",
    ]
    out = capsys.readouterr().out
    assert "image 60x48, centre-cropped to 48x48, resized to 32x32" in out and "inversion saved to" in out
    rc = main(
        [
            "edit",
            "--model",
            str(model_dir),
            "--inversion",
            str(inv),
            "--source",
            "a red circle",
            "--target",
            "a green circle",
            "--reweight",
            "green=2",
            "--out",
            str(tmp_path / "again"),
        ]
    )
    assert rc == 0 and (tmp_path / "again" / "edit-0-a-green-circle.png").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--image", "missing.png"], "no image file at missing.png"),
        (["--image", "IMG", "--reweight", "blue"], "reweight 'blue': write WORD=SCALE"),
        (["--image", "IMG", "--blend", "red | "], "blend 'red |': write WORDS, or SOURCE WORDS | TARGET WORDS"),
        (["--image", "IMG", "--blend", "red, square"], "square"),
        (["--image", "IMG", "--mode", "replace", "--target", "a big blue circle"], "same number of words"),
        ([], "give --image"),
    ],
)
def test_studio_edit_errors_name_the_fix(model_dir, tmp_path, capsys, extra, message):
    from studio.cli import main

    image = str(_image(tmp_path / "in.png"))
    extra = [image if a == "IMG" else a for a in extra]
    target = [] if "--target" in extra else ["--target", "a blue circle"]
    rc = main(
        ["edit", "--model", str(model_dir), "--source", "a red circle", "--steps", "2", "--out", str(tmp_path / "o"), *target, *extra]
    )
    assert rc == 2
    assert message in capsys.readouterr().err
