"""The one prompt-to-prompt option syntax (inversion.options): reweight WORD=SCALE pairs, blend WORDS or SRC | TGT."""

import pytest

from inversion.options import parse_blend, parse_reweight


@pytest.mark.parametrize(
    "given, expected",
    [
        ("blue=2, striped=0.5", {"blue": 2.0, "striped": 0.5}),
        (["blue=2", "striped=0.5"], {"blue": 2.0, "striped": 0.5}),
        (["blue=2, red=-1", " striped = 0.5 "], {"blue": 2.0, "red": -1.0, "striped": 0.5}),
        ("", {}),
        (None, {}),
        ([], {}),
    ],
)
def test_parse_reweight(given, expected):
    assert parse_reweight(given) == expected


@pytest.mark.parametrize("bad", ["blue", "blue:2", "=2", "blue=abc", "blue=nan", "blue=inf", "big blue=2", ["blue=2", "red"]])
def test_parse_reweight_errors_name_the_value_and_the_fix(bad):
    with pytest.raises(ValueError, match=r"write WORD=SCALE|finite number") as err:
        parse_reweight(bad)
    assert "'" in str(err.value) and "e.g." in str(err.value)


@pytest.mark.parametrize(
    "given, expected",
    [
        ("triangle", "triangle"),
        ("  triangle ", "triangle"),
        ("red circle", ["red", "circle"]),
        ("red, circle", ["red", "circle"]),
        ("red | blue", (["red"], ["blue"])),
        ("red circle | blue square", (["red", "circle"], ["blue", "square"])),
        ("red,circle|blue", (["red", "circle"], ["blue"])),
        ("", None),
        (None, None),
        (" , ", None),
    ],
)
def test_parse_blend(given, expected):
    assert parse_blend(given) == expected


@pytest.mark.parametrize("bad", ["red |", "| blue", "a | b | c", " | "])
def test_parse_blend_errors_name_the_fix(bad):
    with pytest.raises(ValueError, match=r"SOURCE WORDS \| TARGET WORDS.*e\.g\. 'red \| blue'"):
        parse_blend(bad)


def test_blend_forms_reach_the_controller():
    """Each parsed form means what it says to make_controller: words of both prompts, or source | target."""
    from inversion.control import split_blend_words

    assert split_blend_words(parse_blend("circle")) == (["circle"], ["circle"])
    assert split_blend_words(parse_blend("red circle")) == (["red", "circle"], ["red", "circle"])
    assert split_blend_words(parse_blend("red | blue")) == (["red"], ["blue"])
    assert split_blend_words(["a", "b", "c"]) == (["a", "b", "c"], ["a", "b", "c"])


def test_one_registry_of_inverters():
    import inversion
    import inversion.cli
    from inversion.editing import INVERTERS
    from inversion.result import METHODS

    assert inversion.METHODS == tuple(inversion.REGISTRY) == tuple(INVERTERS) == METHODS == inversion.cli.METHODS
    for name, (fn, config) in INVERTERS.items():
        assert callable(fn) and config.__name__ == inversion.REGISTRY[name][1]
