"""Study configuration: load, validate against the schema, expand sweeps into structure sets and domains.

A sweep may stand for any value inside a ``structure_sets`` or ``domains`` entry:

- ``{range: [start, stop, step]}``: start, start + step, ... up to and including stop;
- ``{values: [a, b, ...]}`` or ``{values: {label: value, ...}}``.

An entry with sweeps expands into the cartesian product of its sweeps; its name is a template
whose ``{key}`` fields are filled with each sweep's value (or label), ``key`` being the last key
of the sweep's path: ``df{mean_nm}`` with ``defocus: {mean_nm: {range: [-20, 20, 10]}}`` gives
domains ``df-20, df-10, df0, df10, df20``.

Every error raises :class:`ConfigError` naming the key, before any job runs.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import itertools
import json
import math
import os
import re
import zlib
from pathlib import Path

import jsonschema
import numpy as np
import yaml

from emsim import extensions, micrographs
from emsim.learning import methods
from emsim.learning.architecture import DOWNSAMPLING
from emsim.simulation import optics, phonons, shifts, structures, supports
from emsim.study import schema as study_schema
from emsim.study import settings
from emsim.study.settings import ConfigError

MAX_NAME_CHARS = 120  # names become parts of file names (file systems take 255 bytes)
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=-]*")


def domain_schema() -> dict:
    """Schema of one expanded domain: a structure set, an optional seed and any registered shifts."""
    mixture = {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    }
    properties = {
        "structure_set": {"anyOf": [{"type": "string"}, mixture]},
        "seed": {"type": "integer", "minimum": 0},
    }
    properties |= {name: kind.schema() for name, kind in shifts.SHIFTS.items()}
    return {"type": "object", "additionalProperties": False, "required": ["structure_set"], "properties": properties}


def micrograph_domain_schema() -> dict:
    """Schema of a domain made of micrograph files: ``micrographs`` and an optional seed."""
    properties = {"micrographs": study_schema.load()["$defs"]["micrographs"], "seed": {"type": "integer", "minimum": 0}}
    return {"type": "object", "additionalProperties": False, "required": ["micrographs"], "properties": properties}


def is_micrograph(study: settings.Study, name: str) -> bool:
    """Whether domain ``name`` is made of micrograph files (else simulated)."""
    return study.domains[name].is_micrograph


def has_pixel_labels(study: settings.Study, name: str) -> bool:
    """Whether domain ``name`` has pixel labels (simulated, or micrographs with masks): it can be trained on."""
    domain = study.domains[name]
    return not domain.is_micrograph or domain.micrographs["label_kind"] == "mask"


def load(source: str | Path | dict, base_dir: str | Path | None = None) -> settings.Study:
    """Validated study config with defaults filled and sweeps expanded, as a typed, frozen Study.

    The result has ``structure_sets`` and ``domains`` as name -> expanded entry (each domain
    entry gains ``sweep``: the swept values that made it).
    ``extensions`` are resolved against ``base_dir`` (default: the study file's folder, or the
    working directory for a mapping) and stored relative to the working directory.
    """
    raw = _read(source)
    study = copy.deepcopy(raw)
    if base_dir is None:
        base_dir = "." if isinstance(source, dict) else Path(source).parent
    if isinstance(study.get("extensions"), list):
        study["extensions"] = [_extension_path(base_dir, path) for path in study["extensions"]]
    for path in study.get("extensions", []):
        extensions.load(path)
    _validate(study, study_schema.load(), "")
    _check_size_px(study)
    _check_names(study["experiments"], "experiments")
    study["structure_sets"] = _expand_block(study["structure_sets"], "structure_sets", study["limits"])
    set_schema = copy.deepcopy(structures.STRUCTURE_SET_SCHEMA)
    set_schema["properties"]["labels"] = settings.without_defaults(
        study_schema.load()["properties"]["labels"]
    )  # the set's overrides
    for name, spec in study["structure_sets"].items():
        _validate(spec, set_schema, f"structure_sets.{name}")
        _validate(spec["substrate"], supports.kind_of(spec["substrate"]).schema(), f"structure_sets.{name}.substrate")
        _check_ranges(spec, f"structure_sets.{name}")
    study["domains"] = _expand_block(study["domains"], "domains", study["limits"])
    for name, domain in study["domains"].items():
        sweep = domain.pop("sweep")
        if isinstance(domain, dict) and "micrographs" in domain:
            _validate(domain, micrograph_domain_schema(), f"domains.{name}")
            try:
                domain["micrographs"] = micrographs.resolve(
                    domain["micrographs"], base_dir, f"domains.{name}.micrographs"
                )
            except ValueError as error:
                raise ConfigError(str(error)) from None
            domain["sweep"] = sweep
            continue
        _validate(domain, domain_schema(), f"domains.{name}")
        domain["sweep"] = sweep
        _check_mixture(domain["structure_set"], study["structure_sets"], f"domains.{name}.structure_set")
    study = settings.Study.from_dict(study)
    _check_image(study)
    _check_particles_fit(study)
    _check_phonons(study)
    _check_delocalisation(study)
    _check_splits(study)
    _check_experiments(study)
    _check_sizes(study)
    return study


def _check_mixture(value, structure_sets: dict, key: str) -> None:
    """A domain's structure set: a defined set, or a mapping of defined sets to proportions summing to one."""
    names = [value] if isinstance(value, str) else list(value)
    for set_name in names:
        if set_name not in structure_sets:
            raise ConfigError(f"{key}: {set_name!r} is not a structure set; defined: {', '.join(structure_sets)}")
    if isinstance(value, dict) and abs(sum(value.values()) - 1) > 1e-6:
        raise ConfigError(f"{key}: the proportions {value} sum to {sum(value.values()):g}, not 1")


