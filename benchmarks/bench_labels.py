"""Benchmark: ground-truth labels against the projected atoms, per lattice and particle size.

For each lattice and radius, single particles (zone axis, random in-plane rotation and mistilt)
are simulated in vacuum (static exit wave, as ``simulate_shard`` makes it) and labelled by both
``labels.method``s with the seed study's blur for that lattice (1.0 A for C, Fe, Co3O4; 1.6 A
otherwise). Each label is compared with the projected atom positions dilated by ``--dilate-A``,
holes filled (IoU and dR, the equivalent-disc radius of the label minus that of this reference,
R atoms, in A), and the two labels with each other. Values are means over ``--scenes`` particles.

    PYTHONPATH=src python benchmarks/bench_labels.py [--scenes 3] [--radii 10 25] [--lattices Au_fcc C_diamond]
"""

from __future__ import annotations

import argparse
import dataclasses
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

LATTICES = (
    "CdSe_wurtzite",
    "ZnS_wurtzite",
    "Cu_fcc",
    "Ag_fcc",
    "Au_fcc",
    "C_diamond",
    "Si_diamond",
    "Fe3O4_spinel",
    "Co3O4_spinel",
    "Fe_bcc",
)
FINE_BLUR = ("C_diamond", "Co3O4_spinel", "Fe_bcc")  # the study's 1.0 A blur; 1.6 A for the others


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=3, help="particles per lattice and radius")
    parser.add_argument("--radii", type=float, nargs="+", default=[10.0, 25.0], help="particle radii [A]")
    parser.add_argument("--lattices", nargs="+", default=list(LATTICES), choices=LATTICES)
    parser.add_argument("--dilate-A", type=float, default=1.5, help="radius of the disc around each projected atom")
    parser.add_argument("--pixel-size-A", type=float, default=0.2)
    parser.add_argument("--sampling-A", type=float, default=0.1)
    parser.add_argument("--margin-A", type=float, default=10.0, help="cell side = 2.5 x radius + margin")
    return parser.parse_args()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


def disc_radius_A(mask: np.ndarray, pixel_size_A: float) -> float:
    """Radius [A] of the disc with the mask's area."""
    return float(np.sqrt(mask.sum() / np.pi)) * pixel_size_A


def main() -> None:
    args = parse_args()
    from emsim.simulation import labels, simulate, structures
    from emsim.study.settings import Labels, Simulation

    sim = Simulation.with_defaults(sampling_A=args.sampling_A, phonon_sigma_A=0.0, calibrate_zero_defocus=False)
    energy_eV = 300e3
    pixel_A = args.pixel_size_A
    print(
        f"{args.scenes} particle(s) per row, {args.sampling_A} A sampling, 2 A slices, 300 kV, labels at "
        f"{pixel_A} A/px; reference: projected atoms dilated by {args.dilate_A} A\n"
    )
    print(
        "| lattice | r (A) | R atoms (A) | blur (A) | IoU phase-atoms | IoU potential-atoms | IoU phase-potential "
        "| dR phase (A) | dR potential (A) | s/particle |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for lattice in args.lattices:
        blur_A = 1.0 if lattice in FINE_BLUR else 1.6
        settings = Labels.with_defaults(method="phase", threshold_rad=np.pi / 16, blur_A=blur_A)
        for radius_A in args.radii:
            # a cell that is a whole number of image pixels and of even size
            size_px = 2 * int(np.ceil((2.5 * radius_A + args.margin_A) / (2 * pixel_A)))
            cell_A = size_px * pixel_A
            particles = {"lattice": lattice, "radius_A": [radius_A, radius_A], "count": [1, 1], "min_gap_A": 0.0}
            substrate = {"thickness_A": [2.0, 2.0]}
            rows, start = [], time.perf_counter()
            for i in range(args.scenes):
                scene = structures.build_scene(particles, substrate, cell_A, np.random.default_rng(i))
                atoms = scene.particle_atoms()
                wave = simulate.vacuum_exit_wave(atoms, sim, energy_eV)
                by_phase, by_potential = (
                    labels.label(
                        wave, atoms, sim, energy_eV, pixel_A, size_px, dataclasses.replace(settings, method=method)
                    ).astype(bool)
                    for method in labels.METHODS
                )
                # hole-filled like the labels: the channels of open projections (wurtzite, spinel) are particle
                reference = labels._periodic_fill_holes(
                    labels.projected_atom_mask(atoms.positions, cell_A, size_px, args.dilate_A)
                )
                r_ref = disc_radius_A(reference, pixel_A)
                rows.append(
                    [
                        r_ref,
                        iou(by_phase, reference),
                        iou(by_potential, reference),
                        iou(by_phase, by_potential),
                        disc_radius_A(by_phase, pixel_A) - r_ref,
                        disc_radius_A(by_potential, pixel_A) - r_ref,
                    ]
                )
            seconds = (time.perf_counter() - start) / args.scenes
            m = np.mean(rows, axis=0)
            print(
                f"| {lattice} | {radius_A:g} | {m[0]:.1f} | {blur_A:g} | {m[1]:.2f} | {m[2]:.2f} | {m[3]:.2f} | "
                f"{m[4]:+.2f} | {m[5]:+.2f} | {seconds:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
