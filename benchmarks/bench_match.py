"""`emsim match` against ground truth: defocus and dose read off simulated amorphous carbon.

One 30 A film of amorphous carbon (emsim's hard-core sampler, 2 g/cm^3) is propagated once by
abTEM's multislice (0.1 A sampling, 300 kV); each defocus of a grid (-25..25 nm) is imaged with
emsim's optics at the seed study's lens (Cs 0, 10 A focal spread, 0.2 A pixels) and each dose of
a grid is drawn as Poisson counts. Prints true against estimated |df| and dose (from counts and
from the noise floor) at each image size, the targets' verdicts (|df| within 1 nm or 10 % where
|df| >= 10 nm and dose >= 300 e/A^2; near focus reported as a bound; dose within 15 % from counts),
and the time per 2048^2 image on one thread::

    python benchmarks/bench_match.py            # 512, 1024 and 2048 px
"""

from __future__ import annotations

import argparse
import time

import abtem
import ase
import numpy as np
import torch

from emsim import match
from emsim.simulation import optics, supports
from emsim.study.settings import Microscope

DEFOCI_NM = (-25, -20, -15, -10, -5, -2, 0, 2, 5, 10, 15, 20, 25)
DOSES = (30, 100, 300, 600)
PIXEL_A = 0.2


def exit_wave(size_px: int) -> tuple[np.ndarray, float]:
    """Fourier-space exit wave of a 30 A amorphous carbon film (size_px * 0.2 A wide, 0.1 A
    sampling) and the distance [nm] from the film's middle to the exit plane."""
    cell = size_px * PIXEL_A
    positions = supports.amorphous_carbon(cell, 30.0, 2.0, np.random.default_rng(0))
    atoms = ase.Atoms(
        numbers=[6] * len(positions), positions=positions, cell=(cell, cell, 34.0), pbc=(True, True, False)
    )
    potential = abtem.Potential(atoms, sampling=PIXEL_A / 2, slice_thickness=2.0)
    wave = abtem.PlaneWave(energy=300e3).multislice(potential).compute().array
    return np.fft.fft2(wave), float(34.0 - positions[:, 2].mean()) / 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    args = parser.parse_args()
    torch.set_num_threads(1)
    microscope = Microscope.with_defaults(energy_eV=300e3, Cs_A=0.0, focal_spread_A=10.0)
    for size in args.sizes:
        start = time.perf_counter()
        waves, depth_nm = exit_wave(size)
        print(f"\n{size}^2 px ({size * PIXEL_A / 10:.1f} nm), exit wave {time.perf_counter() - start:.0f} s")
        print(f"df: to the exit plane; the rings see df - {depth_nm:.2f} nm (the film's middle)")
        print("df nm | to middle | dose | est |df| nm | corr | dose counts | dose noise | verdict")
        fails, seconds = 0, []
        for df in DEFOCI_NM:
            intensity = optics.image_from_waves(
                waves, PIXEL_A / 2, optics.Aberrations.from_microscope(microscope, 10.0 * df), microscope, PIXEL_A, size
            )
            middle = df - depth_nm
            for dose in DOSES:
                counts = optics.poisson_noise(intensity, dose, PIXEL_A, np.random.default_rng([size, dose]))
                start = time.perf_counter()
                fit = match.fit_defocus(counts, PIXEL_A)
                seconds.append(time.perf_counter() - start)
                from_counts = match.dose_from_counts(counts, PIXEL_A, 1.0)
                from_noise = match.dose_from_noise(counts, PIXEL_A)
                verdict = "-"
                if abs(middle) >= 10 and dose >= 300:
                    error = abs((fit.magnitude_nm or 0) - abs(middle))
                    verdict = "ok" if fit.magnitude_nm is not None and error <= max(1.0, 0.1 * abs(middle)) else "MISS"
                elif abs(middle) < fit.below_nm:
                    verdict = "ok (bound)" if fit.magnitude_nm is None else "MISS (a number)"
                if abs(from_counts / dose - 1) > 0.15:
                    verdict += ", DOSE MISS"
                fails += "MISS" in verdict
                estimate = "near focus" if fit.magnitude_nm is None else f"{fit.magnitude_nm:.1f}"
                print(
                    f"{df:+4d} | {middle:+6.1f} | {dose:4d} | {estimate:>10} | {fit.correlation:.2f} | {from_counts:7.1f} | "
                    f"{from_noise:7.1f} | {verdict}"
                )
        print(f"{size}^2: {fails} misses; fit {np.median(seconds):.2f} s per image (median, 1 thread)")


if __name__ == "__main__":
    main()
