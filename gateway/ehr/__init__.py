"""EHR integration: HL7 v2 over MLLP, CSV extracts and FHIR Bundles into the node's FHIR store.

``hl7v2`` reads and writes ER7 messages and MLLP frames; ``hl7_mapping`` and ``csv_mapping`` turn messages
and rows into FHIR transaction Bundles (pure functions over the tables of ``mappings/``, read by
``terminology``); ``service`` runs them through the FHIR service; ``mllp`` is the listener; ``plugin`` hooks
all of it into the node and the ``gateway`` command.
"""
