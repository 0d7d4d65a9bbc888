"""Batch IBSI radiomics extraction over cohorts of stored series (the ``features`` plug-in).

``gateway features extract --cohort QUERY --params NAME|FILE`` and ``POST /api/features/extract`` run the
``features-extract`` job: every region of every SEG/RTSTRUCT that references a selected series, stored after
MI-CDM IMAGE_FEATURE (``models``), optionally as FHIR Observations and DICOM SR TID 1500 (``service``,
``report``), here, on a process pool or on a Dask cluster (``executor``).
"""
