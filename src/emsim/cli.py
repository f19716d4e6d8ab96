"""The `emsim` command: check a study, inspect and draw datasets, segment micrographs, export models."""

from __future__ import annotations

import argparse
import json
import logging
import math
import pickle
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line naming the argument (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _number(low: float | None = None, high: float | None = None, above: bool = False, integer: bool = False):
    """An argparse type: a finite number (an integer if ``integer``) >= ``low`` (> if ``above``) and <= ``high``."""

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if integer else 'a number'}") from None
        too_low = low is not None and (value <= low if above else value < low)
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            bounds = [f"{'>' if above else '>='} {low:g}"] if low is not None else []
            bounds += [f"<= {high:g}"] if high is not None else []
            raise argparse.ArgumentTypeError(f"{text} is not a finite number {' and '.join(bounds)}".strip())
        return value

    parse.__name__ = "integer" if integer else "number"
    return parse


PIXEL_SIZE_A = _number(1e-3, 1e5)  # 1 pm to 10 um per pixel


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="emsim", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="validate a study config and list its domains and models")
    check.add_argument("config", nargs="?", default="config/config.yaml")

    info = commands.add_parser("info", help="summarise a dataset (HDF5)")
    info.add_argument("file")

    show = commands.add_parser("show", help="draw a montage of a dataset's images with label outlines")
    show.add_argument("file")
    show.add_argument("-o", "--output", required=True, help="PNG file to write")
    show.add_argument("-n", "--count", type=_number(1, 10000, integer=True), default=8)
    show.add_argument("--split", default="train", choices=["train", "val", "test"])

    predict = commands.add_parser(
        "predict",
        help="segment micrographs (TIFF, PNG, JPEG, NumPy, HDF5, MRC, DM3/DM4, EMD, TIA SER/EMI, HSPY) with a model "
        "or an ensemble (mean probabilities, uncertainty, OOD score, summary.csv)",
    )
    predict.add_argument("model", help="model file, or a quoted glob (all of its matches form an ensemble)")
    predict.add_argument("inputs", nargs="+")
    predict.add_argument(
        "-m",
        "--model",
        dest="more_models",
        action="append",
        default=[],
        help="a further ensemble member (file or quoted glob); repeatable",
    )
    predict.add_argument("-o", "--output", required=True, help="folder for masks, maps and summary.csv")
    predict.add_argument("--device", default="auto")
    predict.add_argument(
        "--pixel-size", type=PIXEL_SIZE_A, help="pixel size in Å of the inputs (replaces what the files record)"
    )
    predict.add_argument(
        "--allow-rescale",
        action="store_true",
        help="resample inputs whose pixel size is more than 4x off the models' (otherwise an error)",
    )
    predict.add_argument(
        "--colour",
        choices=["luminance", "refuse"],
        default="luminance",
        help="an image whose colour channels differ (burned-in annotations): read as luminance, or refuse it",
    )
    predict.add_argument(
        "--tile", type=_number(32, 8192, integer=True), default=512, help="tile size in px (multiple of 32)"
    )
    predict.add_argument("--batch", type=_number(1, 4096, integer=True), default=8, help="tiles per forward pass")
    predict.add_argument("--ood-threshold", type=_number(0, above=True), help="replaces the models' OOD threshold")
    predict.add_argument(
        "--max-memory-GB",
        type=_number(0, above=True),
        default=8.0,
        help="refuse an image whose estimated memory is larger (default 8)",
    )
    predict.add_argument(
        "--min-area-nm2", type=_number(0), help="smaller predicted particles are dropped [nm^2] (default 1)"
    )
    predict.add_argument(
        "--no-split", action="store_true", help="keep touching particles together (no watershed split)"
    )
    predict.add_argument(
        "--min-depth-px",
        type=_number(0, above=True),
        help="a neck this much narrower than both particles' centres (distance to background, px) splits them "
        "(default 2)",
    )

    export = commands.add_parser("export", help="export a model or an ensemble to ONNX")
    export.add_argument("models", nargs="+", help="model files or quoted globs")
    export.add_argument("-o", "--output", required=True, help="ONNX file to write")

    match = commands.add_parser(
        "match",
        help="read defocus, dose and pixel size off micrographs (Thon rings, counts) and write the matching domain",
    )
    match.add_argument("files", nargs="+", help="single-image micrograph files (any format emsim predict reads)")
    match.add_argument("--energy-kV", type=_number(1, 3000), default=300.0, help="acceleration voltage (default 300)")
    match.add_argument(
        "--Cs-mm", type=_number(0, 100), default=0.0, help="spherical aberration [mm] (default 0: corrected)"
    )
    match.add_argument("--pixel-size", type=PIXEL_SIZE_A, help="pixel size in Å (replaces the files' own)")
    match.add_argument(
        "--spacing-A",
        type=_number(0.5, 100),
        help="a lattice spacing that shows in the images (e.g. 3.35): gives the pixel size",
    )
    match.add_argument(
        "--counts-per-electron",
        type=_number(0, above=True),
        help="the camera's conversion (else: noise-floor estimate)",
    )
    match.add_argument("-o", "--output", help="YAML file for the matched domain (default: print it)")
    match.add_argument("--plots", help="folder for one PNG per file: measured and fitted Thon rings")
    match.add_argument("--study", help="a study config: name its simulated domains nearest to the files")
    match.add_argument("--results", default="results", help="the study's results folder (default: results)")

    ood = commands.add_parser(
        "ood", help="OOD score against measured loss on every evaluated (model, domain) pair; a calibrated threshold"
    )
    ood.add_argument("results", help="a study's results folder")
    ood.add_argument(
        "--loss-ratio",
        type=_number(0, above=True),
        default=1.5,
        help="a pair is degraded above this x its in-domain loss",
    )
    ood.add_argument("-o", "--output", help="also write everything as JSON here")
    ood.add_argument("--figure", help="also draw score vs loss and shift gap to FIGURE.png/.svg")

    findings = commands.add_parser(
        "findings", help="the seed study's findings as statistics of a finished study's tables (or of the study's own)"
    )
    findings.add_argument("report_dir", nargs="?", help="results/report of a finished study")
    findings.add_argument("--configfile", help="the study config the results were made with")
    findings.add_argument("--metric", default="ce", help="metric short name of the table's loss columns (default: ce)")
    findings.add_argument(
        "--bootstrap",
        type=_number(0, 100000, integer=True),
        default=200,
        help="resamplings of the models for each verdict's 95 %% interval (default 200; 0: verdicts by sign only)",
    )
    findings.add_argument(
        "--markdown",
        metavar="FILE",
        help="also write the table into FILE's block <!-- findings:NAME -->: NAME = study for --study, "
        "else <config file stem>:<metric> (docs/validation.md)",
    )
    findings.add_argument(
        "--keep-tables",
        metavar="DIR",
        help="also copy the run's per-model tables, cut to what the findings read, to DIR/<experiment>/models.parquet",
    )
    findings.add_argument(
        "--study",
        metavar="NOTEBOOKS",
        nargs="?",
        const=True,
        help="the study's own findings: from the tables shipped with emsim, or from the article repository's notebooks/ folder",
    )

    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or a bad argument (one line on stderr)
        return int(stop.code or 0)
    if args.command == "findings" and (args.study is None) == (args.report_dir is None):
        parser.error("findings: give either REPORT_DIR (with --configfile) or --study [NOTEBOOKS]")
    if args.command == "findings" and args.report_dir and not args.configfile:
        parser.error("findings: REPORT_DIR needs --configfile (the study config of the run)")
    if args.command == "findings" and args.study and args.keep_tables:
        parser.error("findings: --keep-tables copies a run's tables; the study's are shipped already")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError, pickle.UnpicklingError) as error:  # bad input: one line naming the key or file
        print(f"emsim {args.command}: {error}", file=sys.stderr)
        return 2