def domain_seed(study: settings.Study, name: str) -> int:
    """Seed of a domain's random draws: its ``seed`` key, else from the study seed and its name."""
    domain = study.domains[name]
    if domain.seed is not None:
        return domain.seed
    return int(zlib.crc32(name.encode()) ^ (study.seed * 0x9E3779B1)) & 0x7FFFFFFF


def domain_slice(study: settings.Study, name: str) -> dict:
    """Everything a domain's dataset depends on, beyond the exit waves (Snakemake params)."""
    domain = study.domains[name]
    if domain.is_micrograph:  # no optics: the image size and pixel size only
        image = {"size_px": study.image.size_px, "pixel_size_A": study.image.pixel_size_A}
        return normalized(
            {"name": name, "micrographs": domain.micrographs, "seed": domain_seed(study, name), "image": image}
        )
    params = {
        "name": name,
        "domain": domain.entry(),
        "seed": domain_seed(study, name),
        "microscope": study.microscope,
        "image": study.image,
        "splits": study.splits,
    }
    if any(shifts.SHIFTS[key].apply.__module__ != shifts.__name__ for key in domain.shifts):
        params["extensions"] = list(study.extensions)
    return normalized(params)


def training_extensions(study: settings.Study, models) -> list[str]:
    """The study's ``extensions`` if any of ``models`` (model specs) uses a transfer method they
    register, else none: a training job imports them, and adding a shift kind reruns no training."""
    registered = (methods.METHODS[m.method["name"]].__module__ for m in models)
    return list(study.extensions) if any(module != methods.__name__ for module in registered) else []


def scene_spec(study: settings.Study, name: str) -> dict:
    """What the scenes of structure set ``name`` depend on: the set without its ``labels`` (Snakemake params)."""
    spec = dataclasses.asdict(study.structure_sets[name])
    return normalized({k: v for k, v in spec.items() if k != "labels"})


def set_labels(study: settings.Study, name: str) -> settings.Labels:
    """Label settings of structure set ``name``: the study's ``labels`` with the set's overrides."""
    return dataclasses.replace(study.labels, **study.structure_sets[name].labels)


def domain_values(study: settings.Study, names: list[str]) -> dict:
    """The swept value that distinguishes each domain (for plots): a number, a label or the name."""
    values = {}
    for name in names:
        sweep = study.domains[name].sweep
        values[name] = next(iter(sweep.values())) if len(sweep) == 1 else name
    return values


def sweep_label(study: settings.Study, names: list[str]) -> str:
    """Axis label for a series: the swept key shared by its domains (e.g. ``mean_nm``), else ``domain``."""
    keys = {key for name in names for key in study.domains[name].sweep}
    return keys.pop() if len(keys) == 1 else "domain"


def normalized(value):
    """``value`` (dataclasses as dicts) with mapping keys sorted recursively: a stable repr for Snakemake params."""
    return json.loads(json.dumps(value, sort_keys=True, default=dataclasses.asdict))


