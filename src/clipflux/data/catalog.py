"""The catalog of real datasets: `configs/datasets/*.yaml`, loaded strictly.

A catalog file has a `repository` (the base URL of the files its entries name by relative path) and
`datasets`: name -> entry. An entry says what the dataset is in a study (role, task, splits, prompt, class
names) and which files make it up: its archive (`url`, `sha256`) and its side files (class names and per-split
annotations, fetched from `repository`). `configs/datasets/fif.yaml` lists FiF's 63 datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from clipflux.config import NAME, ConfigError, from_dict

READS = ("configs/datasets",)  # a dependency of every stage importing this module
CATALOG_DIR = Path(__file__).resolve().parents[3] / "configs" / "datasets"
FIF_CATALOG = CATALOG_DIR / "fif.yaml"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it comes from and what it must hash to (None: not known)."""

    name: str  # the file name in the dataset's download folder
    url: str
    sha256: str | None
    archive: bool  # unpacked after download (the dataset's data), or kept as it is (a side file)


@dataclass(frozen=True)
class CatalogEntry:
    """One dataset of a catalog (the fields are documented at the top of `configs/datasets/fif.yaml`)."""

    title: str
    fif_module: str
    role: Literal["adaptation", "evaluation"]
    task: Literal["classification", "retrieval"]
    splits: list[str]
    primer: str
    classes: str | None
    annotations: dict[str, str]
    url: str
    sha256: str | None
    license: str | None
    source: str | None
    note: str | None = None
    sort_classes: bool = False  # FiF sorts the class-name list (case-insensitively) before use
    name: str = ""  # filled in from the key of `datasets`

    def validate(self, path: str) -> None:
        if "{}" not in self.primer:
            raise ConfigError(f"{path}.primer: must hold '{{}}' for the class name, got {self.primer!r}")
        if set(self.annotations) != set(self.splits):
            raise ConfigError(f"{path}.annotations: expected one file per split {self.splits}, got {sorted(self.annotations)}")
        if self.sha256 is not None and (len(self.sha256) != 64 or not all(c in "0123456789abcdef" for c in self.sha256)):
            raise ConfigError(f"{path}.sha256: expected 64 lowercase hex digits or null, got {self.sha256!r}")

    def files(self, repository: str) -> list[RemoteFile]:
        """The archive, then the class-name file and the annotation files (side files, from `repository`)."""
        files = [RemoteFile(f"{self.name}.tar", self.url, self.sha256, archive=True)]
        side = ([self.classes] if self.classes else []) + [self.annotations[s] for s in self.splits]
        files += [RemoteFile(Path(p).name, repository + p, None, archive=False) for p in side]
        return files


@dataclass(frozen=True)
class Catalog:
    """A catalog file: its repository and its datasets by name."""

    repository: str
    datasets: dict[str, CatalogEntry]

    def entry(self, name: str) -> CatalogEntry:
        """The entry of `name`, or a KeyError listing the known names."""
        if name not in self.datasets:
            raise KeyError(f"{name!r} is not in the catalog; known datasets: {', '.join(sorted(self.datasets, key=str.lower))}")
        return self.datasets[name]


def load_catalog(path: str | Path = FIF_CATALOG) -> Catalog:
    """Load and check a catalog file.

    Raises:
        ConfigError: naming the file, the dataset and the bad field.
    """
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if set(raw) != {"repository", "datasets"}:
        raise ConfigError(f"{path}: expected the keys 'repository' and 'datasets', got {sorted(raw)}")
    datasets = {}
    for name, fields in raw["datasets"].items():
        if not NAME.fullmatch(name):
            raise ConfigError(f"{path}: datasets.{name}: a name may use letters, digits, '_' and '-' only")
        entry = from_dict(CatalogEntry, fields, f"{path}: datasets.{name}")
        datasets[name] = CatalogEntry(**{**entry.__dict__, "name": name})
    return Catalog(raw["repository"], datasets)
