"""Who may use which DIMSE service: the association policy built from the ``dimse_allow_*`` settings.

A calling AE title that no service allows is refused the whole association (A-ASSOCIATE-RJ, "calling AE title
not recognised"); one that is allowed some services gets only their presentation contexts accepted, so a
refused service is refused at negotiation, before any data is exchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.config import ANY_AE, PEERS_AE, Settings

Service = Literal["echo", "store", "query", "retrieve"]
SERVICES: tuple[Service, ...] = ("echo", "store", "query", "retrieve")


@dataclass(frozen=True)
class AssociationPolicy:
    # For each service the calling AE titles allowed to use it; None allows every calling AE title.
    allowed: Mapping[Service, frozenset[str] | None]

    @classmethod
    def from_settings(cls, settings: Settings) -> AssociationPolicy:
        peer_titles = frozenset(peer.ae_title for peer in settings.dimse_peers)

        def resolve(entries: list[str]) -> frozenset[str] | None:
            if ANY_AE in entries:
                return None
            titles: set[str] = set()
            for entry in entries:
                titles |= peer_titles if entry == PEERS_AE else {entry}
            return frozenset(titles)

        return cls({"echo": resolve(settings.dimse_allow_echo), "store": resolve(settings.dimse_allow_store),
                    "query": resolve(settings.dimse_allow_query),
                    "retrieve": resolve(settings.dimse_allow_retrieve)})

    def allows(self, calling_ae: str, service: Service) -> bool:
        titles = self.allowed[service]
        return titles is None or calling_ae.strip() in titles

    def services_for(self, calling_ae: str) -> list[Service]:
        return [service for service in SERVICES if self.allows(calling_ae, service)]

    @property
    def known_calling_aes(self) -> list[str] | None:
        """The calling AE titles that may associate at all; None when any may."""
        if any(titles is None for titles in self.allowed.values()):
            return None
        return sorted(set().union(*(titles for titles in self.allowed.values() if titles is not None)))
