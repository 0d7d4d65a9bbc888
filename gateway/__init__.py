"""EUCAIM hospital gateway: the federation's node inside one hospital."""

__version__ = "0.1.0"
