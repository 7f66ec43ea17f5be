#!/usr/bin/env bash
# Regenerates the configuration reference at the end of README.md from the
# key tables in sidecar/sc_config.c (unit_check_readme fails until you do).
#   bash tests/update-readme.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build}/sidecar/sidecar
ref=$(mktemp)
"$bin" check-config --reference >"$ref"
python3 - "$ref" <<'PY'
import sys
ref = open(sys.argv[1]).read()
s = open("README.md").read()
b = s.index("<!-- config-reference:begin")
b = s.index("\n", b) + 1
e = s.index("<!-- config-reference:end -->")
open("README.md", "w").write(s[:b] + ref + s[e:])
PY
rm -f "$ref"
echo "README.md: configuration reference updated"
