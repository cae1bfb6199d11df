"""Every event type that is not catalog-only has an emitting action and an end-to-end test."""

from __future__ import annotations

import importlib
import pkgutil

import domain.modules  # noqa: F401 - registers every module's emitters
import tests.domain
from domain.base import EMITTERS
from outbox import schemas


def _required() -> set[str]:
    return {e.event_type for e in schemas.registry if not e.catalog_only}


def _covered() -> dict[str, list[str]]:
    covered: dict[str, list[str]] = {}
    for info in pkgutil.iter_modules(tests.domain.__path__):
        if not info.name.startswith("test_") or info.name == "test_coverage":
            continue
        mod = importlib.import_module(f"tests.domain.{info.name}")
        for et in getattr(mod, "COVERED", set()):
            covered.setdefault(et, []).append(info.name)
    return covered


def test_every_non_catalog_only_type_has_an_emitting_action():
    missing = sorted(_required() - set(EMITTERS))
    assert not missing, f"{len(missing)} event type(s) without an emitting action: {missing}"


def test_every_non_catalog_only_type_has_an_end_to_end_test():
    missing = sorted(_required() - set(_covered()))
    assert not missing, f"{len(missing)} event type(s) without a test: {missing}"


def test_catalog_only_types_have_no_action():
    catalog_only = {e.event_type for e in schemas.registry if e.catalog_only}
    assert len(catalog_only) == 11
    assert not (catalog_only & set(EMITTERS)), sorted(catalog_only & set(EMITTERS))


def test_covered_sets_name_real_event_types():
    unknown = sorted(set(_covered()) - {e.event_type for e in schemas.registry})
    assert not unknown, unknown
