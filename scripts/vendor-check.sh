#!/usr/bin/env bash
# Checks that the vendored front-end files are the ones VENDOR.md names (sha256).
set -euo pipefail
cd "$(dirname "$0")/../server/src/web/assets/vendor"
fail=0
while IFS='|' read -r _ file _ _ hash _; do
  file=$(echo "$file" | tr -d ' `'); hash=$(echo "$hash" | tr -d ' `')
  [[ "$file" == *.* && ${#hash} == 64 ]] || continue
  got=$(sha256sum "$file" | cut -d' ' -f1)
  if [ "$got" = "$hash" ]; then echo "ok   $file"; else echo "DIFF $file: $got, VENDOR.md says $hash"; fail=1; fi
done < VENDOR.md
exit $fail
