"""The catalog: emoforge's data contract. Imports only pyarrow and the standard library.

    import catalog
    tracks = catalog.read_table("out/catalog", "tracks")          # pyarrow.Table, full schema
    catalog.validate("out/catalog")                                # [] when valid
    kept = catalog.training_index("out/catalog", catalog.Thresholds(min_face_px_median=128))

Roots are local folders or s3:// prefixes (catalog/fs.py); `media_file(root, crop_path)` gives a
local copy of a store's media file for readers that need a path.
"""

from catalog.adapters import to_duckdb, to_pandas, to_ray_dataset
from catalog.inspect import describe, stats, validate
from catalog.manifest import read_manifest
from catalog.migrate import migrate
from catalog.read import media_file, read_table
from catalog.schema import SCHEMA_VERSION, TABLES, table_schema
from catalog.select import SelectionError, Thresholds, balance, select, training_index
from catalog.split import person_split

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "SelectionError",
    "Thresholds",
    "balance",
    "describe",
    "media_file",
    "migrate",
    "person_split",
    "read_manifest",
    "read_table",
    "select",
    "stats",
    "table_schema",
    "to_duckdb",
    "to_pandas",
    "to_ray_dataset",
    "training_index",
    "validate",
]
