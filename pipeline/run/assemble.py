"""Pure pyarrow logic between stages: explode fan-out outputs into child tables, and assemble a
shard's tables from its committed files plus this run's staged parts (no Ray here).

Assembly is an upsert: the committed rows, minus those whose video the creating stage redid in
this run, plus the creating stage's new rows; then every other stage's staged columns replace
that stage's columns on the rows it processed. The same function builds stage inputs during a
run and the final tables at commit, so what a stage reads is what gets committed.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog import schema
from catalog.read import conform



def key_strings(table: pa.Table, name: str) -> pa.Array:
    """One string per row identifying it (composite keys joined with ':')."""
    keys = schema.KEYS[name]
    if len(keys) == 1:
        return table[keys[0]].combine_chunks().cast(pa.string())
    parts = [table[k].combine_chunks().cast(pa.string()) for k in keys]
    return pc.binary_join_element_wise(*parts, ":")


def explode(output: pa.Table, level: str) -> dict[str, pa.Table]:
    """Split a stage output (level rows with nested child list columns) into flat tables.

    Child structs that lack their table's key (a stage adding columns to existing frames) get it
    from the parent row and the position in the list (frames: `frame` = index)."""
    tables: dict[str, pa.Table] = {}
    child = schema.CHILDREN.get(level)
    if child is not None and child in output.column_names:
        lists = output[child].combine_chunks()
        flat = pc.list_flatten(lists)
        parents = pc.list_parent_indices(lists)
        child_table = pa.Table.from_struct_array(flat) if len(flat) else _empty_struct_table(lists.type)
        parent_key = schema.KEYS[level][0]
        if parent_key not in child_table.column_names and len(parents):
            child_table = child_table.append_column(parent_key, pc.take(output[parent_key], parents))
        elif parent_key not in child_table.column_names:
            child_table = child_table.append_column(parent_key, pa.array([], output[parent_key].type))
        if child == "frames" and "frame" not in child_table.column_names:
            offsets = lists.offsets.to_numpy()
            index = np.arange(len(flat)) - np.repeat(offsets[:-1], np.diff(offsets))
            child_table = child_table.append_column("frame", pa.array(index, pa.int32()))
        tables.update(explode(child_table, child))
        output = output.drop_columns([child])
    tables[level] = output
    return tables


def _empty_struct_table(list_type: pa.DataType) -> pa.Table:
    struct = list_type.value_type
    return pa.schema([struct.field(i) for i in range(struct.num_fields)]).empty_table()


def write_part(folder: Path, stage: str, table: pa.Table) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stage}-{uuid.uuid4().hex}.parquet"
    pq.write_table(table, path)
    return path


def read_parts(folder: Path, stage: str) -> pa.Table | None:
    files = sorted(folder.glob(f"{stage}-*.parquet")) if folder.is_dir() else []
    if not files:
        return None
    tables = [pq.read_table(f) for f in files]
    return pa.concat_tables(tables, promote_options="permissive")


def upsert_columns(base: pa.Table, part: pa.Table, table: str, columns: list[str]) -> pa.Table:
    """Rows of `base` whose key is in `part` take `columns` from `part`; others keep theirs."""
    if part.num_rows == 0:
        return base
    part_keys = key_strings(part, table)
    base_keys = key_strings(base, table)
    hit = pc.is_in(base_keys, value_set=part_keys)
    untouched = base.filter(pc.invert(hit))
    touched = base.filter(hit)
    order = pc.index_in(key_strings(touched, table), value_set=part_keys)
    values = part.take(order)
    for name in columns:
        if name in touched.column_names:
            index = touched.column_names.index(name)
            column = values[name] if name in values.column_names else pa.nulls(touched.num_rows)
            touched = touched.set_column(index, name, column.cast(touched.schema.field(name).type))
    return pa.concat_tables([untouched, touched])


def assemble(
    table: str,
    committed: pa.Table | None,
    parts: dict[str, pa.Table],
    redone: tuple[str, set[str]] | None = None,
) -> pa.Table:
    """A shard's current `table`: committed rows upserted with staged parts (full schema, sorted).

    parts: stage -> staged rows of this table from that stage (this run);
    redone: (column, values): committed rows whose column value is in values are dropped, because
    the creating stage produced them anew in this run (e.g. ("video_id", {...}))."""
    full = schema.table_schema(table)
    creator = schema.CREATED_BY[table]
    base = conform(committed, full) if committed is not None else full.empty_table()
    if redone and redone[1] and base.num_rows:
        column, values = redone
        base = base.filter(pc.invert(pc.is_in(base[column], value_set=pa.array(sorted(values)))))
    if creator in parts:
        base = pa.concat_tables([base, conform(parts[creator], full)])
    for stage, part in parts.items():
        if stage == creator:
            continue
        columns = [c for c in part.column_names if c not in (*schema.KEYS[table], "shard", "video_id")]
        base = upsert_columns(base, part, table, columns)
    return sort_by_key(base, table)


def sort_by_key(table: pa.Table, name: str) -> pa.Table:
    if table.num_rows == 0:
        return table
    return table.sort_by([(k, "ascending") for k in schema.KEYS[name]])


def join_ancestors(rows: pa.Table, level: str, ancestors: dict[str, pa.Table], wanted: list[str]) -> pa.Table:
    """Add the `wanted` columns missing from `rows` from the clips and videos tables.

    Every child table carries `video_id` (and tracks carry `clip_id`), so one lookup each."""
    for parent, fk in (("clips", "clip_id"), ("videos", "video_id")):
        source = ancestors.get(parent)
        missing = [c for c in wanted if c not in rows.column_names]
        if parent == level or source is None or fk not in rows.column_names or not missing:
            continue
        order = pc.index_in(rows[fk], value_set=source[schema.KEYS[parent][0]])
        for name in missing:
            if name in source.column_names:
                rows = rows.append_column(name, pc.take(source[name], order))
    return rows


def nest_children(rows: pa.Table, level: str, children: pa.Table, columns: list[str]) -> pa.Table:
    """Attach child rows (e.g. a track's frames, ordered by key) as a list<struct> column."""
    child = schema.CHILDREN[level]
    parent_key = schema.KEYS[level][0]
    children = sort_by_key(children.select([parent_key, *[c for c in schema.KEYS[child] if c != parent_key], *columns]), child)
    groups: dict[str, list[dict]] = {}
    for item in children.to_pylist():
        groups.setdefault(item[parent_key], []).append({c: item[c] for c in columns})
    struct = pa.struct([children.schema.field(c) for c in columns])
    values = [groups.get(k, []) for k in rows[parent_key].to_pylist()]
    return rows.append_column(child, pa.array(values, pa.list_(struct)))
