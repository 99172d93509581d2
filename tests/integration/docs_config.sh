#!/usr/bin/env bash
# Every environment variable a binary reads (as its --help lists them) is
# documented in the README's configuration table.
set -euo pipefail
bin=${CRIER_BIN_DIR:?}
readme=${CRIER_SOURCE_DIR:?}/README.md
missing=0
for b in crier-api crier-dispatcher crier-worker crierctl; do
  for v in $("$bin/$b" --help | grep -oE '^  CRIER_[A-Z_]+' | tr -d ' '); do
    if ! grep -q "\`$v\`" "$readme"; then
      echo "FAIL: $v (read by $b) is not documented in README.md"
      missing=$((missing + 1))
    fi
  done
done
[ "$missing" -eq 0 ] || exit 1
echo "docs_config ok"
