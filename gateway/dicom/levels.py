"""Which attributes belong to the patient/study, series and instance levels of the DICOM information model.

Study- and series-level attributes are copied into the index from the first instance of each study or
series, so that a QIDO-RS or C-FIND answer never has to open a file. The lists follow the Patient, General
Study, Patient Study, General Series, General Equipment and Frame of Reference modules (PS3.3), plus the
query/retrieve keys of PS3.4 C.6 and the QIDO-RS return keys of PS3.18 Table 10.6.3-3..5.
"""

from __future__ import annotations

from typing import Literal

from pydicom.datadict import tag_for_keyword

Level = Literal["study", "series", "instance"]


def _tags(*keywords: str) -> frozenset[int]:
    tags = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:  # a typo here would silently drop an attribute from every answer
            raise RuntimeError(f"unknown DICOM keyword {keyword}")
        tags.add(int(tag))
    return frozenset(tags)


SPECIFIC_CHARACTER_SET = 0x00080005
TIMEZONE_OFFSET = 0x00080201

# Patient module (PS3.3 C.7.1.1) and the clinical trial subject: also what a patient-level answer carries.
PATIENT_LEVEL = _tags(
    "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence", "OtherPatientNames",
    "PatientBirthName", "PatientMotherBirthName", "EthnicGroup", "PatientComments", "PatientSpeciesDescription",
    "PatientBreedDescription", "ResponsiblePerson", "ResponsibleOrganization", "PatientIdentityRemoved",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence", "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID", "ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
)

STUDY_LEVEL = PATIENT_LEVEL | _tags(
    # General Study and Patient Study modules
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence", "ReasonForPerformedProcedureCodeSequence", "RequestingService",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize",
    "PatientWeight", "Occupation", "AdditionalPatientHistory", "PregnancyStatus", "SmokingStatus",
    "ReferencedStudySequence",
)

SERIES_LEVEL = _tags(
    # General Series module
    "Modality", "SeriesInstanceUID", "SeriesNumber", "Laterality", "SeriesDate", "SeriesTime",
    "PerformingPhysicianName", "ProtocolName", "SeriesDescription", "SeriesDescriptionCodeSequence",
    "OperatorsName", "BodyPartExamined", "PatientPosition", "AnatomicalOrientationType",
    "PerformedProcedureStepID", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepDescription", "PerformedProtocolCodeSequence", "RequestAttributesSequence",
    "ReferencedPerformedProcedureStepSequence",
    # General Equipment and Frame of Reference modules
    "Manufacturer", "InstitutionName", "InstitutionAddress", "StationName", "InstitutionalDepartmentName",
    "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions", "FrameOfReferenceUID",
    "PositionReferenceIndicator",
)

# Returned at every level so that a client can decode the other strings.
COMMON = frozenset({SPECIFIC_CHARACTER_SET, TIMEZONE_OFFSET})

# PS3.18 Table 10.6.3-3, -4 and -5: what a QIDO-RS answer carries without includefield.
STUDY_DEFAULTS = _tags(
    "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
    "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC", "RetrieveURL", "PatientName",
    "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)
SERIES_DEFAULTS = _tags(
    "SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "RetrieveURL",
    "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "RequestAttributesSequence",
)
INSTANCE_DEFAULTS = _tags(
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "TimezoneOffsetFromUTC",
    "RetrieveURL", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
)

# Attributes the index computes rather than copies (PS3.4 C.3.4 and C.6.1.1).
MODALITIES_IN_STUDY = 0x00080061
SOP_CLASSES_IN_STUDY = 0x00080062
NUMBER_OF_STUDY_RELATED_SERIES = 0x00201206
NUMBER_OF_STUDY_RELATED_INSTANCES = 0x00201208
NUMBER_OF_SERIES_RELATED_INSTANCES = 0x00201209
INSTANCE_AVAILABILITY = 0x00080056
RETRIEVE_URL = 0x00081190
RETRIEVE_AE_TITLE = 0x00080054

STUDY_COMPUTED = frozenset({MODALITIES_IN_STUDY, NUMBER_OF_STUDY_RELATED_SERIES,
                            NUMBER_OF_STUDY_RELATED_INSTANCES})
SERIES_COMPUTED = frozenset({NUMBER_OF_SERIES_RELATED_INSTANCES})


def level_of(tag: int) -> Level:
    if tag in STUDY_LEVEL or tag in STUDY_COMPUTED:
        return "study"
    if tag in SERIES_LEVEL or tag in SERIES_COMPUTED:
        return "series"
    return "instance"
