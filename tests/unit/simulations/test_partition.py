import numpy as np
import pytest
from rich.console import Console

from common.errors import ConfigError
from simulations.datasets.partition import (
    ACQUISITION_STYLES,
    by_manufacturer,
    make_partition,
    mean_class_entropy,
    parse_spec,
)

CLASSES = 6
LABELS = np.repeat(np.arange(CLASSES), 40)  # 240 examples, 40 per class
MAKERS = ["acme", "acme", "borealis", "borealis", "corvid", "corvid"]  # maker of class k
SPECS = [
    "iid:sites=4",
    "dirichlet:sites=4,alpha=0.3",
    "quantity:sites=4,beta=0.5",
    "manufacturer",
    "manufacturer:hospitals=2,share=0.5,alpha=0.5",
]


def _make(spec, seed=0, labels=LABELS, **kw):
    return make_partition(spec, labels, seed=seed, manufacturers=MAKERS, **kw)


def _same(a, b):
    return a.sites.keys() == b.sites.keys() and all(np.array_equal(a.sites[s], b.sites[s]) for s in a.sites)


@pytest.mark.parametrize("spec", SPECS)
def test_partition_is_deterministic_for_a_seed_and_covers_every_example_once(spec):
    # Execute
    a, b, other = _make(spec, seed=3), _make(spec, seed=3), _make(spec, seed=4)
    # Assert
    assert _same(a, b)
    assert not _same(a, other) or spec == "manufacturer"  # pure manufacturer split has no randomness
    together = np.concatenate(list(a.sites.values()))
    assert sorted(together.tolist()) == list(range(len(LABELS)))


def test_manufacturer_sites_hold_only_their_own_classes():
    part = _make("manufacturer")
    counts = part.counts(LABELS, CLASSES)
    assert list(part.sites) == ["mfr-acme", "mfr-borealis", "mfr-corvid"]
    for (site, _), row in zip(part.sites.items(), counts, strict=True):
        held = {MAKERS[k] for k in np.flatnonzero(row)}
        assert held == {site.removeprefix("mfr-")}
    assert set(part.kinds.values()) == {"manufacturer"}


def test_manufacturer_share_leaves_the_rest_to_skewed_hospitals():
    part = by_manufacturer(LABELS, MAKERS, hospitals=2, share=0.25, alpha=0.5, seed=1)
    makers = [s for s, k in part.kinds.items() if k == "manufacturer"]
    hospitals = [s for s, k in part.kinds.items() if k == "hospital"]
    assert len(makers) == 3 and hospitals == ["hospital-01", "hospital-02"]
    assert sum(len(part.sites[s]) for s in makers) == pytest.approx(0.25 * len(LABELS), abs=CLASSES)
    assert all(part.styles[h] in ACQUISITION_STYLES for h in hospitals)


def test_small_dirichlet_alpha_gives_high_label_skew():
    # Execute: average over seeds so the comparison does not hinge on one draw
    skewed = np.mean([mean_class_entropy(_make("dirichlet:sites=5,alpha=0.05", seed=s).counts(LABELS, CLASSES))
                      for s in range(5)])
    mild = np.mean([mean_class_entropy(_make("dirichlet:sites=5,alpha=100", seed=s).counts(LABELS, CLASSES))
                    for s in range(5)])
    # Assert: near-IID sites are close to log2(6) = 2.58 bits; alpha = 0.05 sites hold ~1-2 classes
    assert mild > 2.4
    assert skewed < 1.3


def test_dirichlet_hospitals_get_acquisition_styles():
    part = _make("dirichlet:sites=4,alpha=0.5")
    assert list(part.styles) == list(part.sites)
    assert len(set(part.styles.values())) == 4 and set(part.styles.values()) <= set(ACQUISITION_STYLES)


def test_quantity_skew_sizes_differ_but_labels_stay_mixed():
    part = _make("quantity:sites=4,beta=0.5", seed=2)
    sizes = np.array([len(i) for i in part.sites.values()])
    assert sizes.max() >= 2 * sizes.min()
    assert sizes.min() >= 1
    iid = _make("iid:sites=4", seed=2)
    assert np.ptp([len(i) for i in iid.sites.values()]) <= 1


@pytest.mark.parametrize("spec", ["iid:sites=3", "dirichlet:sites=3,alpha=0.5", "quantity:sites=3"])
def test_a_patient_never_straddles_two_sites(spec):
    # Prepare: 60 patients with 4 images each
    groups = np.repeat([f"p{i}" for i in range(60)], 4)
    labels = np.repeat(np.arange(60) % 3, 4)
    # Execute
    part = make_partition(spec, labels, seed=0, groups=groups)
    # Assert
    owner = {}
    for site, idx in part.sites.items():
        for g in set(groups[idx]):
            assert owner.setdefault(g, site) == site


def test_natural_site_partition_uses_the_dataset_sites():
    part = make_partition("site", np.zeros(4, int), site_of=["Leeds", "Oslo", "Leeds", "Oslo"])
    assert {s: i.tolist() for s, i in part.sites.items()} == {"leeds": [0, 2], "oslo": [1, 3]}


def test_table_shows_a_row_per_site_and_a_column_per_class():
    # Prepare
    part = _make("manufacturer:hospitals=1,share=0.5")
    names = [f"class{k}" for k in range(CLASSES)]
    # Execute
    table = part.table(LABELS, names)
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    # Assert
    assert table.row_count == 4 and len(table.columns) == 4 + CLASSES
    assert "mfr-acme" in text and "hospital-01" in text and "class5" in text and "entropy" in text


@pytest.mark.parametrize(
    ("spec", "match"),
    [("stripes:sites=2", "unknown partition"), ("iid:alpha=1", "bad parameter"),
     ("dirichlet:sites=two", "must be a int"), ("iid:sites=500", "cannot make"),
     ("dirichlet:alpha=0", "alpha must be > 0")],
)
def test_bad_specs_are_refused_with_a_reason(spec, match):
    with pytest.raises(ConfigError, match=match):
        _make(spec)


def test_parse_spec_reads_typed_parameters():
    assert parse_spec("dirichlet:sites=4,alpha=0.3") == ("dirichlet", {"sites": 4, "alpha": 0.3})
