#!/bin/sh
# Prints the Debian version of the vmpersona packages: from the nearest
# git tag vX.Y.Z (vX.Y.Z exactly, or X.Y.Z+gitN.gHASH N commits after it),
# else the top entry of packaging/changelog.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if d=$(git -C "$here" describe --tags --match 'v[0-9]*' 2>/dev/null); then
  d=${d#v}
  case $d in
    *-*-g*) n=${d%-g*}; n=${n##*-}; base=${d%-"$n"-g*}; h=${d##*-g}; echo "$base+git$n.g$h" ;;
    *) echo "$d" ;;
  esac
  exit 0
fi
sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' "$here/changelog"
