"""IBSI 1 radiomics features. Each family module computes its features from a prepared region of interest."""
