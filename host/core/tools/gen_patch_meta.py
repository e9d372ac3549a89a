#!/usr/bin/env python3
"""Generate host/core/src/generated/patch_meta.rs from k8s-openapi's generated sources.

k8s-openapi's schemars schemas lack Kubernetes' list/map merge annotations
(`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`, `x-kubernetes-patch-merge-key`,
`x-kubernetes-map-type`), but its `impl crate::DeepMerge for X` blocks encode them:

    crate::merge_strategies::list::atomic(&mut self.args, other.args);
    crate::merge_strategies::list::map(&mut self.ports, other.ports,
        &[|lhs, rhs| lhs.container_port == rhs.container_port], ...);
    crate::merge_strategies::list::set(&mut self.finalizers, other.finalizers);
    crate::merge_strategies::map::atomic(&mut self.selector, other.selector);

(`map::granular` is the default for maps and is ignored.) Rust field names are turned
back into JSON names through each file's Deserialize impl (`"containerPort" =>
Field::Key_container_port`), cross-checked against its Serialize impl; list-map key
fields are resolved through the list item type's own file.

Usage:
    python3 host/core/tools/gen_patch_meta.py [<k8s-openapi-0.29.0/src/v1_33>] \
        > host/core/src/generated/patch_meta.rs

Without an argument the newest ~/.cargo/registry/src/*/k8s-openapi-0.29.0/src/v1_33 is
used. Problems (unresolved names, strategies that have no JSON field of their own) are
reported on stderr; the exit status is 1 if any name could not be resolved.
"""

import glob
import os
import re
import sys

CRATE = "k8s-openapi 0.29.0"
VERSION = "v1_33"
MAX_WIDTH = 100
# rustfmt's default `fn_call_width` (60% of max_width), which also bounds one-line tuples.
TUPLE_WIDTH = 60

DEF_RE = re.compile(r"^// Generated from definition (\S+)", re.M)
STRUCT_RE = re.compile(r"^pub struct (\w+)(?:<[^>]*>)?(?: where [^{]*)? \{\n(.*?)^\}", re.M | re.S)
FIELD_DECL_RE = re.compile(r"^    pub (\w+): (.+),$", re.M)
DEEP_MERGE_RE = re.compile(r"^impl crate::DeepMerge for (\w+) \{\n(.*?)^\}", re.M | re.S)
DE_FIELD_RE = re.compile(r'^\s*"([^"]+)" => Field::Key_(\w+),$', re.M)
SER_INLINE_RE = re.compile(r'serialize_field\(&mut state, "([^"]+)", &self\.(\w+)\)')
SER_OPTION_RE = re.compile(
    r'if let Some\(value\) = &self\.(\w+) \{\s*\n\s*'
    r'crate::serde::ser::SerializeStruct::serialize_field\(&mut state, "([^"]+)", value\)'
)
SIMPLE_RE = re.compile(
    r"crate::merge_strategies::(list|map)::(atomic|set|granular)\(\s*&mut self\.(\w+),"
)
LIST_MAP_RE = re.compile(
    r"crate::merge_strategies::list::map\(\s*&mut self\.(\w+),\s*other\.\w+,\s*&\[(.*?)\],\s*\|",
    re.S,
)
KEY_CLOSURE_RE = re.compile(r"\|lhs, rhs\| lhs\.([\w.]+) == rhs\.([\w.]+)")
ANY_STRATEGY_RE = re.compile(r"crate::merge_strategies::(list|map)::(\w+)\(")
CRATE_PATH_RE = re.compile(r"crate::(?:\w+::)*[A-Z]\w*")

STRATEGY = {
    ("list", "atomic"): "ListAtomic",
    ("list", "set"): "ListSet",
    ("map", "atomic"): "MapAtomic",
}


def find_root():
    pattern = os.path.expanduser(f"~/.cargo/registry/src/*/k8s-openapi-0.29.0/src/{VERSION}")
    found = [p for p in glob.glob(pattern) if os.path.isdir(p)]
    if not found:
        sys.exit(f"gen_patch_meta: no {pattern}; pass the path to k8s-openapi's src/{VERSION}")
    return max(found, key=os.path.getmtime)


