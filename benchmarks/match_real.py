"""Which dose, detector blur and objective aperture make a simulated domain look like real micrographs?

Renders the cached exit waves of a study's structure set under a grid of (dose, detector blur,
aperture) at the domain's defocus, and prints, for each setting, the mean OOD score of the real
tiles of a micrograph dataset against the simulated images' ring spectrum (emsim's OOD descriptor,
:mod:`emsim.learning.ood`; about 1 = indistinguishable). The rule, fixed before the run: the
setting with the lowest score is the matched domain (config/real.yaml)::

    python benchmarks/match_real.py config/real.yaml results sim pt_frames
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from emsim import data
from emsim.learning import ood
from emsim.simulation import domains
from emsim.simulation.simulate import ShardWaves
from emsim.study import config, paths

DOSES = (200, 1000, 5000)  # e/A^2
BLURS_PX = (0.0, 1.0, 2.0)
APERTURES_MRAD = (None, 10.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study")
    parser.add_argument("results", type=Path)
    parser.add_argument("domain", help="the simulated domain whose defocus is kept")
    parser.add_argument("micrographs", help="a micrograph domain of the study (its dataset must exist)")
    parser.add_argument("--shards", type=int, default=2, help="exit-wave shards rendered")
    args = parser.parse_args()
    study = config.load(args.study)
    spec = study.domains[args.domain]
    root = args.results.parent
    shards = [
        ShardWaves.load(root / paths.EXIT_WAVES.format(set=spec["structure_set"], shard=i)) for i in range(args.shards)
    ]
    dataset = root / paths.dataset_path(args.micrographs)
    tiles = np.concatenate([data.read_split(dataset, split)[0] for split in data.SPLITS])
    rows = []
    for dose, blur, aperture in itertools.product(DOSES, BLURS_PX, APERTURES_MRAD):
        domain = {"defocus": spec["defocus"], "dose": {"e_per_A2": dose}}
        domain |= {"detector_blur": {"sigma_px": blur}} if blur else {}
        domain |= {"aperture": {"mrad": aperture}} if aperture else {}
        images = [
            domains.render_image(shard, i, domain, study.microscope, study.image, np.random.default_rng(i))[0]
            for shard in shards
            for i in range(len(shard.labels))
        ]
        reference = ood.reference(np.stack(images), study.image.pixel_size_A)
        score = float(np.mean([ood.score(tile, reference) for tile in tiles]))
        rows.append((score, dose, blur, aperture))
        print(f"dose {dose:5d} e/A^2, blur {blur:.0f} px, aperture {aperture or '-'} mrad: OOD score {score:.2f}")
    score, dose, blur, aperture = min(rows)
    print(f"nearest: dose {dose} e/A^2, blur {blur:g} px, aperture {aperture or 'none'} mrad (score {score:.2f})")


if __name__ == "__main__":
    main()
