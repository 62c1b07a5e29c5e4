"""``pointsparse.models`` and ``pointsparse.datasets`` in a source checkout that was built in place.

The folders sit at the repository's top level and an install maps them into the package (setup.py's
``package_dir``). A checkout built with ``python setup.py build_ext --inplace`` and put on
``sys.path`` has no such mapping; this finder supplies it. It answers only for the two names, only
where the folders stand beside this package next to setup.py, and it answers first: the
``pointsparse`` imported is this checkout's, so its models and datasets are too (not those an
editable install of another checkout maps).
"""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
MAPPED_FOLDERS = {"pointsparse.models": CHECKOUT / "models", "pointsparse.datasets": CHECKOUT / "datasets"}


class SourceFolderFinder(importlib.abc.MetaPathFinder):
    """Finds the mapped packages in their top-level folders; their submodules follow by path."""

    def find_spec(self, fullname, path, target=None):
        folder = MAPPED_FOLDERS.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def map_source_folders() -> None:
    """Installs the finder once, in a source checkout only."""
    in_checkout = (CHECKOUT / "setup.py").is_file() and all((f / "__init__.py").is_file()
                                                           for f in MAPPED_FOLDERS.values())
    if in_checkout and not any(isinstance(f, SourceFolderFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceFolderFinder())
