"""Failures name their file: damaged or truncated files, unwritable outputs, bad CLI input; job logs hold the error."""

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from synthetic import disc_domain as make_domain
from synthetic import untrained_model as make_model

from emsim import cli, data, io
from emsim.simulation import structures
from emsim.simulation.simulate import ShardWaves


def flip_byte(path, dataset: str) -> None:
    """Flip one byte inside the first stored chunk of ``dataset``."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as raw:
        raw.seek(offset + 5)
        byte = raw.read(1)
        raw.seek(offset + 5)
        raw.write(bytes([byte[0] ^ 0x40]))


def shard(tmp_path):
    rng = np.random.default_rng(0)
    waves = (rng.normal(size=(2, 1, 16, 16)) + 1j).astype(np.complex64)
    path = tmp_path / "shard0.h5"
    ShardWaves(waves, np.zeros((2, 8, 8), np.uint8), np.zeros(2, np.float32), 0.2).save(path, {"structure_set": "s"})
    return path


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_flipped_byte_in_a_dataset_is_an_error_naming_the_file(tmp_path, capsys):
    path = make_domain(tmp_path / "d.h5", "d", seed=0)
    assert data.read_split(path, "train")[0].shape[0] == 2
    flip_byte(path, "images")
    with pytest.raises(ValueError, match="d.h5"):
        data.read_split(path, "train")
    code, err = run_cli(capsys, "info", path)
    assert code == 2 and "d.h5" in err and "nan" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_exit_wave_shard_names_the_file(tmp_path, damage):
    path = shard(tmp_path)
    assert ShardWaves.load(path).waves.shape == (2, 1, 16, 16)
    if damage == "flip":
        flip_byte(path, "waves")
    else:
        with open(path, "r+b") as raw:
            raw.truncate(path.stat().st_size // 2)
    with pytest.raises(ValueError, match="shard0.h5"):
        ShardWaves.load(path)


def test_flipped_byte_in_a_scenes_file_names_the_file(tmp_path):
    scenes = structures.build_structure_set(
        {"particles": {"lattice": "Au_fcc", "radius_A": [4, 5], "min_gap_A": 2}, "substrate": {"thickness_A": [5, 6]}},
        25.6,
        range(1),
    )
    path = tmp_path / "scenes.h5"
    structures.save_scenes(path, scenes, {})
    flip_byte(path, "positions_A")
    with pytest.raises(ValueError, match="scenes.h5"):
        structures.load_scenes(path)


def test_atomic_path_removes_stale_temporaries_and_names_unwritable_outputs(tmp_path):
    target = tmp_path / "out.h5"
    stale = tmp_path / ".out.h5.tmp999999"
    stale.write_bytes(b"x" * 100)
    other = tmp_path / ".other.h5.tmp999999"
    other.write_bytes(b"x")
    with io.atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done" and not stale.exists() and other.exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="file/model.pt"):
        with io.atomic_path(blocker / "model.pt") as tmp:
            tmp.write_text("never")


def test_job_log_ends_with_the_uncaught_error(tmp_path):
    log = tmp_path / "job.log"
    code = f"from emsim import io\nio.log_to_file({str(log)!r})\nopen('/no/such/input.h5')\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    text = log.read_text()
    assert "Traceback" in text and "/no/such/input.h5" in text
    assert text.rstrip().endswith("No such file or directory: '/no/such/input.h5'")


def test_cli_bad_inputs_give_one_line_naming_the_file(tmp_path, capsys):
    model = make_model(tmp_path / "m.pt", seed=0)
    image = tmp_path / "x.npy"
    np.save(image, np.zeros((64, 64), np.float32))
    tampered = tmp_path / "tampered.pt"
    tampered.write_bytes(open(model, "rb").read()[:-200] + b"\x00" * 200)
    no_meta = tmp_path / "no_meta.h5"
    with h5py.File(no_meta, "w") as f:
        f["images"] = np.zeros((1, 8, 8), np.float32)
        f["splits/train"] = np.arange(1)
    existing = tmp_path / "existing.txt"
    existing.write_text("")
    cases = [
        (("predict", tmp_path / "missing.pt", image, "-o", tmp_path / "o1"), "missing.pt"),
        (("predict", tampered, image, "-o", tmp_path / "o2"), "tampered.pt"),
        (("predict", model, image, "-o", existing), "existing.txt"),
        (("predict", model, image, "-o", tmp_path / "o3", "--device", "tpu"), "--device tpu"),
        (("info", no_meta), "no_meta.h5"),
        (("info", tmp_path / "absent.h5"), "absent.h5"),
        (("show", no_meta, "-o", tmp_path / "m.png"), "no_meta.h5"),
        (("check", tmp_path / "absent.yaml"), "absent.yaml"),
    ]
    if not torch.cuda.is_available():
        cases.append((("predict", model, image, "-o", tmp_path / "o4", "--device", "cuda"), "CUDA is not available"))
    for argv, name in cases:
        code, err = run_cli(capsys, *argv)
        assert code != 0 and name in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_images_near_the_float32_limit_standardise_like_small_ones():
    rng = np.random.default_rng(0)
    image = rng.uniform(1, 2, (2, 32, 32)).astype(np.float32)
    big = (image * np.float32(1.5e38)).astype(np.float32)
    assert np.allclose(data.standardize(big), data.standardize(image), atol=1e-4)
    with pytest.raises(ValueError, match="non-finite"):
        data.standardize(np.full((1, 4, 4), np.inf, np.float32))


def test_damaged_fftw_wisdom_is_ignored_with_a_warning_naming_it(tmp_path, caplog):
    from emsim.simulation import simulate

    path = tmp_path / "wisdom.npz"
    simulate.save_fftw_wisdom(path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with caplog.at_level("WARNING", logger="emsim.simulation.simulate"):
        assert simulate.load_fftw_wisdom(path) is False
    assert f"ignoring damaged FFTW wisdom file {path}" in caplog.text


def test_info_reads_every_array_and_names_the_damaged_one(tmp_path, capsys):
    path = make_domain(tmp_path / "d.h5", "d", seed=0)
    assert cli.main(["info", str(path)]) == 0 and "checksums verified" in capsys.readouterr().out
    flip_byte(path, "splits/val")
    assert cli.main(["info", str(path)]) == 2
    assert f"{path}: array 'splits/val' is damaged" in capsys.readouterr().err
