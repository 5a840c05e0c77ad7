"""Tests of IAB taxonomy loading (`ad_orchestrator.taxonomy`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ad_orchestrator.errors import ConfigError
from ad_orchestrator.settings import DATA_DIR
from ad_orchestrator.taxonomy import Taxonomy, load_taxonomy


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy(DATA_DIR / "iab-taxonomy")


def test_all_three_taxonomies_share_one_namespace(taxonomy: Taxonomy) -> None:
    """Ad Product 2.0, Content 3.1 and Content 1.0 ids all load, with names."""
    assert taxonomy.name("1002") == "Alcohol"
    assert taxonomy.name("211") == "Alcoholic Beverages"
    assert taxonomy.name("pg0WhF").startswith("Illegal Drugs, Tobacco")
    assert taxonomy.name("IAB8-5") == "Cocktails/Beer"
    assert taxonomy.name("no-such-id") == "no-such-id"


@pytest.mark.parametrize(
    ("ids", "included", "excluded"),
    [
        (["1002"], {"1002", "1004", "1007"}, {"1008"}),
        (["IAB8"], {"IAB8-5", "IAB8-18", "1006", "1007"}, {"1004"}),
        (["1361"], {"1362", "1363"}, {"1002"}),
        (["211"], {"211"}, {"210"}),
    ],
    ids=["ad-product-children", "content1-children-and-mapped", "gambling", "leaf"],
)
def test_expand_adds_descendants_and_mapped_ids(
    taxonomy: Taxonomy, ids: list[str], included: set[str], excluded: set[str]
) -> None:
    """Expansion goes down the tree and across the Content 1.0 -> Ad Product map."""
    expanded = taxonomy.expand(ids)
    assert included <= expanded
    assert not excluded & expanded


def test_self_parent_rows_make_no_loop(taxonomy: Taxonomy) -> None:
    """Ad Product rows that name themselves as parent (1000) do not loop."""
    assert taxonomy.ancestors("1000") == []
    assert taxonomy.ancestors("1004") == ["1002"]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing taxonomy file names the file and how to restore it."""
    with pytest.raises(ConfigError, match=r"Ad_Product_Taxonomy_2\.0\.tsv is missing"):
        load_taxonomy(tmp_path)
