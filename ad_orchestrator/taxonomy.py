"""IAB Tech Lab taxonomies as the service uses them: ids, parents and mappings.

Category ids from three taxonomies share one string namespace, because their ids do
not collide: Content Taxonomy 1.0 codes carry an `IAB` prefix (`IAB8-5`), Ad Product
Taxonomy 2.0 ids are numbers from 1000 up, and Content Taxonomy 3.1 ids are numbers
below 1000 or six-character codes (`pg0WhF`). `Taxonomy.expand` turns a set of ids
into the same set plus every descendant, and (for Content 1.0 codes) the Ad Product
2.0 ids the IAB mapping file gives, so a block on a parent blocks its children and a
block given in the older taxonomy reaches ads labelled in the newer one.

The TSV files are the IAB's own (`data/iab-taxonomy/`, CRLF, UTF-8).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ad_orchestrator.errors import ConfigError

log = logging.getLogger(__name__)

AD_PRODUCT_2 = "Ad_Product_Taxonomy_2.0.tsv"
CONTENT_3 = "Content_Taxonomy_3.1.tsv"
CONTENT_1 = "Content_Taxonomy_1.0.tsv"
CONTENT_1_TO_AD_PRODUCT_2 = "Content_1.0_to_Ad_Product_2.0.tsv"


@dataclass
class Taxonomy:
    """Names, parent links and cross-taxonomy mappings of the IAB category ids."""

    names: dict[str, str] = field(default_factory=dict)
    parent: dict[str, str] = field(default_factory=dict)
    children: dict[str, set[str]] = field(default_factory=dict)
    mapped: dict[str, set[str]] = field(default_factory=dict)

    def _link(self, child: str, parent: str) -> None:
        # Ad Product 2.0 rows 1000 and 1037 name themselves as parent: no self loops.
        if not parent or parent == child:
            return
        self.parent[child] = parent
        self.children.setdefault(parent, set()).add(child)

    def descendants(self, category: str) -> set[str]:
        """Return every id below `category` (not including itself)."""
        found: set[str] = set()
        stack = list(self.children.get(category, ()))
        while stack:
            node = stack.pop()
            if node not in found:
                found.add(node)
                stack.extend(self.children.get(node, ()))
        return found

    def ancestors(self, category: str) -> list[str]:
        """Return the ids above `category`, nearest first."""
        chain: list[str] = []
        node = self.parent.get(category)
        while node is not None and node not in chain:
            chain.append(node)
            node = self.parent.get(node)
        return chain

    def expand(self, categories: Iterable[str]) -> set[str]:
        """Return `categories` with their descendants and mapped equivalents."""
        within: set[str] = set()
        for category in categories:
            within.add(category)
            within |= self.descendants(category)
        result = set(within)
        for category in within:
            for target in self.mapped.get(category, ()):
                result.add(target)
                result |= self.descendants(target)
        return result

    def name(self, category: str) -> str:
        """Return the category's readable name, or the id if it is unknown."""
        return self.names.get(category, category)


def _rows(path: Path, skip: int) -> list[list[str]]:
    if not path.exists():
        raise ConfigError(
            f"IAB taxonomy file {path} is missing; it ships with the repository "
            "under data/iab-taxonomy/ (restore it with git checkout)"
        )
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    return [[cell.strip() for cell in row] for row in rows[skip:] if row]


@lru_cache(maxsize=4)
def load_taxonomy(folder: Path) -> Taxonomy:
    """Load the IAB taxonomies shipped under `folder` (cached per folder).

    Raises:
        ConfigError: a taxonomy file is missing.
    """
    tax = Taxonomy()
    for row in _rows(folder / AD_PRODUCT_2, skip=1):
        tax.names[row[0]] = row[2]
        tax._link(row[0], row[1])
    # Content 3.x files put a title row above the header row.
    for row in _rows(folder / CONTENT_3, skip=2):
        tax.names[row[0]] = row[2]
        tax._link(row[0], row[1])
    for row in _rows(folder / CONTENT_1, skip=1):
        code = row[0]
        tax.names[code] = row[2]
        if "-" in code:
            tax._link(code, code.split("-", 1)[0])
    for row in _rows(folder / CONTENT_1_TO_AD_PRODUCT_2, skip=1):
        if row[0] and len(row) > 3 and row[3]:
            tax.mapped.setdefault(row[0], set()).add(row[3])
    log.debug("loaded %d IAB category ids from %s", len(tax.names), folder)
    return tax