def transfer_targets(study: settings.Study, spec: settings.Experiment, key: str) -> list[str]:
    """An experiment's transfer targets: its ``targets``, else every domain of its series with pixel labels."""
    if spec.targets is not None:
        return match_domains(study, spec.targets, f"{key}.targets")
    return [d for d in match_domains(study, spec.domains, f"{key}.domains") if has_pixel_labels(study, d)]


def match_domains(study: settings.Study, patterns: list[str], key: str) -> list[str]:
    """Domain names matching names or glob patterns, in config order; an unmatched pattern is an error."""
    names = list(study.domains)
    found = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ConfigError(f"{key}: {pattern!r} matches no domain; domains: {', '.join(names)}")
        found += [h for h in hits if h not in found]
    return found


# --- internals -----------------------------------------------------------------------------


def _extension_path(base_dir, path):
    if not isinstance(path, str) or Path(path).is_absolute():
        return path
    return os.path.relpath(Path(base_dir) / path)


MAX_DEPTH = 32  # nesting of mappings and lists in a study config


def _read(source) -> dict:
    """The study as a mapping with text keys, nested at most ``MAX_DEPTH`` deep (UTF-8 or UTF-16/32 with a BOM)."""
    if isinstance(source, dict):
        data, where = source, "the study config"
    else:
        path = Path(source)
        where = str(path)
        try:
            data = yaml.safe_load(path.read_bytes())  # PyYAML detects UTF-16/32 by their byte-order mark
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read the study config ({error})") from None
        except RecursionError:
            raise ConfigError(f"{path}: the study config is nested too deeply to read") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the study config must be a mapping")
    stack = [(data, "", 0)]
    while stack:
        value, key, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(f"{key or '<top level>'}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            for name, item in value.items():
                if not isinstance(name, str):
                    raise ConfigError(
                        f"{key + '.' if key else ''}{name!r}: keys must be text, not {type(name).__name__}"
                    )
                stack.append((item, f"{key}.{name}" if key else name, depth + 1))
        elif isinstance(value, list):
            stack += [(item, f"{key}[{i}]", depth + 1) for i, item in enumerate(value)]
    return data


def _validate(instance: dict, schema: dict, where: str) -> None:
    """Raise the best schema error naming its key; whole-number floats where an integer is meant become ints."""
    validator = study_schema.Validator(schema)
    for error in list(validator.iter_errors(instance)):
        if error.validator == "type" and _whole_float(error.instance) and "integer" in _as_list(error.validator_value):
            *parents, last = error.absolute_path
            target = instance
            for key in parents:
                target = target[key]
            target[last] = int(error.instance)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        key = ".".join(str(p) for p in [*([where] if where else []), *error.absolute_path]) or "<top level>"
        message = error.message
        if error.validator == "type" and _looks_numeric(error.instance):
            message += " (YAML reads exponents without a sign as text: write e.g. 1.2e+7 instead of 1.2e7)"
        if error.validator == "type" and isinstance(error.instance, float) and not math.isfinite(error.instance):
            message = f"{error.instance} is not allowed: every number must be finite"
        if error.validator == "uniqueItems":
            message = f"{_first_repeat(error.instance)!r} is listed twice"
        if error.validator == "additionalProperties":
            allowed = sorted(error.schema.get("properties", {}))
            message += f"; allowed keys: {', '.join(allowed)}"
        raise ConfigError(f"{key}: {message}")


def _first_repeat(items: list):
    """The first item of ``items`` that equals an earlier one."""
    for i, item in enumerate(items):
        if item in items[:i]:
            return item
    return None


def _whole_float(value) -> bool:
    return isinstance(value, float) and value.is_integer()


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _looks_numeric(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)


def _is_sweep(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("range", "values")


def _sweeps(entry, path=()) -> list[tuple[tuple, dict]]:
    found = []
    if _is_sweep(entry):
        return [(path, entry)]
    if isinstance(entry, dict):
        for key, value in entry.items():
            found += _sweeps(value, (*path, key))
    return found


def _sweep_values(sweep: dict, key: str, limit: int) -> list[tuple[str, object]]:
    """(label, value) pairs of one sweep (at most ``limit``)."""
    if "range" in sweep:
        spec = sweep["range"]
        if not (
            isinstance(spec, list)
            and len(spec) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in spec)
        ):
            raise ConfigError(f"{key}: range must be [start, stop, step] of finite numbers, got {spec!r}")
        start, stop, step = spec
        if step == 0 or (stop - start) / step < 0:
            raise ConfigError(f"{key}: range {spec} is empty (step must move from start towards stop)")
        count = int(np.floor((stop - start) / step + 1e-9)) + 1
        if count > limit:
            raise ConfigError(
                f"{key}: range {spec} has {count:.3g} values, more than limits.max_sweep_entries = {limit}"
            )
        values = [_clean(start + i * step) for i in range(count)]
        return [(f"{v:g}", v) for v in values]
    values = sweep["values"]
    if isinstance(values, dict):
        pairs = [(str(k), v) for k, v in values.items()]
    elif isinstance(values, list):
        pairs = [(f"{v:g}" if isinstance(v, (int, float)) else str(v), v) for v in values]
    else:
        raise ConfigError(f"{key}: values must be a list or a mapping, got {values!r}")
    if not pairs:
        raise ConfigError(f"{key}: empty sweep (values has no entries)")
    return pairs


def _clean(value: float):
    rounded = round(value, 9)
    return int(rounded) if float(rounded).is_integer() else rounded


def _expand_block(block: dict, where: str, limits: dict) -> dict:
    expanded = {}
    limit = limits["max_sweep_entries"]
    for template, entry in block.items():
        if where == "domains" and isinstance(entry, dict) and "sweep" in entry:
            raise ConfigError(
                f"{where}.{template}.sweep: reserved key (the loader records a domain's swept values there)"
            )
        found = _sweeps(entry)
        fields = [path[-1] for path, _ in found]
        if len(set(fields)) != len(fields):
            raise ConfigError(f"{where}.{template}: two sweeps share the key name; name fields must be unique")
        choices = [_sweep_values(sweep, f"{where}.{template}.{'.'.join(path)}", limit) for path, sweep in found]
        count = int(np.prod([len(c) for c in choices], dtype=float))
        if count > limit:
            raise ConfigError(
                f"{where}.{template}: its sweeps expand into {count:.3g} entries, more than "
                f"limits.max_sweep_entries = {limit}"
            )
        for combo in itertools.product(*choices):
            item = copy.deepcopy(entry)
            for (path, _), (_, value) in zip(found, combo):
                target = item
                for key in path[:-1]:
                    target = target[key]
                target[path[-1]] = copy.deepcopy(value)
            labels = {field: label for field, (label, _) in zip(fields, combo)}
            try:
                name = template.format(**labels)
            except (KeyError, IndexError) as error:
                raise ConfigError(
                    f"{where}.{template}: name field {error} is not a swept key; swept: {', '.join(fields) or 'none'}"
                ) from None
            except ValueError as error:  # unbalanced braces
                raise ConfigError(f"{where}.{template}: not a name template ({error})") from None
            if found and name == template:
                raise ConfigError(
                    f"{where}.{template}: an entry with sweeps needs a name template such as '{template}{{{fields[0]}}}'"
                )
            if name in expanded:
                raise ConfigError(f"{where}.{template}: expands to the name {name!r} twice")
            _check_name(name, f"{where}.{template}", swept=bool(found))
            if where == "domains":
                item["sweep"] = {field: value for field, (_, value) in zip(fields, combo)}
            expanded[name] = item
    return expanded


def _check_ranges(spec: dict, where: str) -> None:
    for block, key in (
        ("particles", "radius_A"),
        ("particles", "count"),
        ("particles", "stacking_faults"),
    ):
        low, high = spec[block][key]
        if low > high:
            raise ConfigError(f"{where}.{block}.{key}: min {low} is larger than max {high}")


def _check_image(study: settings.Study) -> None:
    low, high = study.simulation.zero_defocus_search_A
    if low >= high:
        raise ConfigError(f"simulation.zero_defocus_search_A: min {low} is not below max {high}")
    image, sampling = study.image, study.simulation.sampling_A
    for key, length in (("pixel_size_A", image.pixel_size_A), ("padding_A", image.padding_A)):
        ratio = length / sampling
        if (length and ratio < 1 - 1e-9) or abs(ratio - round(ratio)) > 1e-6:
            raise ConfigError(f"image.{key}: {length} must be a whole multiple of simulation.sampling_A = {sampling}")
    ratio = image.padding_A / image.pixel_size_A
    if abs(ratio - round(ratio)) > 1e-6:
        raise ConfigError(
            f"image.padding_A: {image.padding_A} must be a whole multiple of image.pixel_size_A = {image.pixel_size_A}"
        )


def _check_particles_fit(study: settings.Study) -> None:
    """Reject structure sets whose largest particles cannot be placed in the cell (periodic in x/y)
    or whose smallest wurtzite particles may have no room for the most stacking faults."""
    cell_A = optics.cell_A(study.image)
    for name, spec in study.structure_sets.items():
        particles = spec.particles
        try:
            structures.check_placement(particles, cell_A)
        except ValueError as error:  # the message starts with its key
            raise ConfigError(f"structure_sets.{name}.{error}") from None
        try:
            structures.check_stacking_faults(particles)
        except ValueError as error:  # the message starts with its key
            raise ConfigError(f"structure_sets.{name}.{error}") from None
        try:
            supports.check(spec.substrate, cell_A)
        except ValueError as error:  # the message starts with its key
            raise ConfigError(f"structure_sets.{name}.{error}") from None


def _check_phonons(study: settings.Study) -> None:
    """Every element of every structure set (particles and support) has a phonon sigma."""
    for name, spec in study.structure_sets.items():
        symbols = [*structures.LATTICES[spec.particles["lattice"]].symbols, *supports.elements(spec.substrate)]
        try:
            phonons.sigmas_A(symbols, study.simulation.phonon_sigma_A)
        except ValueError as error:
            raise ConfigError(f"{error} (structure_sets.{name})") from None


def _check_delocalisation(study: settings.Study) -> None:
    """Reject a padding smaller than the delocalisation of any domain's lens (see ``emsim.simulation.optics``).

    Evaluated at the information limit (temporal envelope exp(-2)), capped at the band limit of the
    multislice (2/3 of its Nyquist frequency), for the aberrations that 99% of the domain's images stay
    within. The defocus is measured from the particles' calibrated plane; without the
    calibration the particles' largest diameter is added (the reference is then their exit plane).
    """
    microscope, image, sim = study.microscope, study.image, study.simulation
    k_max = min(
        optics.information_limit_k(microscope.energy_eV, microscope.focal_spread_A),
        1.0 / (3.0 * sim.sampling_A),
    )
    for name, domain in study.domains.items():
        if domain.is_micrograph:
            continue
        defocus_A = _largest_defocus_A(domain)
        if not sim.calibrate_zero_defocus:
            defocus_A += 2 * max(study.structure_sets[s].particles["radius_A"][1] for s in domain.sets)
        reach_A = optics.delocalisation_A(k_max, defocus_A, microscope.Cs_A, microscope.energy_eV)
        if reach_A > image.padding_A + 1e-9:
            needed = np.ceil(reach_A / image.pixel_size_A) * image.pixel_size_A
            raise ConfigError(
                f"image.padding_A: {image.padding_A:g} A is less than the {reach_A:.1f} A by which the lens of "
                f"domain {name!r} moves detail (defocus up to {defocus_A:.0f} A, microscope.Cs_A = "
                f"{microscope.Cs_A:g}, information limit {1 / k_max:.2f} A from microscope.focal_spread_A); "
                f"set image.padding_A >= {needed:g} (a multiple of image.pixel_size_A), or reduce the defocus or Cs"
            )


def _largest_defocus_A(domain: settings.Domain, draws: int = 1000) -> float:
    """|C10| + |C12| [A] that 99% of the images the optics shifts of ``domain`` draw stay within
    (``draws`` draws, calibration offset 0)."""
    rng = np.random.default_rng(0)
    values = np.zeros(draws)
    for i in range(draws):
        aberrations: dict = {}
        for kind, params in shifts.ordered(domain.shifts, "optics"):
            aberrations, _ = kind.apply(aberrations, params, rng, {"zero_defocus_A": 0.0})
        values[i] = abs(aberrations.get("C10_A", 0.0)) + abs(aberrations.get("C12_A", 0.0))
    return float(np.quantile(values, 0.99))


def _check_splits(study: settings.Study) -> None:
    needed = sum(study.splits.values())
    for name, spec in study.structure_sets.items():
        if spec.n_structures < needed:
            raise ConfigError(
                f"structure_sets.{name}.n_structures: {spec.n_structures} structures are too few for the "
                f"splits (train + val + test = {needed})"
            )


def _check_name(name, key: str, swept: bool = False) -> None:
    """Names become file and folder names: letters, digits, ``_ . = -``; no ``..``; at most ``MAX_NAME_CHARS``."""
    if isinstance(name, str) and len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"{key}: the name {name[:40]}... is {len(name)} characters long; at most {MAX_NAME_CHARS}")
    if isinstance(name, str) and SAFE_NAME.fullmatch(name) and ".." not in name:
        return
    hint = " (choose labels with a {values: {label: value}} sweep)" if swept else ""
    raise ConfigError(
        f"{key}: the name {name!r} is not a safe file name part{hint}; use letters, digits and _ . = - "
        "(not starting with . or -, no '..')"
    )


