"""Many models in one inference function: loaded by name on first use, kept current, LRU."""

from __future__ import annotations

import threading
import tracemalloc
from dataclasses import replace
from typing import Any

import pytest

from lepton_runtime.errors import NotFoundError
from lepton_runtime.inference.catalog import ModelCatalog
from lepton_runtime.inference.registry import ModelRegistry
from lepton_runtime.models.store import ModelStore
from lepton_runtime.settings import Settings
from lepton_runtime.storage import Storage


@pytest.fixture
def catalog_for(s3: Any, settings: Settings):
    made: list[ModelCatalog] = []

    def make(**changes: Any) -> ModelCatalog:
        store = ModelStore(Storage(s3), settings.models)
        catalog = ModelCatalog(replace(settings, **changes), store)
        made.append(catalog)
        return catalog

    yield make
    for catalog in made:
        catalog.stop()


def test_a_published_model_is_served_by_name_on_first_use(publish, catalog_for) -> None:
    publish("v1")
    publish("c1", model="colours")
    catalog = catalog_for()

    assert not catalog.loaded("colours")
    classifier = catalog.require("colours")

    assert (classifier.name, classifier.version) == ("colours", "c1")
    assert catalog.loaded("colours")
    assert catalog.require("colours") is classifier


def test_an_unpublished_name_is_not_found_and_names_what_is_served(publish, catalog_for) -> None:
    publish("v1")
    publish("c1", model="colours")
    catalog = catalog_for()

    with pytest.raises(NotFoundError, match=r"no model named 'shapes'.*digits, colours"):
        catalog.require("shapes")
    with pytest.raises(NotFoundError):
        catalog.require("../etc")


def test_the_default_is_the_configured_model(publish, catalog_for) -> None:
    publish("v1")
    catalog = catalog_for()
    catalog.default.refresh()

    assert catalog.require().name == catalog.require("digits").name == "digits"
    assert catalog.published("digits") and not catalog.published("nothing")


def test_concurrent_first_requests_load_a_model_once(
    publish, catalog_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish("c1", model="colours")
    catalog = catalog_for()
    loads: list[str] = []
    refresh = ModelRegistry.refresh

    def counted(self: ModelRegistry) -> bool:
        loads.append(self.name)
        return refresh(self)

    monkeypatch.setattr(ModelRegistry, "refresh", counted)
    threads = [threading.Thread(target=catalog.require, args=("colours",)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert loads == ["colours"]


def test_concurrent_requests_for_an_unpublished_name_each_fail_and_keep_nothing(
    publish, catalog_for
) -> None:
    """Every waiter gets NotFoundError, and nothing of the name is kept after (a name kept
    per failed lookup was memory for good, whatever names requests made up)."""
    publish("v1")
    catalog = catalog_for()
    errors: list[Exception] = []

    def ask() -> None:
        try:
            catalog.require("shapes")
        except NotFoundError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert len(errors) == 8
    tracemalloc.start()
    try:
        for index in range(200):
            with pytest.raises(NotFoundError):
                catalog.require(f"{index}{'x' * 30_000}")
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert kept < 1024 * 1024, f"{kept} bytes kept after 200 unpublished 30 KB names"


def test_the_least_recently_used_model_is_unloaded_past_the_budget(publish, catalog_for) -> None:
    for name in ("a", "b", "c"):
        publish("v1", model=name)
    catalog = catalog_for(max_loaded_models=2)

    catalog.require("a")
    catalog.require("b")
    catalog.require("a")  # b is now the least recently used
    catalog.require("c")

    assert (catalog.loaded("a"), catalog.loaded("b"), catalog.loaded("c")) == (True, False, True)
    assert catalog.require("b").name == "b"  # loaded again when asked


def test_a_pin_applies_to_the_default_model_only(publish, catalog_for) -> None:
    publish("v1")
    publish("v2")
    publish("c1", model="colours", pointer=False)
    publish("c2", model="colours")
    catalog = catalog_for(model_version="v1")
    catalog.default.refresh()

    assert catalog.require().version == "v1"
    assert catalog.require("colours").version == "c2"


def test_a_new_version_of_a_loaded_model_is_picked_up_on_refresh(publish, catalog_for) -> None:
    publish("c1", model="colours")
    catalog = catalog_for()
    assert catalog.require("colours").version == "c1"

    publish("c2", model="colours")
    catalog.registry("colours").refresh()

    assert catalog.require("colours").version == "c2"


def test_the_published_answers_kept_stay_bounded_whatever_names_uploads_use(
    publish, catalog_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lepton_runtime.inference import catalog as catalog_module

    monkeypatch.setattr(catalog_module, "_PUBLISHED_CACHE_SIZE", 16)
    publish("v1")
    catalog = catalog_for()

    assert not any(catalog.published(f"folder-{n}") for n in range(100))
    assert len(catalog._published) <= 16