class TypeInfo:
    """One generated type: its definition name, fields and Rust-to-JSON field names."""

    def __init__(self, path, text, definition, struct_name, body):
        self.path = path
        self.text = text
        self.definition = definition
        self.struct_name = struct_name
        self.field_types = {m.group(1): m.group(2) for m in FIELD_DECL_RE.finditer(body)}
        self.json_names = {}
        de = {rust: json for json, rust in DE_FIELD_RE.findall(text)}
        ser = {rust: json for json, rust in SER_INLINE_RE.findall(text)}
        ser.update({rust: json for rust, json in SER_OPTION_RE.findall(text)})
        self.conflicts = []
        for rust in self.field_types:
            names = {n for n in (de.get(rust), ser.get(rust)) if n is not None}
            if len(names) == 1:
                self.json_names[rust] = names.pop()
            elif len(names) > 1:
                self.conflicts.append((rust, sorted(names)))

    def item_type(self, rust_field):
        """The crate path of the element type of a `Vec<crate::...>` field, if any."""
        decl = self.field_types.get(rust_field, "")
        m = re.search(r"std::vec::Vec<(crate::[\w:]+)>", decl)
        return m.group(1) if m else None

    def field_type_path(self, rust_field):
        """The crate path of a field's (optional) struct type, if any."""
        decl = self.field_types.get(rust_field, "")
        m = re.fullmatch(r"(?:Option<)?(crate::[\w:]+)>?", decl)
        return m.group(1) if m else None


def load(root):
    types = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith(".rs") or name == "mod.rs":
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            d = DEF_RE.search(text)
            s = STRUCT_RE.search(text)
            if not d or not s:
                continue
            module = os.path.relpath(dirpath, root).replace(os.sep, "::")
            crate_path = "crate::" + (module + "::" if module != "." else "") + s.group(1)
            types[crate_path] = TypeInfo(path, text, d.group(1), s.group(1), s.group(2))
    return types


def resolve_key(types, item_path, rust_key):
    """JSON name (dotted for nested keys) of a key closure's `lhs.a.b` path in item_path."""
    parts = []
    current = item_path
    segments = rust_key.split(".")
    for i, seg in enumerate(segments):
        info = types.get(current)
        if info is None or seg not in info.json_names:
            return None
        parts.append(info.json_names[seg])
        if i + 1 < len(segments):
            current = info.field_type_path(seg)
    return ".".join(parts)


def collect(types, root):
    rows = []
    problems = []
    notes = []
    counts = {"ListAtomic": 0, "ListMap": 0, "ListSet": 0, "MapAtomic": 0}
    seen_total = 0
    for crate_path in sorted(types):
        info = types[crate_path]
        rel = os.path.relpath(info.path, root)
        for rust, names in info.conflicts:
            problems.append(f"{info.definition}: field {rust} has conflicting JSON names {names}")
        dm = DEEP_MERGE_RE.search(info.text)
        if dm is None:
            continue
        body = dm.group(2)
        handled = 0
        for m in SIMPLE_RE.finditer(body):
            kind, how, rust = m.groups()
            if (kind, how) == ("map", "granular"):
                continue
            handled += 1
            strategy = STRATEGY[(kind, how)]
            json = info.json_names.get(rust)
            if json is None:
                problems.append(f"{info.definition}: no JSON name for field {rust} ({rel})")
                continue
            rows.append((info.definition, json, strategy))
            counts[strategy] += 1
        for m in LIST_MAP_RE.finditer(body):
            handled += 1
            rust, closures = m.groups()
            json = info.json_names.get(rust)
            if json is None:
                problems.append(f"{info.definition}: no JSON name for field {rust} ({rel})")
                continue
            item = info.item_type(rust)
            keys = []
            for lk, rk in KEY_CLOSURE_RE.findall(closures):
                if lk != rk:
                    problems.append(f"{info.definition}.{json}: odd key closure {lk} == {rk}")
                key = resolve_key(types, item, lk) if item else None
                if key is None:
                    problems.append(
                        f"{info.definition}.{json}: cannot resolve key {lk} in item type {item}"
                    )
                    key = lk
                elif "." in key:
                    notes.append(f"{info.definition}.{json}: nested list-map key {key!r}")
                keys.append(key)
            if not keys:
                problems.append(f"{info.definition}.{json}: no keys parsed from {closures!r}")
                continue
            rows.append((info.definition, json, ("ListMap", tuple(keys))))
            counts["ListMap"] += 1
        # Strategies applied to something other than a field of this type, e.g. to each value
        # of a `map::granular` map (`list::atomic(current_item, other_item)`): these have no
        # JSON field of their own, so they are reported rather than tabled.
        calls = [m for m in ANY_STRATEGY_RE.finditer(body) if m.groups() != ("map", "granular")]
        seen_total += len(calls)
        for m in calls:
            if body[m.end():].lstrip().startswith("&mut self."):
                continue
            handled += 1
            outer = re.findall(r"map::granular\(\s*&mut self\.(\w+)", body[: m.start()])
            where = info.json_names.get(outer[-1], outer[-1]) if outer else "?"
            notes.append(
                f"{info.definition}.{where}: each map value merged with {'::'.join(m.groups())}"
                " (no field of its own; not tabled)"
            )
        if handled != len(calls):
            problems.append(f"{info.definition}: unparsed merge strategy call ({rel})")
    # Files whose DeepMerge impl was not read at all (generic types such as io.k8s.List,
    # k8s-openapi's own list wrapper, which is not a Kubernetes OpenAPI definition).
    read = {os.path.realpath(t.path) for t in types.values() if DEEP_MERGE_RE.search(t.text)}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not name.endswith(".rs") or os.path.realpath(path) in read:
                continue
            with open(path, encoding="utf-8") as f:
                text = f.read()
            n = sum(1 for m in ANY_STRATEGY_RE.finditer(text) if m.groups() != ("map", "granular"))
            if n:
                d = DEF_RE.search(text)
                what = d.group(1) if d else os.path.relpath(path, root)
                notes.append(f"{what}: {n} merge strategy call(s) in a generic impl; not tabled")
    rows.sort(key=lambda r: (r[0].encode(), r[1].encode()))
    for a, b in zip(rows, rows[1:]):
        if a[:2] == b[:2]:
            problems.append(f"duplicate entry {a[0]} {a[1]}")
    return rows, counts, seen_total, problems, notes


