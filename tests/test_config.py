"""Study config: sweeps expand into domains; every bad input is one clear error naming the key."""

from pathlib import Path

import pytest
import yaml

from emsim.simulation import optics
from emsim.study import config, experiments, settings
from emsim.study.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_range_sweep_expands_into_domains_sharing_one_structure_set(tiny_study):
    tiny_study["domains"] = {"df{mean_nm}": {"structure_set": "au", "defocus": {"mean_nm": {"range": [-25, 25, 5]}}}}
    tiny_study["image"]["padding_A"] = 9.6  # the lens's reach at 25 nm defocus
    loaded = config.load(tiny_study)
    assert list(loaded.domains) == [f"df{v}" for v in range(-25, 30, 5)]
    assert {d.structure_set for d in loaded.domains.values()} == {"au"}
    assert loaded.domains["df-10"].shifts["defocus"]["mean_nm"] == -10
    assert loaded.domains["df-10"].sweep == {"mean_nm": -10}


def test_labelled_values_and_product_of_sweeps(tiny_study):
    tiny_study["structure_sets"] = {
        "{lattice}_{radius_A}": {
            "n_structures": 8,
            "particles": {
                "lattice": {"values": ["Au_fcc", "Fe_bcc"]},
                "radius_A": {"values": {"s": [5, 6], "l": [7, 8]}},
                "min_gap_A": 2,
            },
        }
    }
    tiny_study["domains"] = {"x_{structure_set}": {"structure_set": {"values": ["Au_fcc_s", "Fe_bcc_l"]}}}
    tiny_study["experiments"] = {}
    loaded = config.load(tiny_study)
    assert list(loaded.structure_sets) == ["Au_fcc_s", "Au_fcc_l", "Fe_bcc_s", "Fe_bcc_l"]
    assert loaded.structure_sets["Fe_bcc_l"].particles["radius_A"] == [7, 8]
    assert list(loaded.domains) == ["x_Au_fcc_s", "x_Fe_bcc_l"]


def test_defaults_are_filled(tiny_study):
    loaded = config.load(tiny_study)
    assert loaded.structure_sets["au"].particles["orientation"] == "zone_axis"
    assert loaded.training.lr_decay == 0.99
    assert loaded.resources["training"]["gpu"] == 1
    assert optics.cell_A(loaded.image) == pytest.approx(25.6 + 2 * 4.8)
    assert not hasattr(loaded.image, "cell_A")  # checks do not write into the config


def _edit(study, path, value):
    target = study
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return study


