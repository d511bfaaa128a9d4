#!/usr/bin/env bash
# Writes the upgrade script of the version under work from its template: every
# sql/upgrade/tradebars--A--B.sql becomes DEST/tradebars--A--B.sql, each `--@include FILE` line
# replaced by sql/FILE whole, or from its first line starting with the quoted text
# (`--@include FILE from "TEXT"`). So a function is written once, in its sql/ file, and the
# upgrade re-runs that file (see UPGRADING.md). A missing file or text fails, writing nothing.
#   upgrade-scripts.sh DEST
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:?usage: upgrade-scripts.sh DEST}

assemble() {  # template -> stdout
  local template=$1 line file from
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ $line =~ ^--@include\ ([a-z_]+\.sql)(\ from\ \"(.*)\")?$ ]]; then
      file=sql/${BASH_REMATCH[1]}
      from=${BASH_REMATCH[3]}
      [ -f "$file" ] || { echo "$template: --@include $file: no such file" >&2; return 1; }
      echo "-- ---- $file, as in this version ----"
      if [ -n "$from" ]; then
        grep -qF -- "$from" "$file" || { echo "$template: --@include $file: no line starts with \"$from\"" >&2; return 1; }
        awk -v from="$from" 'index($0, from) == 1 { on = 1 } on' "$file"
      else
        cat "$file"
      fi
      echo "-- ---- end of $file ----"
    elif [[ $line == --@* ]]; then
      echo "$template: not a directive this script knows: $line" >&2
      return 1
    else
      printf '%s\n' "$line"
    fi
  done < "$template"
}

shopt -s nullglob
templates=(sql/upgrade/tradebars--*--*.sql)
[ ${#templates[@]} -gt 0 ] || exit 0  # none between releases
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for template in "${templates[@]}"; do
  assemble "$template" > "$tmp/$(basename "$template")"
done
cp "$tmp"/*.sql "$dest/"
