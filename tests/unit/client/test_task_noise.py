"""A site's task and the DP noise: a deployed site refuses a run that would seed its noise."""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord

from common.config import RunConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from client.site.config import SiteConfig
    from common.catalog import Catalog, ImplantClass
    from common.preprocess_params import PreprocessParams
    from tests.unit.client.conftest import draw_radiograph, write_labels, write_png

    root = tmp_path_factory.mktemp("noise-site")
    (root / "site" / "images").mkdir(parents=True)
    rows = []
    for k in range(6):
        write_png(root / "site" / f"images/img{k}.png", draw_radiograph(300 + k).image)
        rows.append((f"images/img{k}.png", "stem-a" if k < 3 else "stem-b"))
    write_labels(root / "site", rows)
    catalog = Catalog("test", "1", tuple(ImplantClass(f"stem-{k}", "Maker", f"Stem {k}") for k in "ab"))
    catalog.save(root / "catalog.json")

    def make(policy=None):  # noqa: ANN001, ANN202 - a deployed site's policy is its site.toml's (None = defaults)
        return SiteConfig(name="hosp-x", data_dir=root / "site", catalog_path=root / "catalog.json",
                           cache_dir=root / "cache", state_dir=root / f"state-{policy is None}",
                           preprocess=PreprocessParams(image_size=32), policy=policy, device="cpu")

    return make, catalog


def _train(runtime, catalog, **overrides):  # noqa: ANN001, ANN202
    from client import task
    from server.app import initial_arrays

    cfg = RunConfig(image_size=32, batch_size=4, val_fraction=0.0, num_server_rounds=1, **overrides)
    arrays: ArrayRecord = initial_arrays(cfg, catalog)
    config = {**cfg.to_flower(), "server-round": 1, "catalog-fingerprint": catalog.fingerprint()}
    return task.train(runtime, arrays, config, run_id=1)


def test_a_deployed_site_refuses_reproducible_noise(site):
    make, catalog = site
    reply = _train(make(), catalog, **{"reproducible_noise": True})
    status = reply.config_records["site"]
    assert status["status"] == "policy-refused"
    assert "reproducible noise" in status["reason"]
    assert not reply.array_records


def test_a_deployed_site_trains_the_same_run_with_secret_noise(site):
    make, catalog = site
    reply = _train(make(), catalog)
    assert reply.config_records["site"]["status"] == "ok"
    assert reply.metric_records["metrics"]["epsilon"] > 0
