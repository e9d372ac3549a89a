#!/usr/bin/env python3
"""Generate host/core/src/generated/proto_table.rs: the protobuf wire layout of the built-in kinds.

Typed client-go clients (kubectl's `create <generator>`, `auth can-i`, ...) send bodies as
`application/vnd.kubernetes.protobuf`. skiff-core decodes them with one generic decoder driven
by this table: for every message reachable from the kinds skiff serves, each field's tag,
wire type, JSON name and JSON shape.

Inputs:
- k8s-pb 0.9.0's prost sources (tags and wire types, from Kubernetes' generated.proto files;
  `cargo info k8s-pb@0.9.0` downloads the crate into ~/.cargo/registry/src);
- k8s-openapi 0.29.0 (v1_33): the JSON name of each field (through gen_patch_meta's reader of
  its Deserialize impls), which fields are required, and the kinds (`impl crate::Resource`);
- tools/proto_pointer_fields.tsv: the Go struct fields that are pointers to scalars, read off
  the Kubernetes Go sources (zz_generated.deepcopy.go). Go's protobuf marshaller writes every
  non-pointer scalar, zero or not, but a pointer only when it is set; so a zero on the wire is
  dropped (Go's JSON omits it) unless the field is a pointer or a required field.

prost names are snake_case (`host_i_ps`) where the protos use the JSON names (`hostIPs`), so
fields are matched to JSON names case- and separator-insensitively; k8s-pb also renames some
messages (`JSONSchemaProps` -> `JsonSchemaProps`), matched the same way. A message the JSON
inlines (Go's `json:",inline"`, e.g. `Volume.volumeSource`) has no OpenAPI definition; its
fields are named from the parent's definition.

Usage:
    python3 host/core/tools/gen_proto_table.py [<k8s-pb src> <k8s-openapi src/v1_33>] \
        > host/core/src/generated/proto_table.rs

Problems (fields or messages that can't be matched) go to stderr; the exit status is 1 if any.
"""

import glob
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_patch_meta as openapi  # noqa: E402  (the k8s-openapi reader is shared)

PB_CRATE = "k8s-pb 0.9.0"
POINTERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "proto_pointer_fields.tsv")

# The group-versions skiff serves; every kind of theirs is tabled, so a resource added to
# skiff-core's registry decodes without regenerating.
SERVED = {
    "v1",
    "apps/v1",
    "authentication.k8s.io/v1",
    "authorization.k8s.io/v1",
    "autoscaling/v1",
    "autoscaling/v2",
    "batch/v1",
    "certificates.k8s.io/v1",
    "coordination.k8s.io/v1",
    "discovery.k8s.io/v1",
    "events.k8s.io/v1",
    "policy/v1",
    "rbac.authorization.k8s.io/v1",
    "scheduling.k8s.io/v1",
    "storage.k8s.io/v1",
    "apiextensions.k8s.io/v1",
}
# Kinds every group-version accepts as a body (client-go sends these with the resource's
# apiVersion); the decoder looks them up by kind alone.
META_KINDS = {"DeleteOptions": "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"}

META = "io.k8s.apimachinery.pkg.apis.meta.v1."
APIEXT = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1."
# Messages whose JSON form is not an object of their fields: (form, {tag: (prost name, kind)})
# as the decoder expects them; checked against k8s-pb.
SPECIAL = {
    "io.k8s.apimachinery.pkg.api.resource.Quantity": ("Quantity", {1: ("string", "string")}),
    META + "Time": ("Time", {1: ("seconds", "int64"), 2: ("nanos", "int32")}),
    META + "MicroTime": ("MicroTime", {1: ("seconds", "int64"), 2: ("nanos", "int32")}),
    META + "FieldsV1": ("RawJson", {1: ("raw", "bytes")}),
    "io.k8s.apimachinery.pkg.runtime.RawExtension": ("RawJson", {1: ("raw", "bytes")}),
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": (
        "IntOrString",
        {1: ("type", "int64"), 2: ("int_val", "int32"), 3: ("str_val", "string")},
    ),
    APIEXT + "JSON": ("RawJson", {1: ("raw", "bytes")}),
    APIEXT + "JSONSchemaPropsOrArray": (
        "SchemaOrArray",
        {1: ("schema", "message"), 2: ("json_schemas", "message")},
    ),
    APIEXT + "JSONSchemaPropsOrBool": (
        "SchemaOrBool",
        {1: ("allows", "bool"), 2: ("schema", "message")},
    ),
    APIEXT + "JSONSchemaPropsOrStringArray": (
        "SchemaOrStringArray",
        {1: ("schema", "message"), 2: ("property", "string")},
    ),
}
SCALARS = {
    "string": "Str",
    "bytes": "Bytes",
    "bool": "Bool",
    "int32": "Int",
    "int64": "Int",
    "double": "Double",
}