def _check_names(block: dict, where: str) -> None:
    for name in block:
        _check_name(name, f"{where}.{name}")


def _check_size_px(study: dict) -> None:
    """image.size_px must divide by the U-Net's downsampling and stay below limits.max_size_px."""
    size, limit = study["image"]["size_px"], study["limits"]["max_size_px"]
    if size % DOWNSAMPLING:
        raise ConfigError(
            f"image.size_px: {size} is not a multiple of {DOWNSAMPLING} (the U-Net halves images five times); "
            f"nearest: {max(DOWNSAMPLING, size // DOWNSAMPLING * DOWNSAMPLING)} or {(size // DOWNSAMPLING + 1) * DOWNSAMPLING}"
        )
    if size > limit:
        raise ConfigError(f"image.size_px: {size} is larger than limits.max_size_px = {limit}")


def _check_experiments(study: settings.Study) -> None:
    """Config errors of the experiments block (sizes larger than the train split, bad names)."""
    train = study.splits["train"]
    epochs, width = study.training.epochs, study.training.width
    for name, spec in study.experiments.items():
        key = f"experiments.{name}"
        series = match_domains(study, spec.domains, f"{key}.domains")
        for list_key in ("sources", "targets"):
            if getattr(spec, list_key) is not None:
                chosen = match_domains(study, getattr(spec, list_key), f"{key}.{list_key}")
                outside = [d for d in chosen if d not in series]
                if outside:
                    raise ConfigError(f"{key}.{list_key}: {outside} are not in the series ({key}.domains)")
                adabn_only = list_key == "targets" and spec.baseline is None
                adabn_only &= all(methods.method_name(m) == "adabn" for m in spec.methods)
                for domain in chosen:
                    _check_trainable(study, domain, f"{key}.{list_key}", images_only=adabn_only)
        for domain in series:
            _check_micrograph_split(study, domain, "val", f"{key}.domains")
        resolved = []
        for i, entry in enumerate(spec.methods):
            try:
                method = methods.resolve(entry, f"{key}.methods[{i}]", epochs, width)
            except ValueError as error:
                raise ConfigError(str(error)) from None
            if method in resolved:
                raise ConfigError(f"{key}.methods[{i}]: {entry!r} is listed twice")
            resolved.append(method)
        for size in spec.transfer_sizes:
            if size > train and not all(is_micrograph(study, t) for t in transfer_targets(study, spec, key)):
                raise ConfigError(
                    f"{key}.transfer_sizes: {size} is larger than the train split (splits.train = {train})"
                )
        for mix in spec.baseline.mixtures if spec.baseline else ():
            if max(mix) > train or sum(mix) == 0:
                raise ConfigError(
                    f"{key}.baseline.mixtures: {mix} needs 1..{train} images per domain (splits.train = {train})"
                )


