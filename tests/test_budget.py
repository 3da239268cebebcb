import pytest

from sglang_autoperf.plan.budget import BudgetError, parse_vram_budget

FREE = 80 * 1024**3


@pytest.mark.parametrize("text,expected", [
    ("24GiB", 24 * 1024**3),
    ("24000MiB", 24000 * 1024**2),
    ("24GB", 24 * 1000**3),
    (" 24 gib ", 24 * 1024**3),
    ("1.5GiB", int(1.5 * 1024**3)),
    ("0.5", FREE // 2),
    ("1", FREE),
    ("1.0", FREE),
])
def test_accepted_forms(text, expected):
    assert parse_vram_budget(text, FREE) == expected


@pytest.mark.parametrize("text", ["", "abc", "24 parsecs", "0", "1.5", "-3GiB", "0GiB", "GiB", "24GiB extra", "0.0"])
def test_bad_values_name_the_value_and_forms(text):
    with pytest.raises(BudgetError) as exc:
        parse_vram_budget(text, FREE)
    msg = str(exc.value)
    assert repr(text) in msg
    assert "GiB" in msg and "fraction" in msg


def test_budget_error_is_value_error():
    assert issubclass(BudgetError, ValueError)


@pytest.mark.parametrize("text, fragment", [
    ("9" * 310 + "GiB", "over 1 PiB"),  # a float overflow (inf) before
    ("2000TiB", "over 1 PiB"),
    ("0.0000000000001", "rounds to 0 bytes"),  # was 0 bytes, which means "no budget"
    ("1e-12", "not understood"),
])
def test_absurd_budgets_are_errors(text, fragment):
    with pytest.raises(BudgetError, match=fragment):
        parse_vram_budget(text, FREE)


def test_a_fraction_of_a_few_free_bytes_is_still_positive():
    assert parse_vram_budget("0.5", 3) == 1
