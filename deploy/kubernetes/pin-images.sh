#!/bin/sh
# Pins the overlays' images by digest: asks the registry for the digest of each image's tag and
# writes it (and the registry's name for the two fer-search images) into
# components/images/kustomization.yaml, in place of the placeholder. Run it once you have pushed
# fer-search and fer-search-pgbouncer (README.md here, step 1), with the registry they are in:
#
#   deploy/kubernetes/pin-images.sh registry.lab.example/fer-search
#
# Needs `docker buildx` or `crane` on PATH, and read access to both registries (yours, and
# Docker Hub for postgres). Check the result with `git diff`, then commit it in your fork.
set -eu

registry=${1:?usage: pin-images.sh REGISTRY (where fer-search and fer-search-pgbouncer are)}
file=$(dirname "$0")/components/images/kustomization.yaml

digest_of() {  # $1: image:tag; prints sha256:...
    if command -v crane > /dev/null 2>&1; then
        crane digest "$1"
    elif docker buildx version > /dev/null 2>&1; then
        docker buildx imagetools inspect "$1" --format '{{json .Manifest.Digest}}' | tr -d '"'
    else
        echo "pin-images: neither crane nor docker buildx is on PATH" >&2
        exit 1
    fi
}

# One entry at a time: name, the name to pull, the tag (as the file has them).
awk '/- name:/{name=$3} /newTag:/{gsub(/"/, "", $2); print name, $2}' "$file" |
while read -r name tag; do
    case $name in
        fer-search|fer-search-pgbouncer) pull=$registry/$name ;;
        *) pull=$name ;;
    esac
    digest=$(digest_of "$pull:$tag")
    case $digest in
        sha256:????????????????????????????????????????????????????????????????) ;;
        *) echo "pin-images: no digest for $pull:$tag (got '$digest')" >&2; exit 1 ;;
    esac
    # Rewrite this entry's newName and digest (the lines after its `- name:`).
    awk -v name="$name" -v pull="$pull" -v digest="$digest" '
        /- name:/ { current = $3 }
        current == name && /newName:/ { sub(/newName:.*/, "newName: " pull) }
        current == name && /digest:/ { sub(/digest:.*/, "digest: " digest) }
        { print }' "$file" > "$file.tmp"
    mv "$file.tmp" "$file"
    echo "pin-images: $name -> $pull:$tag@$digest"
done
