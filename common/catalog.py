"""The consortium's label space: a versioned catalog of implant classes.

The model's output size is ``len(catalog)``; index ``i`` of the output is
``catalog.classes[i]``. A catalog change is a new model version, so releases store the
catalog and its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.errors import CatalogError

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ImplantClass:
    """One implant class of the catalog."""

    id: str  # stable machine id, e.g. "auralis-a1"; lower-case, [a-z0-9._-]
    manufacturer: str  # manufacturer name as printed on the model card
    model: str  # product / model name
    component: str = "femoral-stem"  # femoral-stem | acetabular-cup | ...

    @property
    def display(self) -> str:
        return f"{self.manufacturer} {self.model}"


@dataclass(frozen=True)
class Catalog:
    """Ordered, versioned list of implant classes."""

    name: str
    version: str
    classes: tuple[ImplantClass, ...]

    def __post_init__(self) -> None:
        if not self.classes:
            raise CatalogError("catalog has no classes")
        seen: set[str] = set()
        for c in self.classes:
            if not _ID_RE.match(c.id):
                raise CatalogError(f"catalog id {c.id!r} is not of the form [a-z0-9._-]+")
            if c.id in seen:
                raise CatalogError(f"catalog id {c.id!r} appears twice")
            seen.add(c.id)

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[ImplantClass]:
        return iter(self.classes)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.classes]

    @property
    def manufacturers(self) -> list[str]:
        return sorted({c.manufacturer for c in self.classes})

    def index_of(self, class_id: str) -> int:
        try:
            return self._index[class_id]
        except KeyError:
            raise CatalogError(f"label {class_id!r} is not in catalog {self.name} v{self.version}") from None

    @property
    def _index(self) -> dict[str, int]:
        # Built lazily and memoised on the frozen instance.
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {c.id: i for i, c in enumerate(self.classes)}
            object.__setattr__(self, "_index_cache", cached)
        return cached

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON: two sites agree on the label space iff equal."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "classes": [asdict(c) for c in self.classes]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Catalog:
        try:
            classes = tuple(
                ImplantClass(
                    id=str(c["id"]),
                    manufacturer=str(c["manufacturer"]),
                    model=str(c["model"]),
                    component=str(c.get("component", "femoral-stem")),
                )
                for c in data["classes"]
            )
            return cls(name=str(data["name"]), version=str(data["version"]), classes=classes)
        except (KeyError, TypeError) as e:
            raise CatalogError(f"catalog is missing field {e}") from e

    @classmethod
    def load(cls, path: str | Path) -> Catalog:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CatalogError(f"catalog file cannot be read: {type(e).__name__}") from e
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