def _check(args) -> int:
    from emsim import micrographs
    from emsim.study import config, experiments, settings

    study = config.load(args.config)
    print(f"{args.config}: valid")
    print(f"structure sets ({len(study.structure_sets)}): {', '.join(study.structure_sets)}")
    print(f"domains ({len(study.domains)}): {', '.join(study.domains)}")
    for name, domain in study.domains.items():
        if domain.is_micrograph:
            spec = domain.micrographs
            counts = micrographs.split_counts(spec["splits"], len(spec["files"]))
            split = ", ".join(f"{k} {v}" for k, v in counts.items())
            print(
                f"  {name}: {len(spec['files'])} micrograph files, labels: {spec['label_kind']}; files per split: {split}"
            )
    for name, exp in experiments.expand(study).items():
        counts = Counter(m.stage for m in exp.models)
        print(f"experiment {name}: " + ", ".join(f"{counts[s]} {s}" for s in settings.STAGES))
    return 0


def _info(args) -> int:
    from emsim import data, io
    from emsim.progress import bar

    n_arrays = data.verify(args.file)
    attrs = data.read_attrs(args.file)
    meta = data.read_meta(args.file)
    with data.open_dataset(args.file) as f, io.reading(args.file, "dataset"):
        shape = f["images"].shape
        splits = {name: len(f[f"splits/{name}"]) for name in data.SPLITS}
        sums = np.zeros(3)  # counts, squared counts, particle pixels: one image in memory at a time
        for i in bar(range(shape[0]), "info", "image"):
            image = f["images"][i].astype(np.float64)
            sums += image.sum(), np.square(image).sum(), f["labels"][i].sum()
    mean, squares, fraction = sums / np.prod(shape)
    std = np.sqrt(max(squares - mean**2, 0.0))
    print(f"{args.file}: domain {attrs['domain']}")
    print(f"  images {shape[0]} x {shape[1]} x {shape[2]} px, counts mean {mean:.4g}, std {std:.4g}")
    kind = attrs.get("label_kind", "mask")
    if kind == "mask":
        print(f"  labels: particle fraction {fraction:.3f}")
    else:
        print(f"  labels: {kind}" + (f" ({len(data.read_boxes(args.file))} boxes)" if kind == "boxes" else ""))
    print("  splits: " + ", ".join(f"{k} {v}" for k, v in splits.items()))
    for key, values in meta.items():
        values = np.asarray(values, float)
        print(f"  {key}: min {values.min():.4g}, mean {values.mean():.4g}, max {values.max():.4g}")
    for file in attrs.get("files", []):
        print(f"  file {file['path']}: {file['split']}, {file['pixel_size_A']:.4g} Å/px, sha256 {file['sha256'][:12]}")
    domain = attrs.get("config", {}).get("domain") or attrs.get("config", {}).get("micrographs") or {}
    print(f"  config: {json.dumps({k: v for k, v in domain.items() if k != 'files'}, sort_keys=True)}")
    if "provenance" in attrs:
        print(
            f"  provenance: emsim {attrs['provenance']['emsim']}, "
            + ", ".join(f"{k} {v}" for k, v in attrs["provenance"]["packages"].items() if v)
        )
    print(f"  integrity: all {n_arrays} arrays read, checksums verified")
    return 0