@pytest.mark.parametrize(
    "path, value, names",
    [
        (
            ("structure_sets", "au", "particles", "lattice"),
            "Unobtanium_fcc",
            ["structure_sets.au.particles.lattice", "Au_fcc"],
        ),
        (("domains", "df{mean_nm}", "dose", "e_per_A2"), 0, ["domains.df-10.dose.e_per_A2"]),
        (("domains", "df{mean_nm}", "dose", "e_per_A2"), -5, ["domains.df-10.dose.e_per_A2"]),
        (
            ("domains", "df{mean_nm}", "defocus", "mean_nm"),
            {"values": []},
            ["domains.df{mean_nm}.defocus.mean_nm", "empty"],
        ),
        (("domains", "df{mean_nm}", "defocus", "mean_nm"), {"range": [5, -5, 1]}, ["defocus.mean_nm", "empty"]),
        (("domains", "df{mean_nm}", "structure_set"), "nope", ["domains.df-10.structure_set", "'nope'", "au"]),
        (("image", "cell_A"), 30.0, ["image", "cell_A", "padding_A"]),
        (("image", "padding_A"), 2.4, ["image.padding_A", "df-10", ">= 4.4"]),
        (("image", "padding_A"), 4.2, ["image.padding_A", "multiple of image.pixel_size_A"]),
        (("microscope", "Cs_A"), 1.2e7, ["image.padding_A", "microscope.Cs_A", "1.2e+07"]),
        (("simulation", "phonon_sigma_A"), {"Au": 0.09}, ["simulation.phonon_sigma_A", "['C']", "structure_sets.au"]),
        (("simulation", "phonon_sigma_A"), "hot", ["simulation.phonon_sigma_A"]),
        (("labels",), {"method": "outline"}, ["labels.method", "potential"]),
        (("training", "augmentation"), "d4", ["training.augmentation", "dihedral8"]),
        (("training", "loss"), "dice", ["training.loss", "softmax_cross_entropy"]),
        (("structure_sets", "au", "labels"), {"blur": 1.0}, ["structure_sets.au.labels", "blur_A"]),
        (("image", "pixel_size_A"), 0.3, ["image.pixel_size_A", "sampling_A"]),
        (("structure_sets", "au", "n_structures"), 5, ["structure_sets.au.n_structures", "splits"]),
        (("experiments", "defocus", "transfer_sizes"), [64], ["experiments.defocus.transfer_sizes", "splits.train"]),
        (("experiments", "defocus", "sources"), ["df99"], ["experiments.defocus.sources", "df99"]),
        (("domains", "df{mean_nm}", "astigmatsm"), {"magnitude_nm": 1}, ["domains.df-10", "astigmatsm", "astigmatism"]),
        (("structure_sets", "au", "particles", "radius_A"), [9, 5], ["structure_sets.au.particles.radius_A", "larger"]),
        (("microscope", "Cs_A"), "1.2e7", ["microscope.Cs_A", "1.2e+7"]),
        (("microscope", "focal_spread_A"), float("nan"), ["microscope.focal_spread_A", "nan", "finite"]),
        (("training", "lr_decay"), float("inf"), ["training.lr_decay", "inf", "finite"]),
        (("domains", "df{mean_nm}", "dose", "e_per_A2"), float("-inf"), ["dose.e_per_A2", "-inf", "finite"]),
        (
            ("experiments", "defocus", "transfer_sizes"),
            [2, 2],
            ["experiments.defocus.transfer_sizes", "2 is listed twice"],
        ),
        (("experiments", "defocus", "lr_pairs"), [[1e-3, 1e-4]] * 2, ["lr_pairs", "[0.001, 0.0001] is listed twice"]),
        (
            ("experiments", "defocus", "freeze"),
            ["none", "none"],
            ["experiments.defocus.freeze", "'none' is listed twice"],
        ),
        (("simulation", "zero_defocus_search_A"), [100, -100], ["simulation.zero_defocus_search_A", "not below"]),
        (("labels",), {"threshold_rad": 7.0}, ["labels.threshold_rad", "3.14159"]),
        (("labels",), {"blur_A": 50}, ["labels.blur_A", "10"]),
        (("structure_sets", "au", "seed"), float("nan"), ["structure_sets.au.seed"]),
        (
            ("structure_sets", "au", "particles", "count"),
            [1, 6],
            ["structure_sets.au", "particles.count", "cannot place"],
        ),
    ],
)
def test_bad_config_names_the_key(tiny_study, path, value, names):
    with pytest.raises(ConfigError) as error:
        config.load(_edit(tiny_study, path, value))
    for name in names:
        assert name in str(error.value)


@pytest.mark.parametrize(
    ("block", "value", "key"),
    [
        ("particles", {"lattice": "Gold"}, "particles.lattice: 'Gold'.*CdSe_wurtzite"),
        ("particles", {"radius_A": [20, 10]}, "particles.radius_A"),
        ("particles", {"radius_A": [0, 10]}, "particles.radius_A"),
        ("particles", {"count": [3, 1]}, "particles.count"),
        ("particles", {"count": [1.5, 2]}, "particles.count"),
        ("particles", {"stacking_faults": [-1, 1]}, "particles.stacking_faults"),
        ("particles", {"orientation": "sideways"}, "particles.orientation.*zone_axis"),
        ("particles", {"mistilt_deg": -1}, "particles.mistilt_deg"),
        ("particles", {"mistilt_deg": 91}, "particles.mistilt_deg"),
        ("particles", {"min_gap_A": -1}, "particles.min_gap_A"),
        ("particles", {"radiusA": [1, 2]}, "particles: .*'radiusA'"),
        ("substrate", {"thickness_A": [30, 20]}, "substrate.thickness_A"),
        ("substrate", {"thickness_A": [-5, 20]}, "substrate.thickness_A"),
        ("substrate", {"density_g_cm3": 0}, "substrate.density_g_cm3"),
        ("substrate", {"density_g_cm3": 3.5}, "substrate.density_g_cm3: 3.5 is greater than the maximum of 3.0"),
        (
            "particles",
            {"lattice": "CdSe_wurtzite", "radius_A": [5, 8], "stacking_faults": [0, 2]},
            "particles.stacking_faults: up to 2 faults may not fit a 5 A particle",
        ),
    ],
)
def test_bad_structure_set_names_the_key(tiny_study, block, value, key):
    tiny_study["structure_sets"]["au"][block] |= value
    with pytest.raises(ConfigError, match=f"structure_sets.au.{key}"):
        config.load(tiny_study)


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("domains: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml"):
        config.load(path)


