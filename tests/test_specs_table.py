"""The plug-in table every kind of spec is registered in (p2p.specs)."""

from dataclasses import dataclass

import pytest

from p2p.errors import UsageError
from p2p.specs import Table, load


@dataclass(frozen=True)
class _Spec:
    name: str
    ref: str = "p2p.color:rgb_to_lab"


def test_a_table_lists_names_in_registration_order_and_refuses_a_second_registration():
    t = Table("thing.kind")
    t.register(_Spec("b"))
    t.register(_Spec("a"))
    assert t.names() == ("b", "a") and [s.name for s in t] == ["b", "a"] and len(t) == 2
    assert "a" in t and "c" not in t and t.get("c") is None
    with pytest.raises(ValueError, match="registered twice"):
        t.register(_Spec("a"))


def test_an_unknown_name_is_a_usage_error_naming_the_choices_and_the_nearest():
    t = Table("thing.kind")
    t.register(_Spec("colorize"))
    t.register(_Spec("paired"))
    with pytest.raises(UsageError, match=r"thing.kind='colorise' is not one of colorize, paired \(did you mean 'colorize'\?\)"):
        t["colorise"]


def test_a_reference_is_imported_when_loaded():
    from p2p import color

    assert load("p2p.color:rgb_to_lab") is color.rgb_to_lab
    with pytest.raises(ValueError):
        load("p2p.color")