STRUCT_RE = re.compile(
    r"#\[derive\([^\]]*::prost::Message\)\]\npub struct (\w+) \{(?:\}|\n(.*?)^\})", re.M | re.S
)
ATTR_RE = re.compile(r"^\s*#\[prost\((.*?)\)\]\n((?:\s*///.*\n)*)\s*pub (r#)?(\w+):\s*", re.M)
TAG_RE = re.compile(r'tag = "(\d+)"')
MAP_RE = re.compile(r'(?:btree_)?map = "string, (\w+)"')


def find_pb_root():
    pattern = os.path.expanduser("~/.cargo/registry/src/*/k8s-pb-0.9.0/src")
    found = [p for p in glob.glob(pattern) if os.path.isdir(p)]
    if not found:
        sys.exit(f"gen_proto_table: no {pattern}; run `cargo info k8s-pb@0.9.0` or pass paths")
    return max(found, key=os.path.getmtime)


def type_text(body, start):
    """The Rust type starting at body[start:], up to the field's closing comma."""
    depth = 0
    for i in range(start, len(body)):
        c = body[i]
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "," and depth == 0:
            return re.sub(r",\s*>", ">", " ".join(body[start:i].split()))
    raise ValueError("unterminated field type")


def resolve_path(module, rust_type):
    """(module, struct) of a message field's Rust type, relative to `module` (a tuple)."""
    inner = rust_type
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<",
                    "::prost::alloc::boxed::Box<"):
        while inner.startswith(wrapper):
            inner = inner[len(wrapper):-1].strip()
    if inner.startswith("::prost::alloc::collections::BTreeMap<") or inner.startswith(
        "::std::collections::HashMap<"
    ):
        inner = inner[inner.index("<") + 1:-1].split(",", 1)[1].strip()
    parts = inner.split("::")
    here = list(module)
    while parts and parts[0] == "super":
        here.pop()
        parts.pop(0)
    return tuple(here + parts[:-1]), parts[-1]


class PbField:
    def __init__(self, tag, name, kind, label, target):
        self.tag = tag
        self.name = name  # prost name, without r#
        self.kind = kind  # a protobuf scalar type or "message"
        self.label = label  # "single", "repeated" or "map"
        self.target = target  # (module, struct) of a message type


def load_pb(root):
    """{(module, struct): [PbField]} of every prost message in k8s-pb."""
    messages = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if "mod.rs" not in filenames:
            continue
        module = tuple(p for p in os.path.relpath(dirpath, root).split(os.sep) if p != ".")
        with open(os.path.join(dirpath, "mod.rs"), encoding="utf-8") as f:
            text = f.read()
        for s in STRUCT_RE.finditer(text):
            body = s.group(2) or ""
            fields = []
            for a in ATTR_RE.finditer(body):
                attr, name = a.group(1), a.group(4)
                rust_type = type_text(body, a.end())
                tag = int(TAG_RE.search(attr).group(1))
                first = attr.split(",")[0].split("=")[0].strip()
                target = None
                if first in ("map", "btree_map"):
                    kind, label = MAP_RE.search(attr).group(1), "map"
                else:
                    kind = first
                    label = "repeated" if ", repeated" in attr else "single"
                if kind not in SCALARS and kind != "message":
                    raise ValueError(f"{module}::{s.group(1)}.{name}: unknown kind {kind}")
                if kind == "message":
                    target = resolve_path(module, rust_type)
                fields.append(PbField(tag, name, kind, label, target))
            messages[(module, s.group(1))] = fields
    return messages


