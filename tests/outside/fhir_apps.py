"""Drives a zorgmesh node with two outside FHIR clients as a clinician's app would:
fhirpy (search with filters, sort, include, count, get_or_create, conditional update, patch)
and fhirclient (the SMART on FHIR Python models: search and read). Prints one JSON object
of what each step saw; the Rust test (tests/tests/outside_fhir_clients.rs) checks it.

    python fhir_apps.py BASE_URL ACCESS_TOKEN
"""
import json
import sys

from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome

BSN = "http://fhir.nl/fhir/NamingSystem/bsn"
LOINC = "http://loinc.org"


def main():
    base, token = sys.argv[1], sys.argv[2]
    seen = {}
    client = SyncFHIRClient(base, authorization=f"Bearer {token}")

    # get_or_create: a conditional create, twice.
    patient = client.resource(
        "Patient",
        identifier=[{"system": BSN, "value": "999911120"}],
        name=[{"family": "Jansen", "given": ["Anna"]}],
        birthDate="1950-03-04",
    )
    created, was_created = client.resources("Patient").search(
        identifier=f"{BSN}|999911120").get_or_create(patient)
    again, created_again = client.resources("Patient").search(
        identifier=f"{BSN}|999911120").get_or_create(patient)
    seen["get_or_create"] = [bool(was_created), bool(created_again), created.id == again.id]
    pid = created.id

    other = client.resource("Patient", identifier=[{"system": BSN, "value": "999911132"}],
                            name=[{"family": "de Vries"}])
    other.save()

    for n, (code, date, value) in enumerate([
        ("8867-4", "2021-01-10", 61), ("8867-4", "2021-03-10", 72),
        ("8867-4", "2021-05-10", 95), ("8310-5", "2021-04-01", 37.2),
    ]):
        client.resource(
            "Observation", status="final",
            code={"coding": [{"system": LOINC, "code": code}]},
            subject={"reference": f"Patient/{pid}"},
            effectiveDateTime=date,
            valueQuantity={"value": value, "system": "http://unitsofmeasure.org", "code": "/min"},
        ).save()
    client.resource(
        "Observation", status="final", code={"coding": [{"system": LOINC, "code": "8867-4"}]},
        subject={"reference": f"Patient/{other.id}"}, effectiveDateTime="2021-02-02",
        valueQuantity={"value": 50},
    ).save()

    # Search with filters, sort, count and include.
    heart = client.resources("Observation").search(
        patient=pid, code=f"{LOINC}|8867-4").sort("-date")
    seen["heart_rates_newest_first"] = [o["valueQuantity"]["value"] for o in heart.fetch_all()]
    seen["count"] = heart.count()
    seen["filtered"] = [o["valueQuantity"]["value"] for o in client.resources("Observation").search(
        patient=pid, date__ge="2021-03-01", **{"value-quantity": "gt70"}).sort("date").fetch_all()]
    page = client.resources("Observation").search(patient=pid).sort("date").limit(2).fetch()
    seen["first_page"] = [o["effectiveDateTime"] for o in page]
    raw = client.resources("Observation").search(code=f"{LOINC}|8310-5").include(
        "Observation", "patient").fetch_raw()
    seen["include"] = sorted(
        f'{e["search"]["mode"]}:{e["resource"]["resourceType"]}' for e in raw.entry)
    seen["by_bsn_chain"] = client.resources("Observation").search(
        **{"patient.identifier": f"{BSN}|999911132"}).count()

    # Conditional update by search, then a patch (fhirpy sends a merge patch).
    updated = client.resource("Patient", identifier=[{"system": BSN, "value": "999911120"}],
                              name=[{"family": "Jansen-de Vries", "given": ["Anna"]}],
                              birthDate="1950-03-04")
    result, update_created = client.resources("Patient").search(
        identifier=f"{BSN}|999911120").update(updated)
    seen["conditional_update"] = [result.id == pid, bool(update_created),
                                  result["name"][0]["family"]]
    client.patch("Patient", pid, active=True)
    reread = client.reference("Patient", pid).to_resource()
    seen["patched"] = [reread.get("active"), reread["meta"]["versionId"]]
    try:
        client.resources("Patient").search(identifier=f"{BSN}|").update(updated)
        seen["many_matches"] = "updated"
    except MultipleResourcesFound:
        seen["many_matches"] = "412"
    strict = SyncFHIRClient(base, authorization=f"Bearer {token}",
                            extra_headers={"Prefer": "handling=strict"})
    try:
        strict.resources("Observation").search(colour="red").fetch()
        seen["strict"] = "accepted"
    except OperationOutcome:
        seen["strict"] = "refused"

    # fhirclient: the SMART Python models.
    from fhirclient import server as fhir_server
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient

    smart = fhir_server.FHIRServer(None, base_uri=base.rstrip("/") + "/")
    smart.session.headers["Authorization"] = f"Bearer {token}"
    found = Observation.where(struct={"patient": pid, "code": f"{LOINC}|8310-5"}).perform_resources(smart)
    seen["fhirclient_search"] = [o.valueQuantity.value for o in found]
    read = Patient.read(pid, smart)
    seen["fhirclient_read"] = [read.name[0].family, read.birthDate.isostring]
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