def _check_trainable(study: settings.Study, name: str, key: str, images_only: bool = False) -> None:
    """A domain trained on (a source, target or baseline member) needs pixel labels (not for
    ``images_only``: the targets of adabn alone) and, if made of micrographs, at least one file in
    its train and val splits."""
    if not images_only and not has_pixel_labels(study, name):
        kind = study.domains[name].micrographs["label_kind"]
        raise ConfigError(
            f"{key}: domain {name!r} has {'only boxes' if kind == 'boxes' else 'no labels'} "
            f"(domains.{name}.micrographs): it can be an evaluation domain of the series or the target of an "
            "experiment whose only method is adabn (and no baseline), not trained on"
        )
    for split in ("train", "val"):
        _check_micrograph_split(study, name, split, key)


def _check_micrograph_split(study: settings.Study, name: str, split: str, key: str) -> None:
    if not is_micrograph(study, name):
        return
    spec = study.domains[name].micrographs
    counts = micrographs.split_counts(spec["splits"], len(spec["files"]))
    if counts[split] == 0:
        raise ConfigError(
            f"domains.{name}.micrographs.splits: no file of its {len(spec['files'])} falls in the {split} split "
            f"({', '.join(f'{s} {n}' for s, n in counts.items())} files), which {key} needs"
        )


