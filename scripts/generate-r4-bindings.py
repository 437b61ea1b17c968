#!/usr/bin/env python3
"""Generates node/src/fhir/validation/r4_bindings.rs: the codes every R4 `code` element with
a required binding allows, and the element types a validator walks to find them.

Source: the R4 (4.0.1) models of fhir.resources 6.4.0 (BSD licence), which were generated
from the official StructureDefinitions and carry each required binding's codes as
`enum_values` (where a list was cut short, ending in "+", the value set's full list
below takes its place). The wheel is fetched from PyPI and checked against its SHA-256; only its
source text is read (parsed with `ast`, never imported).

    scripts/generate-r4-bindings.py [path/to/fhir.resources-6.4.0-py2.py3-none-any.whl]
"""
import ast
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "fhir.resources-6.4.0-py2.py3-none-any.whl"
WHEEL_SHA256 = "226ff1939078efea79a0abec0cc26aa6e3b8bf6e943e4d55a66dd7713f6988bd"
OUT = os.path.join(os.path.dirname(__file__), "..", "node", "src", "fhir", "validation", "r4_bindings.rs")
# Types that stand for "any resource": their element holds a resource of its own type.
ANY_RESOURCE = {"Resource", "DomainResource"}


def wheel_path():
    if len(sys.argv) > 1:
        return sys.argv[1]
    folder = tempfile.mkdtemp()
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--dest", folder, "fhir.resources==6.4.0"], check=True)
    return os.path.join(folder, WHEEL)


def field_of(node):
    """(json key, element type name, codes) of one model field, or None."""
    if not isinstance(node, ast.AnnAssign) or not isinstance(node.value, ast.Call):
        return None
    keywords = {k.arg: k.value for k in node.value.keywords}
    alias = keywords.get("alias")
    if not isinstance(alias, ast.Constant) or alias.value.startswith("_"):
        return None
    annotation = node.annotation
    if isinstance(annotation, ast.Subscript):  # typing.List[...]
        annotation = annotation.slice
    type_name = annotation.attr if isinstance(annotation, ast.Attribute) else None
    codes = []
    if "enum_values" in keywords:
        codes = [c.value for c in keywords["enum_values"].elts]
    return alias.value, type_name, codes


# The models' generator took each code list from the element's short description, which for
# these elements names only the first codes and ends in "+" (Observation.status lists 4 of its
# 8). Their full lists, from the R4 (4.0.1) value sets each binding names
# (https://hl7.org/fhir/R4/valueset-<name>.html, the expansion's selectable codes):
FULL_LISTS = {
    "observation-status": ["registered", "preliminary", "final", "amended", "corrected",
                           "cancelled", "entered-in-error", "unknown"],
    "udi-entry-type": ["barcode", "rfid", "manual", "card", "self-reported", "unknown"],
    "device-statement-status": ["active", "completed", "entered-in-error", "intended",
                                "stopped", "on-hold"],
    "diagnostic-report-status": ["registered", "partial", "preliminary", "final", "amended",
                                 "corrected", "appended", "cancelled", "entered-in-error",
                                 "unknown"],
    "encounter-status": ["planned", "arrived", "triaged", "in-progress", "onleave", "finished",
                         "cancelled", "entered-in-error", "unknown"],
    # `question` is abstract (notSelectable): an item is one of its kinds.
    "item-type": ["group", "display", "boolean", "decimal", "integer", "date", "dateTime",
                  "time", "string", "text", "url", "choice", "open-choice", "attachment",
                  "reference", "quantity"],
    "map-transform": ["create", "copy", "truncate", "escape", "cast", "append", "translate",
                      "reference", "dateOp", "uuid", "pointer", "evaluate", "cc", "c", "qty",
                      "id", "cp"],
    "supplyrequest-status": ["draft", "active", "suspended", "cancelled", "completed",
                             "entered-in-error", "unknown"],
    "task-status": ["draft", "requested", "received", "accepted", "rejected", "ready",
                    "cancelled", "in-progress", "on-hold", "failed", "completed",
                    "entered-in-error"],
}
# (model class, JSON key) -> the value set of an element whose list ends in "+".
CUT_SHORT = {
    ("DetectedIssue", "status"): "observation-status",
    ("DeviceUdiCarrier", "entryType"): "udi-entry-type",
    ("DeviceUseStatement", "status"): "device-statement-status",
    ("DiagnosticReport", "status"): "diagnostic-report-status",
    ("Encounter", "status"): "encounter-status",
    ("EncounterStatusHistory", "status"): "encounter-status",
    ("Observation", "status"): "observation-status",
    ("QuestionnaireItem", "type"): "item-type",
    ("RiskAssessment", "status"): "observation-status",
    ("StructureMapGroupRuleTarget", "transform"): "map-transform",
    ("SupplyRequest", "status"): "supplyrequest-status",
    ("Task", "status"): "task-status",
}


