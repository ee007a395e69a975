"""The argument checks that the library's modules share."""

import pytest

from equilib._checks import check_positive_int, is_int


def test_is_int_takes_ints_and_nothing_that_only_looks_like_one():
    assert is_int(0) and is_int(-3) and is_int(10**20)
    assert not any(is_int(v) for v in (True, False, 2.0, "2", None))


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "3", None])
def test_check_positive_int_names_the_argument_and_the_value(bad):
    with pytest.raises(ValueError, match=rf"^epochs must be a positive integer, got {bad!r}$"):
        check_positive_int("epochs", bad)


def test_check_positive_int_lets_a_count_through():
    assert check_positive_int("epochs", 1) is None
