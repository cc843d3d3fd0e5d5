#!/usr/bin/env bash
# Stage the checkout as <dir>/ansible_collections/kubepki/certs (ansible-test needs that layout and
# resolves symlinks, so this is a real copy). Copies tracked + untracked-not-ignored files and .git.
# Usage: scripts/stage.sh [<dir>]   (default: a new temporary directory)
# Prints the staged collection directory on stdout.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST_ROOT="${1:-$(mktemp -d "${TMPDIR:-/tmp}/kubepki-stage.XXXXXX")}"
mkdir -p "${DEST_ROOT}"
DEST_ROOT="$(cd "${DEST_ROOT}" && pwd -P)"
COLL="${DEST_ROOT}/ansible_collections/kubepki/certs"

if [ -e "${COLL}" ] && [ -n "$(ls -A "${COLL}")" ]; then
    echo "stage: ${COLL} exists and is not empty" >&2
    exit 1
fi
mkdir -p "${COLL}"

# Files deleted from the work tree but still in the index are skipped (--ignore-failed-read).
git -C "${SRC}" ls-files -z --cached --others --exclude-standard \
    | tar -C "${SRC}" --null --ignore-failed-read -T - -cf - \
    | tar -xf - -C "${COLL}"
cp -a "${SRC}/.git" "${COLL}/"

echo "${COLL}"