def completed(class_name, field):
    """The field with a list cut short replaced by its value set's full list."""
    key, type_name, codes = field
    if "+" not in codes:
        return field
    value_set = CUT_SHORT.get((class_name, key))
    if value_set is None:
        sys.exit(f"{class_name}.{key}: its code list {codes} is cut short and has no full list")
    full = FULL_LISTS[value_set]
    missing = [c for c in codes if c != "+" and c not in full]
    if missing:
        sys.exit(f"{class_name}.{key}: {missing} are not in {value_set}")
    return key, type_name, full


def main():
    path = wheel_path()
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{path}: SHA-256 {digest}, expected {WHEEL_SHA256}")
    classes = {}  # name -> (base name, [(key, type name, codes)])
    with zipfile.ZipFile(path) as wheel:
        for name in wheel.namelist():
            if not name.startswith("fhir/resources/") or "/" in name[len("fhir/resources/"):]:
                continue
            if not name.endswith(".py") or name.endswith(("fhirtypes.py", "__init__.py")):
                continue
            tree = ast.parse(wheel.read(name).decode())
            for node in tree.body:
                if not isinstance(node, ast.ClassDef) or not node.bases:
                    continue
                base = node.bases[0]
                base_name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", None)
                fields = [completed(node.name, f) for f in map(field_of, node.body) if f]
                classes[node.name] = (base_name, fields)

    def all_fields(name):
        out, seen = [], set()
        while name in classes and name not in seen:
            seen.add(name)
            base, fields = classes[name]
            out.extend(fields)
            name = base
        return out

    def child(type_name):
        if not type_name or not type_name.endswith("Type"):
            return None
        name = type_name[: -len("Type")]
        if name in ANY_RESOURCE:
            return "*"
        return name if name in classes else None

    rows = {}
    for name in classes:
        for key, type_name, codes in all_fields(name):
            rows[(name, key)] = (child(type_name), codes)

    # Keep only what leads to codes: a row with codes, or one whose child type (or any
    # resource) has rows kept.
    keep_types = {t for (t, _), (_, codes) in rows.items() if codes}
    changed = True
    while changed:
        changed = False
        for (t, _), (c, _) in rows.items():
            if t not in keep_types and c and (c == "*" or c in keep_types):
                keep_types.add(t)
                changed = True
    kept = sorted((t, k, c, codes) for (t, k), (c, codes) in rows.items()
                  if codes or (c and (c == "*" or c in keep_types)))
    code_lists = sorted({tuple(codes) for *_, codes in kept if codes})
    index = {codes: i for i, codes in enumerate(code_lists)}

    def rust(s):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "//! Generated by `scripts/generate-r4-bindings.py` from the R4 (4.0.1) models of",
        "//! fhir.resources 6.4.0 (BSD), with the full lists of the R4 value sets the models cut",
        "//! short: do not edit. The codes of every `code` element with a required binding, and",
        "//! the element types that lead to them.",
        "",
        "/// The code lists: each the codes one required binding allows.",
        "pub static CODE_LISTS: &[&[&str]] = &[",
    ]
    for codes in code_lists:
        lines.append("    &[" + ", ".join(map(rust, codes)) + "],")
    lines += [
        "];",
        "",
        "/// `(type, JSON key, element type, code list)`, sorted by type and key. Element type:",
        "/// `\"\"` for a primitive, `\"*\"` for a resource of its own `resourceType`. Code list: an",
        "/// index into [`CODE_LISTS`], or `u16::MAX` for an element without a required binding.",
        "pub static ELEMENTS: &[(&str, &str, &str, u16)] = &[",
    ]
    for t, k, c, codes in kept:
        code = index[tuple(codes)] if codes else "u16::MAX"
        lines.append(f"    ({rust(t)}, {rust(k)}, {rust(c or '')}, {code}),")
    lines += ["];", ""]
    with open(OUT, "w") as f:
        f.write("\n".join(lines))
    print(f"{OUT}: {len(kept)} elements, {len(code_lists)} code lists", file=sys.stderr)


if __name__ == "__main__":
    main()
