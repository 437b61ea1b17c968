#!/usr/bin/env bash
# Installs the outside clients the tests drive (py-libp2p; PyJWT for a SMART Backend Services
# client; the FHIR clients fhirpy and fhirclient, as apps use them; pinned) into a virtual
# environment at target/outside-clients. Idempotent: a complete environment is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/outside-clients
requirements="libp2p==0.8.1 PyJWT==2.10.1 fhirpy==2.3.1 fhirclient==4.4.0"
stamp="$venv/.installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$requirements" ]; then
  echo "outside clients present in $venv"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check $requirements
"$venv/bin/python" -c 'import libp2p, trio, multiaddr, jwt, cryptography, fhirpy, fhirclient'
echo "$requirements" > "$stamp"
echo "outside clients installed in $venv"