def test_normalized_slices_ignore_key_order():
    assert repr(config.normalized({"b": 1, "a": {"d": 2, "c": 3}})) == repr(
        config.normalized({"a": {"c": 3, "d": 2}, "b": 1})
    )


def test_seed_study_grid_has_10854_models_sharing_pretraining():
    study = config.load(ROOT / "config/paper.yaml")
    assert len(study.domains) == 11 + 5 + 18
    grids = experiments.expand(study)
    counts = {
        name: {stage: sum(m.stage == stage for m in exp.models) for stage in settings.STAGES}
        for name, exp in grids.items()
    }
    assert counts["defocus"] == {"pretrain": 30, "transfer": 7200, "baseline": 720}
    assert counts["dose"] == {"pretrain": 15, "transfer": 180, "baseline": 0}
    assert counts["structure"] == {"pretrain": 54, "transfer": 2754, "baseline": 0}
    trained = [m for exp in grids.values() for m in exp.models if m.stage != "pretrain"]
    assert len(trained) == 10854
    # every transfer run starts from a pretraining run of the grid; 99 of them serve 10,134 transfers
    pretrained = {m.pretrained for m in trained if m.stage == "transfer"}
    assert pretrained <= set(experiments.all_models(study)) and len(pretrained) == 99


@pytest.mark.parametrize(
    "path, value, names",
    [
        (("image", "size_px"), 63, ["image.size_px", "multiple of 32"]),
        (("image", "size_px"), 80, ["image.size_px", "multiple of 32", "64 or 96"]),
        (("image", "size_px"), 65536, ["image.size_px", "limits.max_size_px"]),
        (
            ("structure_sets", "au", "n_structures"),
            1_000_000_000,
            ["structure_sets.au.n_structures", "jobs", "limits.max_jobs"],
        ),
        (("experiments", "defocus", "replicates"), 10**9, ["experiments.defocus", "jobs", "limits.max_jobs"]),
        (
            ("domains", "df{mean_nm}", "defocus", "mean_nm"),
            {"range": [0, 1e12, 1]},
            ["defocus.mean_nm", "limits.max_sweep_entries"],
        ),
        (("simulation", "frozen_phonons"), 10**6, ["simulation.shard_size", "GB", "limits.max_file_GB"]),
        (("limits",), {"max_file_GB": 1e-4}, ["simulation.shard_size", "0.000991 GB", "limits.max_file_GB"]),
        (
            ("domains", "df{mean_nm}", "defocus", "mean_nm"),
            {"values": {"a/b": 1, "c": 2}},
            ["domains.df{mean_nm}", "'dfa/b'", "labels"],
        ),
        (("domains", "df{mean_nm}", "defocus", "mean_nm"), {"values": {"..": 1}}, ["domains.df{mean_nm}", "'df..'"]),
        (("domains", "df{mean_nm}", "defocus", "mean_nm"), {"values": {"*": 1}}, ["'df*'"]),
        (("domains", "df{mean_nm}", "defocus", "mean_nm"), {"values": {"{x}": 1}}, ["'df{x}'"]),
        (("domains", "df{mean_nm}", "sweep"), {"mean_nm": 3}, ["domains.df{mean_nm}.sweep", "reserved"]),
        (
            ("structure_sets", "au", "particles", "radius_A"),
            [5, 40],
            ["structure_sets.au.particles.radius_A", "periodic image"],
        ),
        (("structure_sets", "au", "particles", "min_gap_A"), 30, ["structure_sets.au.particles.radius_A", "min_gap_A"]),
        (("image", "size_px"), 64.5, ["image.size_px", "integer"]),
        (("training", "models_per_job"), 0, ["training.models_per_job", "minimum"]),
        (("extensions",), ["no/such/file.py"], ["extensions", "no/such/file.py"]),
    ],
)
def test_expensive_or_unsafe_config_is_rejected_naming_the_key(tiny_study, path, value, names):
    with pytest.raises(ConfigError) as error:
        config.load(_edit(tiny_study, path, value))
    for name in names:
        assert name in str(error.value)


