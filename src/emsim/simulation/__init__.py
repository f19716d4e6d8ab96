"""Simulation: structures -> exit waves (multislice) -> optics and noise -> labels; domain shifts; datasets."""
