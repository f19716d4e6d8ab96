"""Benchmark: multislice cost per structure and images/s from cached exit waves.

Seconds per structure = build scene + full-scene and static particle-in-vacuum exit waves (as
``simulate_shard`` makes them) + label, cold (first structure of the process, FFTW planning
included) and amortised over the following ones; the per-structure zero-defocus calibration is
timed apart (zero_s). Defaults: the seed study's grid (512 px at 0.2 A cut from a 12.8 nm cell,
0.1 A multislice sampling, Cs 0). Images/s = CTF + intensity + Fourier downsampling + Poisson noise from the
cached Fourier-space waves, one thread.

    PYTHONPATH=src python benchmarks/bench_simulation.py [--structures 4] [--phonons 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy.fft as sfft  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=4, help="structures to simulate (first one is cold)")
    parser.add_argument("--phonons", type=int, default=1, help="frozen-phonon configurations")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--size-px", type=int, default=512)
    parser.add_argument("--pixel-size-A", type=float, default=0.2)
    parser.add_argument("--sampling-A", type=float, default=0.1)
    parser.add_argument("--lattice", default="CdSe_wurtzite")
    parser.add_argument("--images", type=int, default=40, help="images to make from cached waves")
    parser.add_argument("--padding-A", type=float, default=12.8)
    parser.add_argument("--wisdom", default=None, help="FFTW wisdom file to load, then (re)write")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    from emsim.simulation import calibration, labels, optics, simulate, structures
    from emsim.study.settings import Image, Microscope, Simulation

    print(f"import emsim (abTEM included): {time.perf_counter() - start:.2f} s")
    if args.wisdom:
        print(f"FFTW wisdom loaded: {simulate.load_fftw_wisdom(args.wisdom)}")
    image = Image(
        size_px=args.size_px, pixel_size_A=args.pixel_size_A, padding_A=args.padding_A, downsample="intensity"
    )
    cell_A, cell_px = optics.cell_A(image), optics.cell_px(image)
    sim = Simulation.with_defaults(
        sampling_A=args.sampling_A, frozen_phonons=args.phonons, device=args.device, calibrate_zero_defocus=True
    )
    microscope = Microscope(energy_eV=300e3, Cs_A=0.0, focal_spread_A=10.0, angular_spread_mrad=0.0)
    spec = {
        "seed": 1,
        "particles": {"lattice": args.lattice, "radius_A": [15, 25], "count": [1, 3]},
        "substrate": {"thickness_A": [20, 60], "density_g_cm3": 2.0},
    }
    print(
        f"cell {cell_A:.1f} A, grid {round(cell_A / args.sampling_A)}^2 at {args.sampling_A} A, "
        f"{args.phonons} phonon(s), device {args.device}, lattice {args.lattice}"
    )
    print("structure  atoms  scene_s  waves_s  label_s  zero_s  total_s")
    grid = optics.k_grid((round(cell_A / args.sampling_A),) * 2, args.sampling_A)
    totals, zero_times, waves = [], [], None
    for i in range(args.structures):
        t0 = time.perf_counter()
        scene = structures.build_structure_set(spec, cell_A, range(i, i + 1))[0]
        t1 = time.perf_counter()
        full, vacuum, offset_A = simulate.scene_exit_waves(scene, sim, microscope.energy_eV, seed=i)
        back = optics.ctf(grid, optics.Aberrations(C10_A=-offset_A), microscope.energy_eV)
        waves = sfft.fft2(full, overwrite_x=True) * back
        t2 = time.perf_counter()
        labels.label_from_vacuum_wave(vacuum, args.sampling_A, args.pixel_size_A, cell_px)
        t3 = time.perf_counter()
        calibration.zero_defocus_A(vacuum, args.sampling_A, microscope, depth_A=scene.particle_atoms().cell[2, 2])
        t4 = time.perf_counter()
        totals.append(t3 - t0)
        zero_times.append(t4 - t3)
        print(
            f"{i:9d}  {len(scene.numbers):5d}  {t1 - t0:7.2f}  {t2 - t1:7.2f}  {t3 - t2:7.2f}  "
            f"{t4 - t3:6.2f}  {t3 - t0:7.2f}"
        )
    if args.wisdom:
        simulate.save_fftw_wisdom(args.wisdom)
    print(
        f"seconds per structure: cold {totals[0]:.2f}"
        + (f", amortised over {len(totals) - 1}: {np.mean(totals[1:]):.2f}" if len(totals) > 1 else "")
    )
    print(f"zero-defocus calibration per structure: mean {np.mean(zero_times):.3f} s, max {np.max(zero_times):.3f} s")

    rng = np.random.default_rng(0)
    optics.image_from_waves(
        waves,
        args.sampling_A,
        optics.Aberrations.from_microscope(microscope, 0.0),
        microscope,
        args.pixel_size_A,
        cell_px,
    )
    start = time.perf_counter()
    for _ in range(args.images):
        aberrations = optics.Aberrations.from_microscope(microscope, rng.uniform(-250, 250))
        intensity = optics.image_from_waves(waves, args.sampling_A, aberrations, microscope, args.pixel_size_A, cell_px)
        optics.crop_window(optics.poisson_noise(intensity, 400.0, args.pixel_size_A, rng), args.size_px)
    elapsed = time.perf_counter() - start
    print(
        f"images from cached waves ({args.size_px}^2 px from {waves.shape[-1]}^2, {waves.shape[0]} phonon(s)): "
        f"{args.images / elapsed:.1f} images/s ({1e3 * elapsed / args.images:.1f} ms/image)"
    )


if __name__ == "__main__":
    main()