@pytest.mark.parametrize("block", ["structure_sets", "domains", "experiments"])
@pytest.mark.parametrize("name", ["a/b", "..", "x*", "q?", "[ab]", "{x}", "a b", ".hidden", "-x", "a+b"])
def test_unsafe_names_are_rejected(tiny_study, block, name):
    tiny_study[block][name] = tiny_study[block].pop(next(iter(tiny_study[block])))
    if block == "structure_sets":
        tiny_study["domains"]["df{mean_nm}"]["structure_set"] = name
    with pytest.raises(ConfigError, match=rf"^{block}\."):
        config.load(tiny_study)


def test_whole_number_floats_become_integers(tiny_study):
    tiny_study["image"]["size_px"] = 64.0
    tiny_study["simulation"]["shard_size"] = 4.0
    tiny_study["structure_sets"]["au"]["n_structures"] = 8.0
    tiny_study["training"]["epochs"] = 2.0
    tiny_study["splits"]["train"] = 4.0
    tiny_study["experiments"]["defocus"]["transfer_sizes"] = [2.0]
    tiny_study["structure_sets"]["au"]["particles"]["count"] = [1.0, 1]
    loaded = config.load(tiny_study)
    values = [
        loaded.image.size_px,
        loaded.simulation.shard_size,
        loaded.structure_sets["au"].n_structures,
        loaded.training.epochs,
        loaded.splits["train"],
        loaded.experiments["defocus"].transfer_sizes[0],
        loaded.structure_sets["au"].particles["count"][0],
    ]
    assert all(type(v) is int for v in values)
    assert all("_n2_" in m.path for m in experiments.all_models(loaded).values() if m.stage == "transfer")


def test_limits_can_be_raised_deliberately(tiny_study):
    tiny_study["structure_sets"]["au"]["n_structures"] = 400_000
    with pytest.raises(ConfigError, match="100000 jobs|limits.max_jobs = 100000"):
        config.load(tiny_study)
    tiny_study["limits"] = {"max_jobs": 1_000_000}
    assert config.load(tiny_study).structure_sets["au"].n_structures == 400_000


def test_extensions_resolve_next_to_the_study_and_same_names_do_not_shadow(tmp_path, tiny_study):
    for folder, kind in (("one", "shift_one"), ("two", "shift_two")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "shifts.py").write_text(
            "from emsim.simulation.shifts import register\n"
            f"@register({kind!r}, 'detector', {{}}, order=45)\n"
            "def f(image, params, rng, context):\n    return image, {}\n"
        )
        tiny_study["extensions"] = ["shifts.py"]
        tiny_study["domains"]["df{mean_nm}"][kind] = {}
        (tmp_path / folder / "study.yaml").write_text(yaml.safe_dump(tiny_study))
        loaded = config.load(tmp_path / folder / "study.yaml")
        assert Path(loaded.extensions[0]).resolve() == (tmp_path / folder / "shifts.py").resolve()
    from emsim.simulation import shifts

    assert {"shift_one", "shift_two"} <= set(shifts.SHIFTS)


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    if "shared/data/micrographs" in path.read_text() and not (ROOT.parent / "shared/data/micrographs").is_dir():
        pytest.skip("its micrographs (../shared/data/micrographs) are not beside this clone")
    study = config.load(path)
    assert study.domains and study.experiments


def test_generated_names_too_long_for_file_systems_are_refused_at_load(tiny_study):
    long = "d" * 110
    tiny_study["domains"] = {f"{long}{{mean_nm}}": tiny_study["domains"]["df{mean_nm}"]}
    tiny_study["experiments"]["defocus"]["domains"] = ["d*"]
    tiny_study["experiments"]["defocus"]["sources"] = [f"{long}-10"]
    with pytest.raises(
        ConfigError, match=r"experiments.defocus: generated file names are too long .* e.g. results/models"
    ):
        experiments.expand(config.load(tiny_study))
    tiny_study["domains"] = {"d" * 130 + "{mean_nm}": tiny_study["domains"][f"{long}{{mean_nm}}"]}
    with pytest.raises(ConfigError, match="is 133 characters long; at most 120"):
        config.load(tiny_study)


@pytest.mark.parametrize(
    "path", ["config/test.yaml", "config/validation.yaml", "config/paper.yaml", "config/real.yaml"]
)
def test_job_estimate_counts_the_grid_that_is_expanded(path):
    """The limits check counts an experiment's grid without expanding it: the same number."""
    study = config.load(path)
    for name, experiment in experiments.expand(study).items():
        assert config.experiment_grid(study, name).jobs() == len(experiment.models) + len(experiment.groups), name
