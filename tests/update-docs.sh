#!/usr/bin/env bash
# Regenerates the configuration reference in docs/configuration.md from the
# key tables in sidecar/config/sc_config.c (unit_check_docs fails until you do).
#   bash tests/update-docs.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build}/sidecar/sidecar
doc=docs/configuration.md
ref=$(mktemp)
"$bin" check-config --reference >"$ref"
python3 - "$ref" "$doc" <<'PY'
import sys
ref, doc = open(sys.argv[1]).read(), sys.argv[2]
# The document already has the section title: drop the generated H1 (and the blank line
# after it) and demote the other headings one level, as unit_check_docs expects.
lines = ref.split("\n")
if lines and lines[0].startswith("# "):
    lines = lines[2:] if len(lines) > 1 and lines[1] == "" else lines[1:]
ref = "\n".join("#" + l if l.startswith("#") else l for l in lines)
s = open(doc).read()
b = s.index("<!-- config-reference:begin")
b = s.index("\n", b) + 1
e = s.index("<!-- config-reference:end -->")
open(doc, "w").write(s[:b] + ref + s[e:])
PY
rm -f "$ref"
echo "$doc: configuration reference updated"
