import pytest

from common.catalog import Catalog, ImplantClass
from common.errors import CatalogError


def _catalog(*ids: str) -> Catalog:
    return Catalog("test", "1.0", tuple(ImplantClass(i, "Maker", i.upper()) for i in ids))


def test_save_load_roundtrip_keeps_order_and_fingerprint(tmp_path):
    cat = _catalog("b-stem", "a-stem", "c-cup")
    cat.save(tmp_path / "catalog.json")
    back = Catalog.load(tmp_path / "catalog.json")
    assert back.ids == ["b-stem", "a-stem", "c-cup"]
    assert back.fingerprint() == cat.fingerprint()
    assert back.index_of("c-cup") == 2


def test_fingerprint_changes_when_a_class_changes():
    assert _catalog("a", "b").fingerprint() != _catalog("a", "c").fingerprint()
    assert _catalog("a", "b").fingerprint() != _catalog("b", "a").fingerprint()


@pytest.mark.parametrize("ids", [("a", "a"), ("Bad Id",), ()])
def test_invalid_catalogs_are_rejected(ids):
    with pytest.raises(CatalogError):
        _catalog(*ids)


def test_unknown_label_is_a_clear_error():
    with pytest.raises(CatalogError, match="'zzz' is not in catalog test v1.0"):
        _catalog("a").index_of("zzz")


def test_unreadable_file_names_no_path(tmp_path):
    bad = tmp_path / "secret-name.json"
    bad.write_text("{not json")
    with pytest.raises(CatalogError) as info:
        Catalog.load(bad)
    assert "secret-name" not in str(info.value)
