"""Seconds per scene: 100 x 100 A cell, 30 A carbon, one 20 A radius CdSe particle; then each support
kind under the same particle in a 12.8 nm cell with a 20 nm thick support (target: 2 s on one core).

Prints the cold first call (fresh process, after import), the warm mean over 10 calls, the carbon
sampler alone, a naive Python hard-core sampler (one point at a time, cell list) as baseline, and
the mean of 3 scenes per support kind with its atom count.
Run: ``PYTHONPATH=src python benchmarks/bench_scenes.py``.
"""

import itertools
import time

import numpy as np

t0 = time.perf_counter()
from emsim.simulation import structures, supports  # noqa: E402

IMPORT_S = time.perf_counter() - t0
CELL_XY_A, THICKNESS_A, DENSITY_G_CM3 = 100.0, 30.0, 2.0
PARTICLES = {
    "lattice": "CdSe_wurtzite",
    "radius_A": [20, 20],
    "count": [1, 1],
    "stacking_faults": [0, 2],
    "orientation": "zone_axis",
    "mistilt_deg": 2.0,
}
SUBSTRATE = {"thickness_A": [THICKNESS_A, THICKNESS_A], "density_g_cm3": DENSITY_G_CM3}


def naive_carbon(cell_xy_A, thickness_A, n_atoms, rng, min_distance_A=supports.CARBON_MIN_DISTANCE_A):
    """One candidate at a time against a dict cell list: the pure-Python reference."""
    n_cells = int(cell_xy_A // min_distance_A)
    size_A = cell_xy_A / n_cells
    grid, accepted = {}, []
    while len(accepted) < n_atoms:
        x, y, z = rng.random(3) * (cell_xy_A, cell_xy_A, thickness_A)
        i, j, k = int(x / size_A), int(y / size_A), int(z / size_A)
        ok = True
        for di, dj, dk in itertools.product((-1, 0, 1), repeat=3):
            for px, py, pz in grid.get(((i + di) % n_cells, (j + dj) % n_cells, k + dk), ()):
                dx = (x - px + cell_xy_A / 2) % cell_xy_A - cell_xy_A / 2
                dy = (y - py + cell_xy_A / 2) % cell_xy_A - cell_xy_A / 2
                if dx * dx + dy * dy + (z - pz) ** 2 < min_distance_A**2:
                    ok = False
                    break
            if not ok:
                break
        if ok:
            grid.setdefault((i, j, k), []).append((x, y, z))
            accepted.append((x, y, z))
    return np.array(accepted)


def seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main():
    rng = np.random.default_rng(0)
    cold_s = seconds(lambda: structures.build_scene(PARTICLES, SUBSTRATE, CELL_XY_A, rng))
    warm_s = [seconds(lambda: structures.build_scene(PARTICLES, SUBSTRATE, CELL_XY_A, rng)) for _ in range(10)]
    carbon_s = [
        seconds(lambda: supports.amorphous_carbon(CELL_XY_A, THICKNESS_A, DENSITY_G_CM3, rng)) for _ in range(10)
    ]
    n_atoms = len(supports.amorphous_carbon(CELL_XY_A, THICKNESS_A, DENSITY_G_CM3, rng))
    naive_s = seconds(lambda: naive_carbon(CELL_XY_A, THICKNESS_A, n_atoms, rng))
    print(f"scene {CELL_XY_A:.0f} x {CELL_XY_A:.0f} A, {THICKNESS_A:.0f} A carbon ({n_atoms} C), one r=20 A CdSe")
    print(f"import emsim.simulation.structures       {IMPORT_S:.3f} s")
    print(f"build_scene cold (first call) {cold_s:.3f} s")
    print(f"build_scene warm mean of 10   {np.mean(warm_s):.3f} s (min {np.min(warm_s):.3f}, max {np.max(warm_s):.3f})")
    print(f"amorphous_carbon mean of 10   {np.mean(carbon_s):.3f} s")
    print(f"naive Python carbon sampler   {naive_s:.3f} s")
    thick = {
        "amorphous": {"thickness_A": [200, 200]},
        "holey": {"kind": "holey", "thickness_A": [200, 200]},
        "graphene": {"kind": "graphene", "layers": [50, 50]},
        "graphitic": {"kind": "graphitic", "thickness_A": [200, 200]},
        "graphitic, polyhedral": {"kind": "graphitic", "thickness_A": [200, 200], "shape": "polyhedral"},
        "silica": {"kind": "silica", "thickness_A": [200, 200]},
    }
    print("support kinds, 128 x 128 A cell, 200 A thick (graphene: 50 layers, 164 A), one r=20 A CdSe:")
    for name, substrate in thick.items():
        scenes = [structures.build_scene(PARTICLES, substrate, 128.0, np.random.default_rng(i)) for i in range(1)]
        times = [
            seconds(lambda: scenes.append(structures.build_scene(PARTICLES, substrate, 128.0, rng))) for _ in range(3)
        ]
        print(f"  {name:22s} {np.mean(times):.2f} s (max {np.max(times):.2f})  {len(scenes[-1].numbers)} atoms")


if __name__ == "__main__":
    main()
