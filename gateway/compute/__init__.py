"""On-site compute: harmonisation kernels, IBSI radiomics features and ComBat.

Kernels here are pure array functions with no knowledge of DICOM or HTTP.
"""
