"""Reference data the demo data set draws from: names, hospitals, scanners, protocols and cancers.

The hospitals are fictional; names, vendors, sequences and codes are the real-world kind a PACS holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import CTImageStorage, MRImageStorage, PositronEmissionTomographyImageStorage

SOP_CLASS_BY_MODALITY = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "PT": PositronEmissionTomographyImageStorage,
}


# --- People --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NamePool:
    """Names of one country. A family entry "m|f" has a masculine and a feminine form."""

    country: str
    family: tuple[str, ...]
    given_male: tuple[str, ...]
    given_female: tuple[str, ...]
    double_family_name: bool = False  # Iberian custom: two surnames

    def family_name(self, entry: str, sex: str) -> str:
        if "|" in entry:
            male, female = entry.split("|")
            return female if sex == "F" else male
        return entry


NAME_POOLS: dict[str, NamePool] = {
    "ES": NamePool(
        "ES",
        ("García", "Fernández", "González", "Rodríguez", "López", "Martínez", "Sánchez", "Pérez", "Gómez",
         "Martín", "Jiménez", "Ruiz", "Hernández", "Díaz", "Moreno", "Muñoz", "Álvarez", "Romero",
         "Navarro", "Torres", "Domínguez", "Vázquez", "Ramos", "Gil", "Serrano", "Blanco", "Molina",
         "Ortega", "Castillo", "Núñez"),
        ("Antonio", "José", "Manuel", "Francisco", "Juan", "Javier", "Jesús", "Carlos", "Miguel Ángel",
         "Rafael", "Pedro", "Ángel", "Alejandro", "Fernando", "Luis", "Sergio", "Andrés", "Ramón",
         "Joaquín", "Emilio"),
        ("María Carmen", "María", "Carmen", "Josefa", "Ana María", "Isabel", "María Pilar",
         "María Dolores", "Laura", "Lucía", "Cristina", "Marta", "Pilar", "Mercedes", "Rosa María",
         "Elena", "Inmaculada", "Montserrat", "Concepción", "Teresa"),
        double_family_name=True,
    ),
    "DE": NamePool(
        "DE",
        ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz",
         "Hoffmann", "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder", "Neumann",
         "Schwarz", "Zimmermann", "Braun", "Krüger", "Hofmann", "Hartmann", "Lange", "Werner", "Krause",
         "Lehmann", "Köhler", "Weiß"),
        ("Peter", "Wolfgang", "Michael", "Thomas", "Klaus", "Jürgen", "Andreas", "Stefan", "Hans-Jürgen",
         "Uwe", "Dieter", "Frank", "Bernd", "Günter", "Manfred", "Horst", "Rainer", "Jörg", "Matthias",
         "Ralf"),
        ("Ursula", "Monika", "Petra", "Elisabeth", "Sabine", "Renate", "Helga", "Karin", "Brigitte",
         "Ingrid", "Gabriele", "Andrea", "Birgit", "Christa", "Gisela", "Jutta", "Heike", "Susanne",
         "Bärbel", "Doris"),
    ),
    "FR": NamePool(
        "FR",
        ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
         "Moreau", "Simon", "Laurent", "Lefèvre", "Michel", "Garcia", "David", "Bertrand", "Roux",
         "Vincent", "Fournier", "Morel", "Girard", "André", "Mercier", "Dupont", "Lambert", "Bonnet",
         "François", "Rousseau", "Chevalier"),
        ("Jean", "Michel", "Philippe", "Alain", "Patrick", "Nicolas", "Christophe", "Pierre", "Daniel",
         "Bernard", "Éric", "Frédéric", "Laurent", "Stéphane", "Gérard", "Jacques", "François", "René",
         "Thierry", "Hervé"),
        ("Marie", "Nathalie", "Isabelle", "Sylvie", "Catherine", "Françoise", "Monique", "Christine",
         "Martine", "Valérie", "Sandrine", "Véronique", "Brigitte", "Chantal", "Nicole", "Hélène",
         "Élisabeth", "Danielle", "Josiane", "Geneviève"),
    ),
    "IT": NamePool(
        "IT",
        ("Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano", "Colombo", "Ricci", "Marino",
         "Greco", "Bruno", "Gallo", "Conti", "De Luca", "Mancini", "Costa", "Giordano", "Rizzo",
         "Lombardi", "Moretti", "Barbieri", "Fontana", "Santoro", "Mariani", "Rinaldi", "Caruso",
         "Ferrara", "Galli", "Martini", "Leone"),
        ("Giuseppe", "Giovanni", "Antonio", "Mario", "Luigi", "Francesco", "Angelo", "Vincenzo", "Pietro",
         "Salvatore", "Carlo", "Franco", "Domenico", "Bruno", "Paolo", "Michele", "Giorgio", "Aldo",
         "Sergio", "Luciano"),
        ("Maria", "Anna", "Giuseppina", "Rosa", "Angela", "Giovanna", "Teresa", "Lucia", "Carmela",
         "Caterina", "Francesca", "Antonietta", "Carla", "Elena", "Concetta", "Rita", "Margherita",
         "Franca", "Paola", "Graziella"),
    ),
    "PT": NamePool(
        "PT",
        ("Silva", "Santos", "Ferreira", "Pereira", "Oliveira", "Costa", "Rodrigues", "Martins", "Jesus",
         "Sousa", "Fernandes", "Gonçalves", "Gomes", "Lopes", "Marques", "Alves", "Almeida", "Ribeiro",
         "Pinto", "Carvalho", "Teixeira", "Moreira", "Correia", "Mendes", "Nunes", "Soares", "Vieira",
         "Monteiro", "Cardoso", "Rocha"),
        ("José", "António", "Manuel", "João", "Francisco", "Joaquim", "Fernando", "Luís", "Carlos",
         "Jorge", "Paulo", "Mário", "Rui", "Pedro", "Armando", "Álvaro", "Vítor", "Artur", "Domingos",
         "Albano"),
        ("Maria", "Ana", "Maria de Fátima", "Maria da Conceição", "Isabel", "Manuela", "Rosa", "Teresa",
         "Fernanda", "Helena", "Lurdes", "Graça", "Conceição", "Cristina", "Paula", "Luísa", "Filomena",
         "Olga", "Irene", "Margarida"),
        double_family_name=True,
    ),
    "NL": NamePool(
        "NL",
        ("de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Janssen", "Visser",
         "Smit", "Meijer", "de Boer", "Mulder", "de Groot", "Bos", "Vos", "Peters", "Hendriks",
         "van Leeuwen", "Dekker", "Brouwer", "de Wit", "Dijkstra", "Smits", "de Graaf", "van der Meer",
         "van der Linden", "Kok", "Jacobs", "de Haan", "Vermeulen"),
        ("Jan", "Johannes", "Cornelis", "Hendrik", "Willem", "Pieter", "Gerrit", "Jacobus", "Adrianus",
         "Petrus", "Hans", "Kees", "Henk", "Wim", "Peter", "Gert", "Johan", "Marcel", "Ruud", "Sjoerd"),
        ("Maria", "Johanna", "Anna", "Cornelia", "Wilhelmina", "Elisabeth", "Hendrika", "Geertruida",
         "Margaretha", "Catharina", "Ingrid", "Annemieke", "Marja", "Els", "Anja", "Monique", "Ria",
         "Wilma", "Yvonne", "Marieke"),
    ),
    "PL": NamePool(
        "PL",
        ("Nowak", "Kowalski|Kowalska", "Wiśniewski|Wiśniewska", "Wójcik", "Kowalczyk",
         "Kamiński|Kamińska", "Lewandowski|Lewandowska", "Zieliński|Zielińska", "Szymański|Szymańska",
         "Woźniak", "Dąbrowski|Dąbrowska", "Kozłowski|Kozłowska"),
        ("Krzysztof", "Andrzej", "Piotr", "Tomasz", "Paweł", "Józef", "Stanisław", "Marek", "Grzegorz",
         "Jerzy"),
        ("Anna", "Maria", "Katarzyna", "Małgorzata", "Agnieszka", "Barbara", "Krystyna", "Ewa",
         "Elżbieta", "Zofia"),
    ),
    "SE": NamePool(
        "SE",
        ("Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Olsson", "Persson",
         "Svensson", "Gustafsson", "Pettersson", "Jönsson"),
        ("Lars", "Anders", "Per", "Karl", "Mikael", "Nils", "Bengt", "Göran", "Lennart", "Åke"),
        ("Anna", "Eva", "Karin", "Kristina", "Margareta", "Birgitta", "Ingrid", "Marie", "Ulla",
         "Gunilla"),
    ),
}


# --- Hospitals -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hospital:
    """A fictional hospital; one gateway serves one of them."""

    country: str                  # also the key of its main NamePool
    language: str                 # study descriptions are written in the local language
    name: str                     # InstitutionName
    address: str                  # InstitutionAddress
    issuer: str                   # IssuerOfPatientID
    mrn_prefix: str
    mrn_digits: int
    accession_prefix: str
    radiology: str                # InstitutionalDepartmentName
    nuclear_medicine: str
    physician_prefix: tuple[str, str]  # (male, female) PN name prefix


HOSPITALS: tuple[Hospital, ...] = (
    Hospital("ES", "es", "Hospital Universitario Los Almendros", "Avenida de la Ciencia 12, 28999 Valdemora",
             "HULA", "", 8, "A", "Radiodiagnóstico", "Medicina Nuclear", ("Dr.", "Dra.")),
    Hospital("DE", "de", "Universitätsklinikum Auenstadt", "Lindenallee 4, 99999 Auenstadt",
             "UKAU", "10", 8, "RA", "Radiologie", "Nuklearmedizin", ("Dr. med.", "Dr. med.")),
    Hospital("FR", "fr", "CHU de Val-Sainte-Claire", "2 rue des Tilleuls, 99000 Val-Sainte-Claire",
             "CHUVSC", "", 10, "VSC", "Imagerie médicale", "Médecine nucléaire", ("Dr", "Dr")),
    Hospital("IT", "it", "Azienda Ospedaliero-Universitaria San Lorenzo di Borgovalle",
             "Viale dei Platani 8, 99100 Borgovalle", "AOUSL", "", 9, "SL", "Radiologia",
             "Medicina Nucleare", ("Dott.", "Dott.ssa")),
    Hospital("PT", "pt", "Centro Hospitalar Universitário de Vila Serena", "Rua das Acácias 21, 9999-001 Vila Serena",
             "CHUVS", "", 7, "VS", "Imagiologia", "Medicina Nuclear", ("Dr.", "Dra.")),
    Hospital("NL", "nl", "Universitair Medisch Centrum Westerhaven", "Havenweg 1, 9999 ZZ Westerhaven",
             "UMCW", "", 7, "W", "Radiologie", "Nucleaire Geneeskunde", ("dr.", "dr.")),
)


# --- Scanners ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScannerModel:
    modality: str            # "CT", "MR" or "PT" (a PET/CT)
    manufacturer: str        # as the vendor writes it in Manufacturer
    model: str
    software: str
    vendor: str              # "siemens" | "ge" | "philips" | "canon", picks naming conventions
    field_strength_t: float | None = None
    kernels: tuple[str, str, str] = ("", "", "")  # CT: soft tissue, lung, bone


SCANNER_MODELS: tuple[ScannerModel, ...] = (
    ScannerModel("CT", "SIEMENS", "SOMATOM Definition AS+", "syngo CT VA48A", "siemens",
                 kernels=("B30f", "B70f", "B60f")),
    ScannerModel("CT", "SIEMENS", "SOMATOM Force", "syngo CT VB20A", "siemens",
                 kernels=("Br40d", "Bl57d", "Br64d")),
    ScannerModel("CT", "GE MEDICAL SYSTEMS", "Revolution CT", "revo_ct_22ax.40", "ge",
                 kernels=("STANDARD", "LUNG", "BONE")),
    ScannerModel("CT", "Philips", "iCT 256", "4.1.6", "philips", kernels=("B", "L", "D")),
    ScannerModel("CT", "CANON_MEC", "Aquilion ONE", "V8.8SP0003", "canon", kernels=("FC08", "FC52", "FC30")),
    ScannerModel("MR", "SIEMENS", "MAGNETOM Aera", "syngo MR E11", "siemens", field_strength_t=1.5),
    ScannerModel("MR", "SIEMENS", "MAGNETOM Vida", "syngo MR XA20", "siemens", field_strength_t=3.0),
    ScannerModel("MR", "GE MEDICAL SYSTEMS", "SIGNA Artist", "27\\LX\\MR RX27.0_R03", "ge", field_strength_t=1.5),
    ScannerModel("MR", "GE MEDICAL SYSTEMS", "DISCOVERY MR750", "25\\LX\\MR DV25.0_R02", "ge",
                 field_strength_t=3.0),
    ScannerModel("MR", "Philips Medical Systems", "Ingenia", "5.4.1\\5.4.1.1", "philips", field_strength_t=3.0),
    ScannerModel("MR", "Philips Medical Systems", "Achieva", "5.1.7\\5.1.7.2", "philips", field_strength_t=1.5),
    ScannerModel("PT", "SIEMENS", "Biograph Vision 600", "VG80B", "siemens", kernels=("B31f", "B70f", "B60f")),
    ScannerModel("PT", "SIEMENS", "Biograph mCT Flow", "VG60A", "siemens", kernels=("B19f", "B70f", "B60f")),
    ScannerModel("PT", "GE MEDICAL SYSTEMS", "Discovery MI", "pet_cmi_4.0", "ge",
                 kernels=("STANDARD", "LUNG", "BONE")),
    ScannerModel("PT", "Philips Medical Systems", "Vereos PET/CT", "2.0.2", "philips", kernels=("B", "L", "D")),
)


# --- Protocols -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MrSequence:
    scanning_sequence: tuple[str, ...]   # ScanningSequence
    sequence_variant: tuple[str, ...]    # SequenceVariant
    scan_options: tuple[str, ...]        # ScanOptions
    acquisition_type: str                # MRAcquisitionType
    repetition_time_ms: float
    echo_time_ms: float
    flip_angle_deg: float
    echo_train_length: int
    b_value: float | None = None
    names: tuple[str, str, str] = ("", "", "")  # SeriesDescription for siemens, ge, philips


@dataclass(frozen=True)
class SeriesProtocol:
    key: str
    modality: str                 # "CT" | "MR" | "PT"
    contrast: str                 # phantom rendering contrast
    label: str                    # CT: phase word in the description ("native", "venous", "lung", ...)
    matrix: int
    slice_thickness_mm: float
    slice_spacing_mm: float
    noise: float                  # CT: HU; MR: fraction of the tissue signal scale; PET: relative
    kernel: str = "soft"          # CT reconstruction kernel class: "soft" | "lung" | "bone"
    window: tuple[float, float, str] | None = None  # CT window centre, width, explanation
    contrast_agent: bool = False
    delay_s: int = 0              # acquisition start after the study start
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    mr: MrSequence | None = None
    reuse_of: str | None = None   # CT: a second reconstruction of the same acquisition


@dataclass(frozen=True)
class ExamProtocol:
    key: str
    modality: str                     # main modality of the study: "CT" | "MR" | "PT"
    region: str                       # key of gateway.demo.anatomy.REGIONS
    region_label: str                 # CT: anatomy word in series descriptions
    body_part: str                    # BodyPartExamined defined term
    protocol_name: str
    descriptions: dict[str, str]      # StudyDescription per language
    series: tuple[SeriesProtocol, ...]
    fov_mm: float | None = None       # None: fit to the patient's body
    fov_centre: tuple[float, float] | None = None  # template x, y; None: the body's centre
    nuclear_medicine: bool = False


SOFT_WINDOW = (40.0, 400.0, "SOFT TISSUE")
LUNG_WINDOW = (-600.0, 1500.0, "LUNG")
BONE_WINDOW = (450.0, 1800.0, "BONE")
LIVER_WINDOW = (60.0, 200.0, "LIVER")


def _ct(key: str, contrast: str, label: str, thickness: float, *, kernel: str = "soft",
        window: tuple[float, float, str] = SOFT_WINDOW, delay_s: int = 0, noise: float = 11.0,
        reuse_of: str | None = None) -> SeriesProtocol:
    return SeriesProtocol(key, "CT", contrast, label, 256, thickness, thickness, noise, kernel, window,
                          contrast_agent=contrast != "ct_native", delay_s=delay_s, reuse_of=reuse_of)


T2_TSE = MrSequence(("SE",), ("SK", "SP", "OSP"), ("SAT1",), "2D", 4500, 102, 150, 17,
                    names=("t2_tse_tra", "Ax T2 FRFSE", "T2W_TSE_TRA"))
T1_TSE = MrSequence(("SE",), ("SK", "SP"), ("SAT1",), "2D", 600, 10, 150, 3,
                    names=("t1_tse_tra", "Ax T1 FSE", "T1W_TSE_TRA"))
T1_VIBE_POST = MrSequence(("GR",), ("SP", "SK"), ("FS",), "3D", 4.2, 1.9, 10, 1,
                          names=("t1_vibe_fs_tra_post", "Ax LAVA+C", "THRIVE_TRA_POST"))
DWI_EPI = MrSequence(("EP",), ("SK", "SP"), ("FS",), "2D", 5200, 68, 90, 1, b_value=800,
                     names=("ep2d_diff_b50_800_tra_TRACEW", "Ax DWI b800", "DWI_b800_TRA"))
ADC_MAP = MrSequence(("EP",), ("SK", "SP"), ("FS",), "2D", 5200, 68, 90, 1,
                     names=("ep2d_diff_b50_800_tra_ADC", "Apparent Diffusion Coefficient (mm2/s)",
                            "dADC_DWI_b800_TRA"))


def _mr(key: str, contrast: str, sequence: MrSequence, matrix: int, thickness: float, delay_s: int,
        *, derived: bool = False, contrast_agent: bool = False) -> SeriesProtocol:
    image_type = ("DERIVED", "PRIMARY", "DIFFUSION", "ADC") if derived else (
        ("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW") if contrast == "mr_dwi" else ("ORIGINAL", "PRIMARY", "M"))
    noise = {"mr_dwi": 0.025, "mr_adc": 0.04}.get(contrast, 0.015)
    return SeriesProtocol(key, "MR", contrast, "", matrix, thickness, round(thickness * 1.1, 1), noise,
                          kernel="", window=None, contrast_agent=contrast_agent, delay_s=delay_s,
                          image_type=image_type, mr=sequence)


def _mr_series(exam: str, thickness: float, dwi_thickness: float, first: str, second: str | None
               ) -> tuple[SeriesProtocol, ...]:
    """T2 plus one T1 (pre- or post-contrast) at 256², and DWI with its ADC map at 128²."""
    series = [_mr(f"{exam}:t2", "mr_t2", T2_TSE, 256, thickness, 120)]
    for name in (first, second):
        if name == "t1":
            series.append(_mr(f"{exam}:t1", "mr_t1", T1_TSE, 256, thickness, 420))
        elif name == "t1c":
            series.append(_mr(f"{exam}:t1c", "mr_t1c", T1_VIBE_POST, 256, thickness, 1260, contrast_agent=True))
    series.append(_mr(f"{exam}:dwi", "mr_dwi", DWI_EPI, 128, dwi_thickness, 780))
    series.append(_mr(f"{exam}:adc", "mr_adc", ADC_MAP, 128, dwi_thickness, 780, derived=True))
    return tuple(series)


def _pet_ct(exam: str) -> tuple[SeriesProtocol, ...]:
    low_dose = _ct(f"{exam}:ctac", "ct_native", "LowDose AC", 5.0, noise=26.0)
    pet = SeriesProtocol(f"{exam}:pet", "PT", "pet_suv", "AC", 128, 5.0, 5.0, 0.16, kernel="", window=None,
                         delay_s=150, image_type=("ORIGINAL", "PRIMARY"))
    return low_dose, pet


def _descriptions(es: str, de: str, fr: str, it: str, pt: str, nl: str) -> dict[str, str]:
    return {"es": es, "de": de, "fr": fr, "it": it, "pt": pt, "nl": nl}


CHEST_CT = _descriptions("TC TÓRAX CON CONTRASTE", "CT Thorax mit KM", "TDM THORACIQUE AVEC INJECTION",
                         "TC TORACE CON MDC", "TC TÓRAX COM CONTRASTE", "CT thorax met contrast")
ABDOMEN_CT = _descriptions("TC ABDOMEN CON CONTRASTE", "CT Abdomen mit KM", "TDM ABDOMINALE AVEC INJECTION",
                           "TC ADDOME CON MDC", "TC ABDÓMEN COM CONTRASTE", "CT abdomen met contrast")
PET_CT = _descriptions("PET-TC CON 18F-FDG", "FDG-PET/CT", "TEP-TDM AU 18F-FDG", "PET-TC CON 18F-FDG",
                       "PET-CT COM 18F-FDG", "FDG-PET/CT")

EXAMS: dict[str, ExamProtocol] = {exam.key: exam for exam in (
    ExamProtocol("ct_chest", "CT", "chest", "Thorax", "CHEST", "Thorax^Routine KM", CHEST_CT, (
        _ct("ct_chest:native", "ct_native", "native", 5.0),
        _ct("ct_chest:venous", "ct_venous", "venous", 5.0, delay_s=150),
        _ct("ct_chest:lung", "ct_venous", "lung", 5.0, kernel="lung", window=LUNG_WINDOW, delay_s=150,
            noise=38.0, reuse_of="ct_chest:venous"),
    )),
    ExamProtocol("ct_chest_followup", "CT", "chest", "Thorax", "CHEST", "Thorax^Routine KM", CHEST_CT, (
        _ct("ct_chest_followup:venous", "ct_venous", "venous", 5.0, delay_s=90),
        _ct("ct_chest_followup:lung", "ct_venous", "lung", 5.0, kernel="lung", window=LUNG_WINDOW,
            delay_s=90, noise=38.0, reuse_of="ct_chest_followup:venous"),
    )),
    ExamProtocol("ct_abdomen", "CT", "abdomen", "Abdomen", "ABDOMEN", "Abdomen^Portal venous", ABDOMEN_CT, (
        _ct("ct_abdomen:native", "ct_native", "native", 5.0),
        _ct("ct_abdomen:venous", "ct_venous", "venous", 5.0, delay_s=160),
    )),
    ExamProtocol("ct_abdomen_multiphase", "CT", "abdomen", "Abdomen", "ABDOMEN", "Abdomen^Triphasic",
                 _descriptions("TC ABDOMEN TRIFÁSICO", "CT Abdomen 3-phasig", "TDM ABDOMINALE TRIPHASIQUE",
                               "TC ADDOME TRIFASICA", "TC ABDÓMEN TRIFÁSICA", "CT abdomen driefasen"), (
        _ct("ct_abdomen_multiphase:native", "ct_native", "native", 5.0),
        _ct("ct_abdomen_multiphase:arterial", "ct_arterial", "arterial", 5.0, delay_s=120, window=LIVER_WINDOW),
        _ct("ct_abdomen_multiphase:venous", "ct_venous", "venous", 5.0, delay_s=160, window=LIVER_WINDOW),
    )),
    ExamProtocol("ct_abdomen_pelvis", "CT", "abdomenpelvis", "Abd/Pelvis", "ABDOMENPELVIS",
                 "AbdomenPelvis^Portal venous",
                 _descriptions("TC ABDOMEN Y PELVIS CON CONTRASTE", "CT Abdomen/Becken mit KM",
                               "TDM ABDOMINO-PELVIENNE AVEC INJECTION", "TC ADDOME E PELVI CON MDC",
                               "TC ABDÓMEN E PÉLVIS COM CONTRASTE", "CT abdomen en bekken met contrast"), (
        _ct("ct_abdomen_pelvis:venous", "ct_venous", "venous", 5.0, delay_s=160),
        _ct("ct_abdomen_pelvis:bone", "ct_venous", "bone", 5.0, kernel="bone", window=BONE_WINDOW,
            delay_s=160, noise=45.0, reuse_of="ct_abdomen_pelvis:venous"),
    )),
    ExamProtocol("ct_neck", "CT", "neck", "Neck", "NECK", "Neck^Contrast",
                 _descriptions("TC CUELLO CON CONTRASTE", "CT Hals mit KM", "TDM CERVICALE AVEC INJECTION",
                               "TC COLLO CON MDC", "TC PESCOÇO COM CONTRASTE", "CT hals met contrast"), (
        _ct("ct_neck:venous", "ct_venous", "venous", 3.0, delay_s=100, window=(50.0, 350.0, "NECK")),
        _ct("ct_neck:bone", "ct_venous", "bone", 3.0, kernel="bone", window=BONE_WINDOW, delay_s=100,
            noise=45.0, reuse_of="ct_neck:venous"),
    ), fov_mm=250.0),
    ExamProtocol("petct_chest", "PT", "chestabdomen", "PET", "CHESTABDOMEN", "FDG^Oncology", PET_CT,
                 _pet_ct("petct_chest"), nuclear_medicine=True),
    ExamProtocol("petct_headneck", "PT", "headneck", "PET", "HEADNECK", "FDG^Head Neck", PET_CT,
                 _pet_ct("petct_headneck"), nuclear_medicine=True),
    ExamProtocol("mr_breast", "MR", "breast", "", "BREAST", "Mamma^bilateral",
                 _descriptions("RM MAMA BILATERAL CON CONTRASTE", "MRT Mamma beidseits mit KM",
                               "IRM MAMMAIRE BILATÉRALE", "RM MAMMELLE CON MDC", "RM MAMÁRIA BILATERAL",
                               "MRI mammae met contrast"),
                 _mr_series("mr_breast", 3.0, 4.0, "t1c", None), fov_mm=360.0, fov_centre=(0.0, -60.0)),
    ExamProtocol("mr_prostate", "MR", "prostate", "", "PROSTATE", "Prostate^mpMRI",
                 _descriptions("RM PRÓSTATA MULTIPARAMÉTRICA", "MRT Prostata multiparametrisch",
                               "IRM PROSTATIQUE MULTIPARAMÉTRIQUE", "RM PROSTATA MULTIPARAMETRICA",
                               "RM PRÓSTATA MULTIPARAMÉTRICA", "MRI prostaat multiparametrisch"),
                 _mr_series("mr_prostate", 3.0, 3.5, "t1", None), fov_mm=200.0, fov_centre=(0.0, 20.0)),
    ExamProtocol("mr_rectum", "MR", "pelvis", "", "PELVIS", "Pelvis^Rectum staging",
                 _descriptions("RM PELVIS ESTADIFICACIÓN RECTO", "MRT Becken Rektum-Staging",
                               "IRM PELVIENNE BILAN RECTAL", "RM PELVI STADIAZIONE RETTO",
                               "RM PÉLVICA ESTADIAMENTO RETO", "MRI bekken rectumstadiëring"),
                 _mr_series("mr_rectum", 4.0, 5.0, "t1", None), fov_mm=280.0, fov_centre=(0.0, 15.0)),
    ExamProtocol("mr_liver", "MR", "liver", "", "ABDOMEN", "Liver^Contrast",
                 _descriptions("RM HÍGADO CON CONTRASTE", "MRT Leber mit KM", "IRM HÉPATIQUE",
                               "RM FEGATO CON MDC", "RM FÍGADO COM CONTRASTE", "MRI lever met contrast"),
                 _mr_series("mr_liver", 6.0, 6.0, "t1c", None)),
    ExamProtocol("mr_neck", "MR", "neck", "", "NECK", "Neck^Contrast",
                 _descriptions("RM CUELLO CON CONTRASTE", "MRT Hals mit KM", "IRM CERVICALE",
                               "RM COLLO CON MDC", "RM PESCOÇO COM CONTRASTE", "MRI hals met contrast"),
                 _mr_series("mr_neck", 4.0, 5.0, "t1c", None), fov_mm=240.0, fov_centre=(0.0, 10.0)),
)}

SERIES_PROTOCOLS: dict[str, SeriesProtocol] = {s.key: s for exam in EXAMS.values() for s in exam.series}


# --- Cancers -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CancerVariant:
    icd10_code: str
    icd10_display: str
    icdo3_topography: str
    icdo3_topography_display: str
    icdo3_morphology: str
    icdo3_morphology_display: str


@dataclass(frozen=True)
class CancerSite:
    key: str
    sex: str | None                 # forced sex, or None: drawn with male_fraction
    male_fraction: float
    age_mean: float
    age_sd: float
    variants: tuple[CancerVariant, ...]
    pathway: tuple[str, str, str]   # exams for diagnosis, staging, follow-up


CANCER_SITES: dict[str, CancerSite] = {site.key: site for site in (
    CancerSite("lung", None, 0.6, 68, 9, (
        CancerVariant("C34.1", "Malignant neoplasm: Upper lobe, bronchus or lung", "C34.1", "Upper lobe, lung",
                      "8140/3", "Adenocarcinoma, NOS"),
        CancerVariant("C34.1", "Malignant neoplasm: Upper lobe, bronchus or lung", "C34.1", "Upper lobe, lung",
                      "8070/3", "Squamous cell carcinoma, NOS"),
    ), ("ct_chest", "petct_chest", "ct_chest_followup")),
    CancerSite("breast", "F", 0.0, 58, 12, (
        CancerVariant("C50.4", "Malignant neoplasm: Upper-outer quadrant of breast", "C50.4",
                      "Upper-outer quadrant of breast", "8500/3", "Infiltrating duct carcinoma, NOS"),
        CancerVariant("C50.4", "Malignant neoplasm: Upper-outer quadrant of breast", "C50.4",
                      "Upper-outer quadrant of breast", "8520/3", "Lobular carcinoma, NOS"),
    ), ("mr_breast", "ct_chest", "mr_breast")),
    CancerSite("prostate", "M", 1.0, 68, 7, (
        CancerVariant("C61", "Malignant neoplasm of prostate", "C61.9", "Prostate gland",
                      "8140/3", "Adenocarcinoma, NOS"),
    ), ("mr_prostate", "ct_abdomen_pelvis", "mr_prostate")),
    CancerSite("colorectal", None, 0.58, 66, 10, (
        CancerVariant("C20", "Malignant neoplasm of rectum", "C20.9", "Rectum, NOS",
                      "8140/3", "Adenocarcinoma, NOS"),
    ), ("mr_rectum", "ct_abdomen", "mr_rectum")),
    CancerSite("head_and_neck", None, 0.75, 62, 9, (
        CancerVariant("C32.0", "Malignant neoplasm: Glottis", "C32.0", "Glottis",
                      "8070/3", "Squamous cell carcinoma, NOS"),
        CancerVariant("C09.9", "Malignant neoplasm: Tonsil, unspecified", "C09.9", "Tonsil, NOS",
                      "8070/3", "Squamous cell carcinoma, NOS"),
    ), ("ct_neck", "petct_headneck", "mr_neck")),
    CancerSite("liver", None, 0.75, 66, 9, (
        CancerVariant("C22.0", "Liver cell carcinoma", "C22.0", "Liver",
                      "8170/3", "Hepatocellular carcinoma, NOS"),
    ), ("ct_abdomen_multiphase", "mr_liver", "ct_abdomen_multiphase")),
    CancerSite("kidney", None, 0.65, 63, 10, (
        CancerVariant("C64", "Malignant neoplasm of kidney, except renal pelvis", "C64.9", "Kidney, NOS",
                      "8312/3", "Renal cell carcinoma, NOS"),
    ), ("ct_abdomen_multiphase", "ct_chest_followup", "ct_abdomen_multiphase")),
)}

# FDG and its radionuclide (SNOMED CT codes as in DICOM CID 4021 / CID 4020).
FDG = ("Fludeoxyglucose F^18^", "35321007", "Fluorodeoxyglucose F^18^", "77004003", "^18^Fluorine")
F18_HALF_LIFE_S = 6586.2
F18_POSITRON_FRACTION = 0.967
