"""The CapabilityStatement: built from the same search-parameter table the server runs on, so it lists exactly
what is supported and nothing more."""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.fhir.bulk import patient_types
from gateway.fhir.params import definitions
from gateway.fhir.search import MAX_COUNT, MAX_INCLUDES, MODIFIERS, RESULT_PARAMETERS

INTERACTIONS = ("read", "vread", "update", "delete", "history-instance", "create", "search-type")
RELEASE_DATE = "2025-01-01"

_RESULT_DOCUMENTATION = (
    f"Result parameters: {', '.join(p for p in RESULT_PARAMETERS if p not in ('_format', '_pretty'))}. "
    f"_count up to {MAX_COUNT} (default 20), paging links next/previous/first/last; _summary=count or false; "
    f"_total=none|estimate|accurate; _elements on top-level elements (marked SUBSETTED); _include and "
    f"_revinclude without :iterate, at most {MAX_INCLUDES} resources per page (truncation reported in an "
    "OperationOutcome entry). Modifiers: "
    + "; ".join(f"{kind} {', '.join(':' + m for m in mods)}" for kind, mods in MODIFIERS.items())
    + "; reference :[type] and chains (subject:Patient.identifier), _has. Prefixes eq, ne, gt, lt, ge, le, sa, "
    "eb, ap on date and quantity. Token forms code, system|code, |code, system|. Unknown parameters: "
    "Prefer: handling=lenient (default; ignored and reported) or strict (400)."
)


def capability_statement(base: str) -> dict[str, Any]:
    resources = []
    for res_type, params in definitions().items():
        references = [name for name, param in params.items() if param.type == "reference"]
        revincludes = sorted(f"{source}:{name}" for source, source_params in definitions().items()
                             for name, param in source_params.items()
                             if param.type == "reference" and (not param.target or res_type in param.target))
        entry: dict[str, Any] = {
            "type": res_type,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{res_type}",
            "interaction": [{"code": code} for code in INTERACTIONS],
            "versioning": "versioned",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "enforced", "local"],
            "searchInclude": [f"{res_type}:{name}" for name in references],
            "searchRevInclude": revincludes,
            "searchParam": [
                {"name": "_id", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id", "type": "token"},
                {"name": "_lastUpdated", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
                 "type": "date"},
                *({"name": name, "type": param.type,
                   "documentation": f"{res_type}.{' | '.join(param.paths)}"} for name, param in params.items())],
        }
        if res_type in ("Patient", "Group"):
            entry["operation"] = [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/"
                                   f"OperationDefinition/{res_type.lower()}-export"}]
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": RELEASE_DATE,
        "publisher": "EUCAIM hospital gateway",
        "kind": "instance",
        "software": {"name": "eucaim-gateway", "version": __version__},
        "implementation": {"description": "EUCAIM hospital gateway FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": _RESULT_DOCUMENTATION + " Bulk Data $export exports: "
            + ", ".join(patient_types()) + " at the Patient level and at the Group level (the compartments of the "
            "Group's active Patient members; actual Groups only), every type at the system level; _type, _since "
            "and _outputFormat=application/fhir+ndjson.",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "operation": [{"name": "export",
                           "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}],
        }],
    }
