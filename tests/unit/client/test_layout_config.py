"""Site layout (labels.csv / class folders), label mapping and the site TOML."""

from __future__ import annotations

import pytest
from conftest import write_labels

from client.data.layout import Item, list_items, map_labels
from client.site.config import SiteConfig, parse_preprocess, read_label_map
from common.errors import ConfigError
from common.preprocess_params import PreprocessParams


def test_labels_csv_layout(tmp_path):
    # Prepare
    write_labels(tmp_path, [("images/b.dcm", "B"), ("images\\a.png", "A"), ("", "")])
    # Execute
    items = list_items(tmp_path)
    # Assert
    assert items == [Item("images/a.png", "A"), Item("images/b.dcm", "B")]


def test_class_folder_layout_skips_hidden_and_non_images(tmp_path):
    # Prepare
    for rel in ("stem-a/1.dcm", "stem-a/sub/2.png", "stem-b/3.PNG", "stem-b/notes.txt", ".implantfl-cache/x.npz",
                "stem-b/.hidden/4.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    # Execute
    items = list_items(tmp_path)
    # Assert
    assert items == [Item("stem-a/1.dcm", "stem-a"), Item("stem-a/sub/2.png", "stem-a"), Item("stem-b/3.PNG", "stem-b")]


@pytest.mark.parametrize(
    ("rows", "text"),
    [
        ([("../outside.dcm", "A")], "inside"),
        ([("/etc/passwd", "A")], "inside"),
        ([("a.dcm", "")], "both file and label"),
        ([("a.dcm", "A"), ("./a.dcm", "B")], "twice"),
    ],
    ids=["parent", "absolute", "no-label", "duplicate"],
)
def test_bad_labels_csv_rows_are_config_errors_naming_the_line_not_the_file(tmp_path, rows, text):
    write_labels(tmp_path, rows)
    with pytest.raises(ConfigError) as info:
        list_items(tmp_path)
    assert text in str(info.value) and "line" in str(info.value)
    assert "passwd" not in str(info.value) and "outside" not in str(info.value)


@pytest.mark.parametrize(
    "setup",
    [lambda p: (p / "labels.csv").write_text("name,kind\nx,y\n"), lambda p: None],
    ids=["bad-header", "empty-folder"],
)
def test_unusable_layouts(tmp_path, setup):
    setup(tmp_path)
    with pytest.raises(ConfigError):
        list_items(tmp_path)


def test_unknown_labels_are_listed_by_name_without_paths(catalog):
    # Prepare
    items = [Item("secret/Smith_John.dcm", "Mystery Stem"), Item("x.dcm", "Local A"), Item("y.dcm", "Other")]
    # Execute
    with pytest.raises(ConfigError) as info:
        map_labels(items, catalog, {"Local A": "stem-a"})
    # Assert
    msg = str(info.value)
    assert "'Mystery Stem'" in msg and "'Other'" in msg and "Local A" not in msg
    assert "Smith" not in msg and "secret" not in msg


@pytest.mark.parametrize(
    ("label_map", "expected"),
    [({"Local A": "stem-a"}, {"Local A": "stem-a"}), (None, None)],
)
def test_map_labels(catalog, label_map, expected):
    items = [Item("x.dcm", "Local A")] if label_map else [Item("x.dcm", "stem-b")]
    assert map_labels(items, catalog, label_map) == (expected or {"stem-b": "stem-b"})


def test_label_mapped_to_an_id_outside_the_catalog(catalog):
    with pytest.raises(ConfigError, match="'stem-z'"):
        map_labels([Item("x.dcm", "A")], catalog, {"A": "stem-z"})


# ---------------------------------------------------------------------------- site TOML
def _write(tmp_path, text):
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_site_config_defaults_and_relative_paths(tmp_path):
    # Prepare
    path = _write(tmp_path, '[site]\nname = "hosp-a"\ndata-dir = "xrays"\n\n[labels]\n"A" = "stem-a"\n'
                            '[preprocess]\nimage-size = 96\nroi-margin = 0\ninvert = true\n'
                            '[tls]\nroot-certificates = "ca.crt"\n')
    # Execute
    cfg = SiteConfig.load(path)
    # Assert
    assert cfg.name == "hosp-a" and cfg.data_dir == (tmp_path / "xrays").resolve()
    assert cfg.cache_dir == cfg.data_dir / ".implantfl-cache" and cfg.catalog_path is None
    assert cfg.label_map == {"A": "stem-a"}
    assert cfg.preprocess == PreprocessParams(image_size=96, roi_margin=0.0, invert=True)
    assert cfg.extra == {"tls": {"root-certificates": "ca.crt"}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[site]\nname = "a"\n[spam]\nx = 1\n', "unknown section"),
        ('[site]\nname = "a"\ncolour = "red"\n', "unknown key(s) in [site]: colour"),
        ('[site]\ndata-dir = "."\n', "name is required"),
        ('[site]\nname = "a"\n[preprocess]\nimage_size = 64\n', "unknown key(s) in [preprocess]: image_size"),
        ('[site]\nname = "a"\n[preprocess]\nimage-size = "64"\n', "image-size must be of type int"),
        ('[site]\nname = "a"\n[preprocess]\ninvert = 1\n', "invert must be of type bool"),
        ('[site]\nname = "a"\n[preprocess]\nimage-size = 8\n', "image-size must be between"),
        ('[site]\nname = "a"\n[labels]\n"A" = 3\n', "[labels] values"),
        ('[site]\nname = "a"\nlabels = 3\n', "unknown key"),
        ("[site\n", "not valid TOML"),
        ('[site]\nname = "a"\n[privacy]\nmax-epsilon = -1.0\n', "max-epsilon"),
        ('[site]\nname = "a"\n[privacy]\nbudget = 3\n', "unknown privacy policy key"),
    ],
    ids=["section", "site-key", "no-name", "snake-case", "type-int", "type-bool", "range", "label-type", "misplaced",
         "syntax", "privacy-range", "privacy-key"],
)
def test_site_config_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        SiteConfig.load(_write(tmp_path, text))
    assert message in str(info.value) and str(tmp_path) not in str(info.value)


def test_sections_owned_by_other_modules_pass_through_untouched(tmp_path):
    text = '[site]\nname = "a"\n[tls]\nroot-certificates = "ca.crt"\n[superlink]\naddress = "h:1"\n'
    cfg = SiteConfig.load(_write(tmp_path, text))
    assert cfg.extra == {"tls": {"root-certificates": "ca.crt"}, "superlink": {"address": "h:1"}}


def test_missing_site_config_names_no_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        SiteConfig.load(tmp_path / "nowhere" / "site.toml")
    assert "nowhere" not in str(info.value)


def test_float_fields_accept_integers():
    assert parse_preprocess({"clahe-clip": 3}).clahe_clip == 3.0


def test_read_label_map(tmp_path):
    assert read_label_map(tmp_path) is None
    _write(tmp_path, '[site]\nname = "a"\n[labels]\n"Local A" = "stem-a"\n')
    assert read_label_map(tmp_path) == {"Local A": "stem-a"}
