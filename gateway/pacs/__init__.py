"""Upstream PACS integration: find studies in the hospital PACS and pull them over C-MOVE, C-GET or WADO-RS."""
