"""Frozen-phonon displacements: per-element RMS displacement per Cartesian direction [A].

``ROOM_TEMPERATURE_SIGMA_A`` holds u = sqrt(B / 8 pi^2) at 293 K, B from the parameterisation of
Cao & Peng, Acta Cryst. A55 (1999) 926-932 (their fits to measured and lattice-dynamical
Debye-Waller factors), evaluated at 293 K:

- elements in their own crystal: C (diamond), Si, Fe (bcc), Co, Cu, Ag, Pt, Au;
- Zn and S from ZnS, Se from ZnSe; Cd from CdTe (the table has no CdSe: CdTe is the softer
  lattice, so Cd's value is an upper estimate);
- O: no tabulated oxide; 0.08 A is a typical room-temperature value for spinel oxides (estimate).

The same value is used for an element wherever it occurs (the amorphous-carbon substrate uses C's).
"""

from __future__ import annotations

ROOM_TEMPERATURE = "room_temperature"
ROOM_TEMPERATURE_SIGMA_A: dict[str, float] = {
    "C": 0.042,
    "O": 0.080,
    "S": 0.096,
    "Si": 0.081,
    "Fe": 0.066,
    "Co": 0.062,
    "Cu": 0.084,
    "Zn": 0.104,
    "Se": 0.092,
    "Ag": 0.097,
    "Cd": 0.155,
    "Pt": 0.069,
    "Au": 0.089,
}


def sigmas_A(symbols, setting: float | str | dict) -> dict[str, float]:
    """Sigma [A] of every element in ``symbols`` for the config value ``simulation.phonon_sigma_A``:
    one number for all, ``"room_temperature"`` (the table above) or a mapping element -> sigma."""
    table = ROOM_TEMPERATURE_SIGMA_A if setting == ROOM_TEMPERATURE else setting
    symbols = sorted(set(symbols))
    if not isinstance(table, dict):
        return {symbol: float(table) for symbol in symbols}
    missing = [s for s in symbols if s not in table]
    if missing:
        source = (
            "the room-temperature table (emsim.simulation.phonons)" if setting == ROOM_TEMPERATURE else "the mapping"
        )
        raise ValueError(
            f"simulation.phonon_sigma_A: {source} has no entry for element(s) {missing}; "
            "give a mapping element -> sigma_A that includes them"
        )
    return {symbol: float(table[symbol]) for symbol in symbols}
