#!/usr/bin/env bash
# Prints the current digest of every image tag that k8s/ pins (name:tag@sha256:...), next to the pinned
# one, so that moving to a newer release is: change the tag, run this, paste the new digest.
#   bash k8s/image-digests.sh            # needs crane, or docker with buildx, and registry access
# A digest is the one of the multi-platform index (what `docker pull name:tag` resolves), as pinned.
set -euo pipefail
cd "$(dirname "$0")"

digest_of() {
  if command -v crane >/dev/null; then
    crane digest "$1"
  else
    docker buildx imagetools inspect "$1" --format '{{json .Manifest.Digest}}' | tr -d '"'
  fi
}

grep -rhoE '[a-z0-9./-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}' --include='*.yaml' --include='*Dockerfile' . |
  sort -u | while IFS= read -r pinned; do
    reference=${pinned%@*}
    current=$(digest_of "$reference")
    state=$([ "$current" = "${pinned#*@}" ] && echo same || echo CHANGED)
    printf '%-8s %s\n         now %s@%s\n' "$state" "$pinned" "$reference" "$current"
  done