def _show(args) -> int:
    from emsim import montage

    if Path(args.output).is_dir():
        raise ValueError(f"-o {args.output}: is a folder; give the PNG file to write")
    print(montage.show_dataset(args.file, args.output, count=args.count, split=args.split))
    return 0


def _predict(args) -> int:
    from emsim import predict
    from emsim.study.settings import Instances

    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise ValueError(f"-o {args.output}: exists and is not a folder; give a folder for masks and overlays")
    _check_device(args.device)
    given = {"min_area_nm2": args.min_area_nm2, "min_depth_px": args.min_depth_px}
    try:
        instances = Instances.with_defaults(
            split_touching=not args.no_split, **{key: value for key, value in given.items() if value is not None}
        )
    except ValueError as error:
        key, _, message = str(error).partition(": ")
        raise ValueError(f"--{key.removeprefix('instances.').replace('_', '-')}: {message}") from None
    results = predict.predict_files(
        [args.model, *args.more_models],
        args.inputs,
        args.output,
        device=args.device,
        tile_px=args.tile,
        batch_tiles=args.batch,
        pixel_size_A=args.pixel_size,
        ood_threshold=args.ood_threshold,
        progress=True,
        allow_rescale=args.allow_rescale,
        colour=args.colour,
        instances=instances,
        max_memory_GB=args.max_memory_GB,
    )
    failed = [r for r in results if r.get("status") != "ok"]
    for r in results:
        where = r["input"] + ("" if r.get("index") is None else f" [{r['index']}]")
        flag = " (out of distribution)" if r.get("ood_flag") else ""
        print(f"{where}: {r['status']}{flag}" + (f" ({r.get('message')})" if r.get("status") != "ok" else ""))
    print(f"{len(results) - len(failed)} ok, {len(failed)} failed; summary in {args.output}/summary.csv")
    return 1 if failed else 0