def _check_sizes(study: settings.Study) -> None:
    """Estimated job count and file sizes against ``limits`` (before Snakemake builds its DAG)."""
    limits, sim, image = study.limits, study.simulation, study.image
    gpts = int(round(optics.cell_A(image) / sim.sampling_A))
    wave_bytes = float(sim.frozen_phonons) * gpts**2 * 8  # complex64
    dataset_bytes = float(sum(study.splits.values())) * image.size_px**2 * 5  # float32 image + uint8 label
    for key, size in (("simulation.shard_size", sim.shard_size * wave_bytes), ("image.size_px", dataset_bytes)):
        if size > limits["max_file_GB"] * 1e9:
            what = "exit-wave shard" if key.startswith("simulation") else "domain dataset"
            raise ConfigError(
                f"{key}: one {what} file would hold about {size / 1e9:.3g} GB, more than "
                f"limits.max_file_GB = {limits['max_file_GB']}"
            )
    jobs = {
        f"structure_sets.{name}.n_structures": 2 * -(-spec.n_structures // sim.shard_size)
        for name, spec in study.structure_sets.items()
    }
    jobs["domains"] = len(study.domains)
    for name in study.experiments:
        jobs[f"experiments.{name}"] = experiment_grid(study, name).jobs()
    total = sum(jobs.values())
    if total > limits["max_jobs"]:
        largest = max(jobs, key=jobs.get)
        raise ConfigError(
            f"{largest}: the study makes about {total:.3g} jobs ({jobs[largest]:.3g} from {largest}), "
            f"more than limits.max_jobs = {limits['max_jobs']}"
        )


@dataclasses.dataclass(frozen=True)
class Grid:
    """An experiment's grid axes, resolved: :mod:`emsim.study.experiments` expands them into
    models, :func:`_check_sizes` counts them (without expanding, for huge studies)."""

    series: list[str]
    sources: list[str]
    pairs: list[tuple[str, str]]  # ordered (source, target), source != target
    pretrain_lrs: list[float]
    variants: list[tuple[dict, str]]  # (resolved method, frozen part): finetune crossed with freeze
    sizes: list[int]
    lr_pairs: list[list[float]]
    seeds: range
    baseline_pairs: list[tuple[str, str]]  # unordered, in series order
    baseline_points: list[tuple[list[int], float]]  # (mixture, lr)

    def jobs(self) -> int:
        """Models plus evaluation groups (one per pretraining source, transfer pair, baseline pair)."""
        reps = len(self.seeds)
        pretrain = len(self.sources) * len(self.pretrain_lrs) * reps
        transfer = len(self.pairs) * len(self.variants) * len(self.sizes) * len(self.lr_pairs) * reps
        baseline = len(self.baseline_pairs) * len(self.baseline_points) * reps
        return pretrain + transfer + baseline + len(self.sources) + len(self.pairs) + len(self.baseline_pairs)


def experiment_grid(study: settings.Study, name: str) -> Grid:
    """The grid of experiment ``name`` (config errors name ``experiments.<name>.<key>``)."""
    spec, key = study.experiments[name], f"experiments.{name}"
    series = match_domains(study, spec.domains, f"{key}.domains")
    sources = match_domains(study, spec.sources, f"{key}.sources")
    targets = transfer_targets(study, spec, key)
    pairs = [(s, t) for s in sources for t in targets if s != t]
    variants = []
    for i, entry in enumerate(spec.methods):
        try:
            method = methods.resolve(entry, f"{key}.methods[{i}]", study.training.epochs, study.training.width)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        variants += [(method, f) for f in spec.freeze] if method["name"] == "finetune" else [(method, "none")]
    baseline = spec.baseline
    return Grid(
        series=series,
        sources=sources,
        pairs=pairs,
        pretrain_lrs=sorted({lrs[0] for lrs in spec.lr_pairs}),
        variants=variants,
        sizes=list(spec.transfer_sizes),
        lr_pairs=[list(lrs) for lrs in spec.lr_pairs],
        seeds=range(spec.replicates),
        baseline_pairs=list(dict.fromkeys(tuple(sorted(p, key=series.index)) for p in pairs)) if baseline else [],
        baseline_points=list(itertools.product(map(list, baseline.mixtures), baseline.lrs)) if baseline else [],
    )