def definition_prefix(module):
    return "io.k8s." + ".".join(p.replace("_", "-") for p in module) + "."


def norm(name):
    return re.sub(r"[^a-z0-9]", "", name.lower())


def camel(name):
    """A prost name in the protos' own spelling (`int_val` -> `intVal`), for special forms."""
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def static_name(definition):
    """`io.k8s.api.core.v1.PodSpec` -> `CORE_V1_POD_SPEC`."""
    parts = definition.split(".")
    group = parts[-3].replace("-", "_") if len(parts) >= 3 else ""
    version = parts[-2]
    if not re.fullmatch(r"v\d+\w*", version):
        group, version = version, ""
    words = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", parts[-1])
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", words)
    return "_".join(p for p in (group, version, words) if p).upper()


def load_pointers():
    """{definition: {normalised Go field name}} from proto_pointer_fields.tsv, whose lines are
    `<package>\t<Go struct>\t<Go field>\t<pointee type>` (`core/v1`, `meta/v1`, ...)."""
    prefixes = {"meta/v1": META, "apiextensions/v1": APIEXT}
    pointers = {}
    with open(POINTERS, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            package, struct, field = line.split("\t")[:3]
            prefix = prefixes.get(package, "io.k8s.api." + package.replace("/", ".") + ".")
            # Go's XListType is JSON's (and prost's) x-kubernetes-list-type.
            field = re.sub(r"^X(?=[A-Z])", "XKubernetes", field)
            pointers.setdefault(prefix + struct, set()).add(norm(field))
    return pointers


class Generator:
    def __init__(self, pb, types):
        self.pb = pb
        self.problems = []
        self.notes = []
        # k8s-openapi types by definition name, and the pb message for each definition.
        self.openapi = {t.definition: t for t in types.values()}
        self.pb_by_definition = {}
        lower = {}
        for (module, struct) in pb:
            d = definition_prefix(module) + struct
            lower[d.lower()] = (module, struct)
        self.lower = lower
        self.kinds = []
        for t in types.values():
            m = re.search(
                r'impl crate::Resource for \w+ \{.*?const API_VERSION: &\'static str = "([^"]+)";'
                r'.*?const KIND: &\'static str = "([^"]+)";',
                t.text,
                re.S,
            )
            if m and m.group(1) in SERVED:
                self.kinds.append((m.group(1), m.group(2), t.definition))
        self.pointers = load_pointers()
        self.pointer_seen = set()
        # definition -> the definition its JSON names were taken from (itself, or an
        # inlining parent).
        self.resolved = {}
        # definition -> (form, [rendered field tuples]), filled by visit().
        self.messages = {}

    def definition_of(self, key):
        """The OpenAPI-style definition name of a pb message (k8s-openapi's spelling)."""
        module, struct = key
        guess = definition_prefix(module) + struct
        for d in (guess,):
            if d in self.openapi:
                return d
        wanted = guess.lower()
        for d in self.openapi:
            if d.lower() == wanted:
                return d
        for d in SPECIAL:
            if d.lower() == wanted:
                return d
        return guess

    def pb_key(self, definition):
        return self.lower.get(definition.lower())

    def visit(self, definition, context=None):
        """Tables `definition` and everything it references. `context` names an inlining
        parent whose JSON field names this message's fields take. Returns False if an inlined
        message has no field the parent's JSON knows (a field newer than k8s-openapi)."""
        key = self.pb_key(definition)
        if key is None:
            self.problems.append(f"{definition}: no protobuf message in {PB_CRATE}")
            self.messages.setdefault(definition, ("Object", []))
            return True
        fields = self.pb[key]
        if definition in SPECIAL:
            if definition not in self.messages:
                form, expected = SPECIAL[definition]
                got = {f.tag: (norm(f.name), f.kind) for f in fields}
                if got != {tag: (norm(name), kind) for tag, (name, kind) in expected.items()}:
                    self.problems.append(f"{definition}: fields {got} are not as expected")
                rows = []
                for f in sorted(fields, key=lambda f: f.tag):
                    ty = SCALARS.get(f.kind)
                    if f.kind == "message":
                        ty = self.definition_of(f.target)
                    label = {"repeated": "Many", "map": "Map"}.get(f.label, "Keep")
                    rows.append((f.tag, camel(f.name), ty, label))
                self.messages[definition] = (form, rows)
                for _, _, ty, _ in rows:
                    if ty not in SCALARS.values():
                        self.visit(ty)
            return True
        names_from = context or definition
        info = self.openapi.get(names_from)
        if info is None:
            if definition in self.messages:
                return True
            if not fields:
                self.messages[definition] = ("Object", [])
            elif len(fields) == 1 and fields[0].name == "items" and fields[0].label == "repeated":
                if fields[0].kind != "string":
                    self.problems.append(f"{definition}: a list wrapper of {fields[0].kind}")
                self.messages[definition] = ("StringList", [])
            else:
                self.problems.append(f"{definition}: no OpenAPI definition to name its fields")
                self.messages[definition] = ("Object", [])
            return True
        if definition in self.messages and self.resolved.get(definition) == names_from:
            return True
        json_by_norm = {}
        for rust, json in info.json_names.items():
            json_by_norm.setdefault(norm(json), []).append((rust, json))
        pointer_fields = self.pointers.get(definition, set())
        rows = []
        notes = []
        children = []
        for f in sorted(fields, key=lambda f: f.tag):
            target = self.definition_of(f.target) if f.kind == "message" else None
            match = json_by_norm.get(norm(f.name), [])
            if len(match) > 1:
                self.problems.append(f"{definition}.{f.name}: ambiguous JSON names {match}")
                continue
            if not match:
                if f.kind == "message" and f.label == "single":
                    children.append((f, target))
                else:
                    notes.append(f"{definition}.{f.name} (tag {f.tag}): not in {openapi.CRATE}")
                continue
            rust, json = match[0]
            if f.label == "repeated":
                label = "Many"
            elif f.label == "map":
                label = "Map"
            else:
                required = not info.field_types[rust].startswith("Option<")
                pointer = norm(f.name) in pointer_fields
                if pointer:
                    self.pointer_seen.add((definition, norm(f.name)))
                if pointer and f.kind not in SCALARS:
                    self.problems.append(f"{definition}.{json}: listed as a pointer to a scalar")
                label = "Keep" if (required or pointer) and f.kind in SCALARS else "One"
            rows.append((f.tag, json, target if target else SCALARS[f.kind], label))
        if context is not None and not rows and not children:
            return False
        if definition in self.messages:
            old = self.messages[definition][1]
            if old is not None and [r[:2] for r in old] != [r[:2] for r in rows]:
                self.problems.append(
                    f"{definition}: named differently inlined in {names_from} and in "
                    f"{self.resolved.get(definition)}"
                )
            return True
        self.messages[definition] = ("Object", None)  # guards recursion
        self.resolved[definition] = names_from
        self.notes += notes
        for tag, json, ty, label in rows:
            if ty not in SCALARS.values():
                self.visit(ty)
        for f, target in children:
            if self.visit(target, context=names_from):
                rows.append((f.tag, None, target, "Inline"))
                self.notes.append(f"{definition}.{f.name}: inlined ({target})")
            else:
                self.notes.append(f"{definition}.{f.name} (tag {f.tag}): not in {openapi.CRATE}")
        rows.sort(key=lambda r: r[0])
        self.messages[definition] = ("Object", rows)
        return True

    def run(self):
        for _, _, definition in self.kinds:
            self.visit(definition)
        for definition in META_KINDS.values():
            self.visit(definition)
        for definition, fields in self.pointers.items():
            if definition not in self.messages:
                continue
            pb_fields = {norm(f.name) for f in self.pb[self.pb_key(definition)]}
            for field in sorted(fields):
                if (definition, field) in self.pointer_seen:
                    continue
                if field in pb_fields:
                    self.notes.append(f"pointer field {definition}.{field}: newer than the table")
                else:
                    self.problems.append(f"pointer field {definition}.{field} matches no field")


def render(gen):
    names = {}
    for definition in gen.messages:
        name = static_name(definition)
        if name in names.values():
            raise ValueError(f"static name {name} is used twice")
        names[definition] = name
    out = [
        "//! Generated by host/core/tools/gen_proto_table.py from "
        f"{PB_CRATE} and {openapi.CRATE}",
        f"//! ({openapi.VERSION}). Do not edit.",
        "//!",
        "//! The protobuf layout of every message reachable from the kinds skiff serves: per field",
        "//! its tag, JSON name, type and label (`Keep` marks a scalar whose zero value is kept",
        "//! because the Go field is a pointer or required). Fields are sorted by tag.",
        "",
        "use super::Form::*;",
        "use super::Label::*;",
        "use super::Ty::*;",
        "use super::{Field, Message};",
        "",
        "/// (apiVersion, kind, message) of every kind, sorted for binary search.",
        "pub(super) static KINDS: &[(&str, &str, &Message)] = &[",
    ]
    for api_version, kind, definition in sorted(gen.kinds, key=lambda k: (k[0], k[1])):
        out.append(f'    ("{api_version}", "{kind}", &{names[definition]}),')
    out.append("];")
    out.append("")
    out.append("/// Kinds every group-version accepts, by kind alone.")
    out.append("pub(super) static META_KINDS: &[(&str, &Message)] = &[")
    for kind, definition in sorted(META_KINDS.items()):
        out.append(f'    ("{kind}", &{names[definition]}),')
    out.append("];")
    for definition in sorted(gen.messages, key=lambda d: names[d]):
        form, rows = gen.messages[definition]
        out.append("")
        head = f"static {names[definition]}: Message = Message {{"
        out.append(head)
        out.append(f'    name: "{definition}",')
        out.append(f"    form: {form},")
        if not rows:
            out.append("    fields: &[],")
        else:
            out.append("    fields: &[")
            for tag, json, ty, label in rows:
                ty_expr = f"Msg(&{names[ty]})" if ty in names else ty
                json_expr = '""' if json is None else openapi.rust_str(json)
                out.append(f"        Field({tag}, {json_expr}, {ty_expr}, {label}),")
            out.append("    ],")
        out.append("};")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) not in (1, 3):
        sys.exit(__doc__)
    pb_root = sys.argv[1] if len(sys.argv) == 3 else find_pb_root()
    openapi_root = sys.argv[2] if len(sys.argv) == 3 else openapi.find_root()
    gen = Generator(load_pb(pb_root), openapi.load(openapi_root))
    gen.run()
    # rustfmt lays out the long lines, so the file stays as `cargo fmt` leaves it.
    text = subprocess.run(
        ["rustfmt", "--edition", "2024", "--config", f"max_width={openapi.MAX_WIDTH}"],
        input=render(gen),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    sys.stdout.write(text)
    fields = sum(len(rows or []) for _, rows in gen.messages.values())
    print(
        f"gen_proto_table: {len(gen.kinds)} kinds, {len(gen.messages)} messages, {fields} fields",
        file=sys.stderr,
    )
    for n in gen.notes:
        print(f"gen_proto_table: note: {n}", file=sys.stderr)
    for p in gen.problems:
        print(f"gen_proto_table: problem: {p}", file=sys.stderr)
    return 1 if gen.problems else 0


if __name__ == "__main__":
    sys.exit(main())