def _check_device(device: str) -> None:
    """``--device``: auto, cpu, or a CUDA device that exists on this machine."""
    import torch

    try:
        chosen = torch.device(device) if device != "auto" else None
    except RuntimeError:
        raise ValueError(f"--device {device}: not a device; use auto, cpu or cuda") from None
    if chosen is not None and chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif chosen is not None and chosen.type != "cpu":
        raise ValueError(f"--device {device}: not supported; use auto, cpu or cuda")


def _export(args) -> int:
    from emsim import export

    members = export.export_onnx(args.models, args.output)
    print(f"{args.output}: ONNX ensemble of {len(members)} model(s), checked against PyTorch")
    return 0


def _match(args) -> int:
    import yaml

    from emsim import match
    from emsim.study import config

    if args.plots:
        Path(args.plots).mkdir(parents=True, exist_ok=True)
    found, failed = [], 0
    for path in args.files:
        try:
            conditions = match.match_file(
                path,
                args.energy_kV * 1e3,
                args.Cs_mm * 1e7,
                args.pixel_size,
                args.spacing_A,
                args.counts_per_electron,
                None if not args.plots else str(Path(args.plots) / f"{Path(path).stem}_rings.png"),
            )
        except (ValueError, OSError) as error:
            print(f"emsim match: {error}", file=sys.stderr)
            failed += 1
            continue
        found.append(conditions)
        print(conditions.describe())
    if found:
        block = match.domain_block([c.defocus for c in found], [c.dose_e_per_A2 for c in found])
        note = match.sign_note([c.defocus for c in found])
        body = textwrap.indent(yaml.safe_dump(block, sort_keys=False), "  ")
        text = f"# emsim match over {len(found)} file(s); {note}\ndomains:\n{body}"
        if args.output:
            Path(args.output).write_text(text)
            print(f"domain written to {args.output}")
        else:
            print(text, end="")
        if args.study:
            print("\n".join(match.nearest_domains(found, config.load(args.study), args.results)))
    return 1 if failed else 0


def _ood(args) -> int:
    from emsim.io import atomic_path
    from emsim.learning import ood_check
    from emsim.report.figures import plot_ood_check

    found = ood_check.study_scores(args.results, args.loss_ratio, progress=True)
    print(ood_check.summary(found, args.loss_ratio))
    if args.figure:
        plot_ood_check(found, args.figure)
    if args.output:
        with atomic_path(args.output) as tmp:
            Path(tmp).write_text(json.dumps(found, indent=1) + "\n")
    return 0


def _findings(args) -> int:
    from emsim.progress import bar
    from emsim.study import config, findings

    block = None
    if args.markdown:
        block = "study" if args.study else f"{Path(args.configfile).stem}:{args.metric}"
        findings.read_block(args.markdown, block)  # the block exists before any work
    if args.study:
        tables = findings.shipped_study() if args.study is True else findings.load_study(args.study)
        results = {
            name: findings.findings(table, facts, findings.STUDY_METRIC, args.bootstrap)
            for name, (table, facts) in bar(tables.items(), "findings", "experiment")
        }
    else:
        study = config.load(args.configfile)
        results = findings.report_findings(args.report_dir, study, args.metric, progress=True, bootstrap=args.bootstrap)
        if args.keep_tables:
            findings.write_tables(args.report_dir, args.keep_tables)
    table = findings.markdown(results)
    print(table)
    if block:
        findings.write_block(args.markdown, block, table)
    return 0


COMMANDS = {
    "check": _check,
    "info": _info,
    "show": _show,
    "predict": _predict,
    "export": _export,
    "match": _match,
    "ood": _ood,
    "findings": _findings,
}

if __name__ == "__main__":
    sys.exit(main())
