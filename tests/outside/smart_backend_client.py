"""An outside SMART Backend Services client: PyJWT signs the client assertion, the standard
library speaks HTTP. It discovers the token endpoint, gets a token, resolves a dossier, and
tries to use its assertion a second time. Prints one JSON line with what each step got.

Usage: smart_backend_client.py <fhir base> <client id> <kid> <private key PEM file> <bsn>
"""

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import jwt


def call(request):
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def main():
    fhir_base, client_id, kid, key_file, bsn = sys.argv[1:6]
    with open(key_file, "rb") as f:
        private_key = f.read()
    status, smart = call(urllib.request.Request(fhir_base + "/.well-known/smart-configuration"))
    token_endpoint = smart["token_endpoint"]
    now = int(time.time())
    assertion = jwt.encode(
        {
            "iss": client_id,
            "sub": client_id,
            "aud": token_endpoint,
            "exp": now + 60,
            "iat": now,
            "jti": str(uuid.uuid4()),
        },
        private_key,
        algorithm="ES384",
        headers={"kid": kid, "typ": "JWT"},
    )
    form = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "scope": "system/Patient.rs system/Observation.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }
    ).encode()
    token_request = lambda: urllib.request.Request(
        token_endpoint,
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    token_status, grant = call(token_request())
    replay_status, replay = call(token_request())
    dossier_status, dossier = call(
        urllib.request.Request(
            fhir_base
            + "/Patient/$dossier?identifier="
            + urllib.parse.quote("http://fhir.nl/fhir/NamingSystem/bsn|" + bsn, safe="|:/"),
            headers={
                "Authorization": "Bearer " + grant["access_token"],
                "Zorgmesh-Practitioner": "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|123456789",
            },
        )
    )
    types = sorted(
        {
            e["resource"]["resourceType"]
            for e in (dossier or {}).get("entry", [])
            if e["resource"]["resourceType"] != "OperationOutcome"
        }
    )
    print(
        json.dumps(
            {
                "discovery": status,
                "token": token_status,
                "scope": grant.get("scope"),
                "replay": replay_status,
                "replay_error": (replay or {}).get("error"),
                "dossier": dossier_status,
                "types": types,
            }
        )
    )


if __name__ == "__main__":
    main()
