#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need (Debian packages, the
# Python package with its test extras), starts PostgreSQL on loopback, runs ruff and pytest, stops it.
# Usage: bash tests/run_all.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need_packages=()
# Orthanc (with its DICOMweb plugin) plays the hospital PACS in the PACS-client tests; dcmtk the modalities.
for pkg in postgresql dcmtk orthanc orthanc-dicomweb; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_packages+=("$pkg")
done
if [ ${#need_packages[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need_packages[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >/dev/null
  # The packages start system services we do not use; the tests start their own on other ports.
  $SUDO service postgresql stop >/dev/null 2>&1 || true
  $SUDO service orthanc stop >/dev/null 2>&1 || true
fi

echo "== installing the gateway with its test extras"
python3 -m pip install -q -e ".[test]" 2>&1 | grep -v -e "is ignored" -e "Running pip as the 'root' user" || true
# pyradiomics (the peer the IBSI features are compared with) imports numpy in its build script.
python3 -c "import radiomics" 2>/dev/null || python3 -m pip install -q --no-build-isolation "pyradiomics>=3.0" 2>&1 \
  | grep -v -e "is ignored" -e "Running pip as the 'root' user" || true

echo "== installing the external FHIR validators (tests/fhir/validator)"
(cd tests/fhir/validator && npm ci --no-audit --no-fund --loglevel=error)

echo "== starting PostgreSQL on loopback"
GATEWAY_TEST_POSTGRES_URL=$(bash .ci/postgres.sh start)
export GATEWAY_TEST_POSTGRES_URL
trap 'bash .ci/postgres.sh stop' EXIT

echo "== ruff"
python3 -m ruff check gateway tests

echo "== pytest"
python3 -m pytest -p no:cacheprovider "$@"
