"""FHIR R4 server: resources stored as JSON with search-index tables, ImagingStudy from the image store.

``service.FhirService`` (at ``node.extensions["fhir"]``) is the API for other plug-ins; ``web`` is the /fhir
blueprint over it; ``search_parameters.toml`` declares what is searchable.
"""