def rust_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def strategy_expr(strategy):
    if isinstance(strategy, tuple):
        return "FieldStrategy::ListMap(&[" + ", ".join(rust_str(k) for k in strategy[1]) + "])"
    return "FieldStrategy::" + strategy


def render_row(row):
    items = [rust_str(row[0]), rust_str(row[1]), strategy_expr(row[2])]
    inner = ", ".join(items)
    line = f"    ({inner}),"
    if len(inner) <= TUPLE_WIDTH and len(line) <= MAX_WIDTH:
        return [line]
    return ["    ("] + [f"        {item}," for item in items] + ["    ),"]


def render(rows, notes):
    out = [
        f"//! Generated by host/core/tools/gen_patch_meta.py from {CRATE} ({VERSION}). "
        "Do not edit.",
        "//!",
        "//! Merge metadata of the built-in types, taken from k8s-openapi's `DeepMerge` impls",
        "//! (`crate::merge_strategies::{list, map}::*`), with field names as in JSON.",
    ]
    if notes:
        out.append("//!")
        out.append("//! Not tabled / worth knowing:")
        for n in notes:
            text = "//! - " + n
            while len(text) > MAX_WIDTH:
                cut = text.rfind(" ", 0, MAX_WIDTH)
                if cut <= len("//!   "):
                    break
                out.append(text[:cut])
                text = "//!   " + text[cut + 1:]
            out.append(text)
    out += [
        "",
        "/// How a field of a built-in type merges, from the Kubernetes OpenAPI extensions.",
        "#[derive(Debug, Clone, Copy, PartialEq, Eq)]",
        "pub enum FieldStrategy {",
        "    /// A list of objects merged by these key fields (patch merge key / list-map-keys).",
        "    ListMap(&'static [&'static str]),",
        "    /// A list of scalars merged as a set.",
        "    ListSet,",
        "    /// A list replaced as a whole.",
        "    ListAtomic,",
        "    /// A map replaced as a whole.",
        "    MapAtomic,",
        "}",
        "",
        "/// (definition name, JSON field name, strategy), sorted by definition then field "
        "for binary search.",
        "pub static PATCH_META: &[(&str, &str, FieldStrategy)] = &[",
    ]
    for row in rows:
        out += render_row(row)
    out.append("];")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) > 2:
        sys.exit(__doc__)
    root = sys.argv[1] if len(sys.argv) == 2 else find_root()
    if not os.path.isdir(root):
        sys.exit(f"gen_patch_meta: {root} is not a directory")
    types = load(root)
    rows, counts, seen_total, problems, notes = collect(types, root)
    sys.stdout.write(render(rows, notes))
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(
        f"gen_patch_meta: {len(types)} types, {len(rows)} entries ({summary}); "
        f"{seen_total} non-granular strategy calls seen",
        file=sys.stderr,
    )
    for n in notes:
        print(f"gen_patch_meta: note: {n}", file=sys.stderr)
    for p in problems:
        print(f"gen_patch_meta: problem: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
