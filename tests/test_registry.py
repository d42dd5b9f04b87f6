import pytest

from auto_round_mllm.errors import UnknownName
from auto_round_mllm.registry import Registry


def test_names_are_normalized_and_aliases_resolve():
    reg: Registry[int] = Registry("thing")
    reg.add("auto_round", 1, aliases=("auto_round:auto_gptq",))
    assert reg.get("auto-round") == 1
    assert reg.get("AUTO_ROUND:AUTO_GPTQ") == 1
    assert "auto-round" in reg
    assert reg.names() == ["auto_round"]


def test_unknown_name_suggests_closest():
    reg: Registry[int] = Registry("export format")
    reg.add("auto_round", 1)
    reg.add("fake", 2)
    with pytest.raises(UnknownName) as info:
        reg.get("auto_rnd")
    message = str(info.value)
    assert "unknown export format 'auto_rnd'" in message
    assert "did you mean 'auto_round'" in message
    assert "fake" in message


def test_duplicates_are_refused_unless_replaced():
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError):
        reg.add("a", 2)
    reg.add("a", 3, replace=True)
    assert reg.get("a") == 3


def test_decorator_registers():
    reg: Registry[type] = Registry("thing")

    @reg.register("widget")
    class Widget:
        pass

    assert reg.get("widget") is Widget
