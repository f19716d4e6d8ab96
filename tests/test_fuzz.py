"""Fuzzing (Hypothesis): the config loader and the micrograph readers on generated and mutated input.

Every outcome is either a result or the project's own error (ConfigError naming a key; ValueError
naming the file), never another exception, and each example stays within a time bound.
"""

import copy
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emsim.readers import read_images
from emsim.study import config, experiments

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared/data/micrographs"
SHIPPED = ["test", "config", "validation", "ood", "real", "paper"]
FUZZ = settings(
    max_examples=int(os.environ.get("EMSIM_FUZZ_EXAMPLES", 40)),
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize="EMSIM_FUZZ_EXAMPLES" not in os.environ,
)

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["auto", "none", "graphitic", "Au_fcc", "df*", "{mean_nm}", "..", "a" * 300])
)
values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=16,
)


def load_or_config_error(raw: dict, base_dir=ROOT / "config") -> None:
    """The study loads (and its grid expands) or the error is a ConfigError naming a key."""
    try:
        experiments.expand(config.load(raw, base_dir=base_dir))
    except config.ConfigError as error:
        assert str(error).strip() and "\n" not in str(error).strip().splitlines()[0]


@FUZZ
@given(
    document=st.dictionaries(
        st.sampled_from(list(yaml.safe_load((ROOT / "config/test.yaml").read_text())) + ["x"]), values, max_size=8
    )
)
def test_generated_documents_load_or_name_a_key(document):
    load_or_config_error(document)


def _paths(value, prefix=()):
    """Every location (tuple of keys and indices) inside a nested document."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, item in items:
        yield from _paths(item, (*prefix, key))


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("name", SHIPPED)
def test_mutated_shipped_configs_load_or_name_a_key(name, data):
    document = yaml.safe_load((ROOT / f"config/{name}.yaml").read_text())
    mutated = copy.deepcopy(document)
    where = data.draw(st.sampled_from([p for p in _paths(mutated) if p]))
    parent = mutated
    for key in where[:-1]:
        parent = parent[key]
    operation = data.draw(st.sampled_from(["replace", "delete", "duplicate", "add key"]))
    if operation == "replace":
        parent[where[-1]] = data.draw(values)
    elif operation == "delete":
        del parent[where[-1]]
    elif operation == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[where[-1]]))
    elif isinstance(parent[where[-1]], dict):
        parent[where[-1]][data.draw(st.text(max_size=8))] = data.draw(values)
    load_or_config_error(mutated)


@pytest.mark.parametrize(
    "text",
    ["a: " + "[" * 3000 + "]" * 3000, "structure_sets: {1: {}}", "- a list", "", "key: [unclosed", "\x00\x01"],
)
def test_unusual_files_are_config_errors(tmp_path, text):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match="study.yaml|structure_sets|<top level>|nested"):
        config.load(path)


def test_utf16_study_reads_like_utf8(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes((ROOT / "config/test.yaml").read_text().encode("utf-16"))
    assert config.load(path, base_dir=ROOT / "config") == config.load(ROOT / "config/test.yaml")


READER_FILES = [
    "tia/64x64_TEM_images_acquire.emi",
    "dm/multi_signal.dm3",
    "pt_on_carbon/images/PtCo1.jpg",
    "tiff/ExampleImage_soot_HRTEM.tif",
    "emd/Camera Ceta Imaging Micro.emd",
]


@pytest.mark.parametrize("name", READER_FILES)
@settings(FUZZ, deadline=20000)  # rosettasciio's DM parser takes up to ~8 s on a damaged tag directory
@given(data=st.data())
def test_mutated_micrographs_read_or_name_the_file(tmp_path_factory, name, data):
    source = REAL / name
    if not source.exists():
        pytest.skip(f"{source} not present")
    folder = tmp_path_factory.mktemp("mutated")
    for sibling in source.parent.glob(source.stem + "*"):  # TIA: the .emi and its .ser
        shutil.copy(sibling, folder)
    target = folder / source.name
    victim = folder / data.draw(st.sampled_from(sorted(p.name for p in folder.iterdir())))
    raw = bytearray(victim.read_bytes())
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]  # truncated
    else:
        for offset in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=16)):
            raw[offset] ^= data.draw(st.integers(1, 255))
    victim.write_bytes(bytes(raw))
    try:
        images, pixel_size = read_images(target)
    except ValueError as error:
        assert str(target) in str(error) or victim.name in str(error)
    else:
        assert all(isinstance(image, np.ndarray) and image.ndim == 2 for image in images)
        assert pixel_size is None or np.isfinite(pixel_size)
