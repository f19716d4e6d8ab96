"""Findings statistics on small synthetic tables with hand-computed answers; the study's tables'
column mapping on miniature copies of their formats; the command line."""

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic import evaluation_record as record

from emsim.cli import main
from emsim.report.table import model_table
from emsim.study import findings as fd

DOMAINS = ["df-5", "df0", "df5"]
FACTS = pd.DataFrame(
    {"defocus_nm": [-5.0, 0.0, 5.0], "dose_e_per_A2": 400.0, "lattice": "CdSe_wurtzite"}, index=DOMAINS
)


def transfer(target="df5", loss=0.1, source="df-5", **tags) -> dict:
    row = {
        "stage": "transfer",
        "source": source,
        "target": target,
        "freeze": "none",
        "size": 64,
        "lr_pretrain": 1e-3,
        "lr_transfer": 1e-4,
        "target_val_ce": loss,
    }
    return row | tags


def test_by_size_medians_iqr_and_verdict():
    rows = [transfer(size=64, loss=v) for v in (0.1, 0.2, 0.3, 0.4, 0.5)]
    rows += [transfer(size=512, loss=v) for v in (0.1, 0.15, 0.2)]
    rows += [
        {**transfer(size=512, loss=9.0), "stage": "pretrain"},  # not a transfer model
        transfer(target="df0", size=512, loss=9.0),
    ]  # excluded target
    stats = fd.by_size(pd.DataFrame(rows), exclude=["df0"])
    assert stats["n"].tolist() == [5, 3]
    assert stats["median"].tolist() == pytest.approx([0.3, 0.15])
    assert stats["iqr"].tolist() == pytest.approx([0.2, 0.05])
    assert fd.verdict(fd.judge_size(stats)[1]) == "agree"
    assert fd.verdict(fd.judge_size(stats.iloc[::-1])[1]) == "disagree"


def test_by_freeze_verdict():
    table = pd.DataFrame(
        [
            transfer(freeze="none", loss=0.10),
            transfer(freeze="decoder", loss=0.11),
            transfer(freeze="encoder", loss=0.13),
        ]
    )
    stats = fd.by_freeze(table)
    assert stats.loc["encoder", "median"] == pytest.approx(0.13)
    assert fd.verdict(fd.judge_freeze(stats)[1]) == "agree"
    table.loc[1, "target_val_ce"] = 0.2  # decoder worse than encoder
    assert fd.verdict(fd.judge_freeze(fd.by_freeze(table))[1]) == "disagree"


def test_by_lr_pair_verdict():
    losses = {(1e-3, 1e-4): 0.10, (1e-3, 1e-5): 0.12, (1e-4, 1e-4): 0.11, (1e-4, 1e-5): 0.15}
    table = pd.DataFrame([transfer(lr_pretrain=a, lr_transfer=b, loss=v) for (a, b), v in losses.items()])
    stats = fd.by_lr_pair(table)
    assert stats.loc[(1e-4, 1e-5), "median"] == pytest.approx(0.15)
    text, margin = fd.judge_lr(stats)
    assert fd.verdict(margin) == "agree" and text.index("(1e-3, 1e-4)") < text.index("(1e-4, 1e-5)")
    table.loc[3, "target_val_ce"] = 0.05
    assert fd.verdict(fd.judge_lr(fd.by_lr_pair(table))[1]) == "disagree"


def test_by_domain_and_in_focus_verdict():
    table = pd.DataFrame(
        [
            transfer(**{"val_ce__df-5": a, "val_ce__df0": b, "val_ce__df5": c})
            for a, b, c in ((0.1, 0.5, 0.2), (0.3, 0.7, 0.2), (0.2, 0.6, 0.2))
        ]
    )
    medians = fd.by_domain(table)
    assert medians.to_dict() == pytest.approx({"df-5": 0.2, "df0": 0.6, "df5": 0.2})
    assert fd.verdict(fd.judge_domain(medians, "df0")[1]) == "agree"
    assert fd.verdict(fd.judge_domain(medians, "df5")[1]) == "disagree"
    close = medians.copy()
    close["df5"] = 0.5  # hardest, but not by far
    assert fd.verdict(fd.judge_domain(close, "df0")[1]) == "disagree"


def test_spread_before_after_per_pair():
    def row(target, before, after):
        return transfer(
            target=target,
            **{f"before_val_ce__{d}": v for d, v in zip(DOMAINS, before)},
            **{f"val_ce__{d}": v for d, v in zip(DOMAINS, after)},
        )

    table = pd.DataFrame([row("df5", (0.1, 9.0, 0.3), (0.2, 9.0, 0.2)), row("df0", (0.1, 9.0, 0.5), (0.1, 9.0, 0.4))])
    spreads = fd.spread(table, exclude=["df0"])
    # before: medians over the source's models 0.1 and 0.4 -> std 0.15; after df5: 0; after df0: 0.15
    assert spreads.loc[("df-5", "df5")].tolist() == pytest.approx([0.15, 0.0])
    assert spreads.loc[("df-5", "df0")].tolist() == pytest.approx([0.15, 0.15])
    text, margin = fd.judge_spread(spreads)
    assert fd.verdict(margin) == "measured" and "before 0.15, after 0.075; narrower for 50% of pairs" in text


def test_dose_and_lattice_by_target():
    facts = pd.DataFrame(
        {
            "defocus_nm": -10.0,
            "dose_e_per_A2": [30.0, 300.0, 300.0],
            "lattice": ["C_diamond", "CdSe_wurtzite", "Cu_fcc"],
        },
        index=["a", "b", "c"],
    )
    table = pd.DataFrame(
        [transfer(target="a", loss=0.5), transfer(target="b", loss=0.1), transfer(target="c", loss=0.3)]
    )
    doses = fd.by_target_fact(table, facts, "dose_e_per_A2")
    assert doses.to_dict() == pytest.approx({30.0: 0.5, 300.0: 0.2})
    assert fd.verdict(fd.judge_dose(doses)[1]) == "agree"
    assert fd.verdict(fd.judge_dose(doses[::-1].set_axis(doses.index))[1]) == "disagree"
    lattices = fd.by_target_fact(table, facts, "lattice")
    assert fd.verdict(fd.judge_lattice(lattices)[1]) == "agree"
    assert fd.verdict(fd.judge_lattice(lattices.replace({0.5: 0.05}))[1]) == "disagree"  # C the easiest
    # no C_diamond target: the rule cannot be judged
    assert fd.verdict(fd.judge_lattice(lattices.rename({"C_diamond": "Si_diamond"}))[1]) == "inconclusive"
    assert fd.verdict(fd.judge_lattice(lattices.rename({"CdSe_wurtzite": "Ag_fcc"}).sort_index())[1]) == "inconclusive"


def test_findings_apply_by_series_and_exclude_in_focus():
    rows = [
        transfer(
            target=t,
            size=s,
            loss=v + (1.0 if t == "df0" else 0.0),
            **{f"val_ce__{d}": (0.9 if d == "df0" else 0.2) for d in DOMAINS},
        )
        for t in ("df5", "df0")
        for s, v in ((64, 0.3), (128, 0.2))
    ]
    results = fd.findings(pd.DataFrame(rows), FACTS)
    assert [r["finding"] for r in results] == ["F1", "F4"]  # one freeze, one LR pair
    assert "64: 0.3 " in results[0]["statistic"]  # df0 targets left out
    assert results[1]["verdict"] == "agree"
    assert (
        fd.findings(pd.DataFrame(rows), FACTS.drop(index="df0").assign(defocus_nm=1.0))[-1]["finding"] == "F1"
    )  # no varied defocus: no F4
    with pytest.raises(ValueError, match="target_val_study_loss"):
        fd.findings(pd.DataFrame(rows), FACTS, metric="study_loss")


def test_findings_on_emsim_model_table():
    """The statistics read the columns model_table writes (before and after transfer)."""
    pre = record(
        "pre.pt", {"stage": "pretrain", "source": "df-5", "target": "df-5"}, {"df-5": 0.1, "df0": 0.8, "df5": 0.5}
    )
    records = [pre] + [
        record(
            f"t{i}.pt",
            {
                "stage": "transfer",
                "source": "df-5",
                "target": "df5",
                "freeze": "none",
                "size": size,
                "pretrained": "pre.pt",
            },
            {"df-5": 0.2, "df0": 0.9, "df5": loss},
        )
        for i, (size, loss) in enumerate(((2, 0.3), (4, 0.25)))
    ]
    table = model_table(records, {"df-5": -5, "df0": 0, "df5": 5})
    names = {r["finding"]: r for r in fd.findings(table, FACTS)}
    assert set(names) == {"F1", "F4", "F5"}
    assert names["F4"]["verdict"] == "agree"
    # before: std(0.1, 0.5) = 0.2; after: std(0.2, 0.275) = 0.0375
    assert fd.spread(table, exclude=["df0"]).iloc[0].tolist() == pytest.approx([0.2, 0.0375])


class Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def test_pickle_tables_are_unpickled_restricted(tmp_path):
    good, bad = tmp_path / "good.pkl", tmp_path / "bad.pkl"
    pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}).to_pickle(good)
    assert fd.read_pickle_table(good)["b"].tolist() == ["x", "y"]
    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        fd.read_pickle_table(bad)
    bad.write_bytes(pickle.dumps(np.zeros(2)))
    with pytest.raises(ValueError, match="bad.pkl: holds a ndarray"):
        fd.read_pickle_table(bad)


def study_files(folder):
    """Miniature copies of the study's three tables, in their own formats."""
    defocus = pd.DataFrame(
        {
            "pretrain_lr": [1e-3, 1e-4],
            "transfer_lr": [1e-4, 1e-5],
            "pretrain_defocus": [-50, 0],
            "transfer_defocus": [0, -50],
            "N_tl_training_points": [64, 128],
            "freeze_option": ["none", "encoder"],
            "best_target_pretrain_performance": [0.3, 0.2],
            "best_target_transfer_performance": [0.2, 0.1],
            "best_pretrain_val_-50": [0.1, 0.2],
            "best_pretrain_val_0": [0.3, 0.4],
            "best_transfer_performance_-50": [0.15, 0.1],
            "best_transfer_performance_0": [0.2, 0.3],
        }
    )
    history = {"train": [1.0, 0.9], "validation_30": [0.8, 0.9], "validation_600": [0.5, 0.4]}
    dose = pd.DataFrame(
        {
            "freezing_mode": ["decoder"],
            "pretrain_dose": [30],
            "transfer_dose": [600],
            "pretrain_lr": [1e-4],
            "transfer_lr": [1e-5],
            "pretrain_history": [history],
            "transfer_history": [history],
        }
    )
    structure = pd.DataFrame(
        {
            "freezing_mode": ["none"],
            "pretrain_structure": ["dc_C_small"],
            "transfer_structure": ["w_CdSe_large"],
            **{
                f"best_{stage}_performance_validation_{s}": [v + (0.1 if stage == "pretrain" else 0)]
                for stage in ("pretrain", "transfer")
                for s, v in (("dc_C_small", 0.5), ("w_CdSe_large", 0.4))
            },
        }
    )
    for (name, _), table in zip(fd.STUDY_FILES.values(), (defocus, dose, structure)):
        table.to_pickle(folder / name)


def test_load_study_maps_columns(tmp_path):
    study_files(tmp_path)
    tables = fd.load_study(tmp_path)
    defocus, facts = tables["defocus"]
    assert defocus[["source", "target"]].values.tolist() == [["df-5", "df0"], ["df0", "df-5"]]
    assert facts.loc["df-5", "defocus_nm"] == -5.0
    assert defocus["before_val_study_loss__df0"].tolist() == [0.3, 0.4]  # already offset
    dose, facts = tables["dose"]
    row = dose.iloc[0]
    # pretrain best epoch (own domain dose30): 0; transfer best epoch (dose600): 1
    assert row["before_val_study_loss__dose600"] == pytest.approx(0.5 - fd.STUDY_OFFSET)
    assert row["target_val_study_loss"] == pytest.approx(0.4 - fd.STUDY_OFFSET)
    assert facts["dose_e_per_A2"].tolist() == [30.0, 600.0]
    structure, facts = tables["structure"]
    assert structure.loc[0, "target"] == "str_CdSe_wurtzite_large"
    assert structure.loc[0, "target_val_study_loss"] == pytest.approx(0.4 - fd.STUDY_OFFSET)
    assert structure.loc[0, "before_target_val_study_loss"] == pytest.approx(0.5 - fd.STUDY_OFFSET)
    assert facts.loc["str_C_diamond_small", "lattice"] == "C_diamond"
    (tmp_path / "mini_df.pkl").unlink()
    with pytest.raises(FileNotFoundError, match="mini_df.pkl"):
        fd.load_study(tmp_path)


def test_scores_are_judged_as_one_minus_score():
    """det_f1 (higher is better) enters the rules as 1 - det_f1; a loss metric is kept."""
    table = pd.DataFrame(
        [
            transfer(target=t, loss=0.0, **{"target_val_det_f1": f1, "val_det_f1__a": f1, "before_val_det_f1__a": 0.5})
            for t, f1 in (("a", 0.2), ("b", 0.9), ("c", 0.6))
        ]
    )
    losses, metric = fd.as_losses(table, "det_f1")
    assert metric == "1-det_f1"
    assert losses["target_val_1-det_f1"].tolist() == pytest.approx([0.8, 0.1, 0.4])
    assert losses["before_val_1-det_f1__a"].tolist() == pytest.approx([0.5] * 3)
    assert "target_val_det_f1" not in losses and losses["target_val_ce"].tolist() == [0.0] * 3
    assert fd.as_losses(table, "ce")[0] is table
    facts = pd.DataFrame(
        {"defocus_nm": -10.0, "dose_e_per_A2": 300.0, "lattice": ["C_diamond", "CdSe_wurtzite", "Cu_fcc"]},
        index=["a", "b", "c"],
    )
    (f7,) = [r for r in fd.findings(table, facts, "det_f1") if r["finding"] == "F7"]
    assert f7["verdict"] == "agree" and f7["statistic"].startswith(
        "median target loss, easiest first: CdSe_wurtzite 0.1"
    )


def test_markdown_block_is_read_and_written_in_place(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- findings:v:ce -->\nold\n<!-- /findings:v:ce -->\nrest\n")
    fd.write_block(doc, "v:ce", "| new |")
    assert doc.read_text() == "intro\n<!-- findings:v:ce -->\n| new |\n<!-- /findings:v:ce -->\nrest\n"
    assert fd.read_block(doc, "v:ce") == "| new |"
    with pytest.raises(ValueError, match=r"doc.md: needs one block <!-- findings:v:det_f1 -->"):
        fd.read_block(doc, "v:det_f1")


def test_command_line(tmp_path, capsys):
    study_files(tmp_path)
    assert main(["findings", "--study", str(tmp_path), "--bootstrap", "0"]) == 0
    assert capsys.readouterr().out.startswith("| experiment | finding |")
    report = tmp_path / "report"
    (report / "defocus").mkdir(parents=True)
    pd.DataFrame(
        [
            transfer(target="df10", source="df-10", size=s, loss=v, **{"val_ce__df10": v})
            for s, v in ((2, 0.5), (4, 0.4))
        ]
    ).to_parquet(report / "defocus/models.parquet")
    assert main(["findings", str(report), "--configfile", "config/test.yaml", "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "| defocus | F1 |" in out and "2: 0.5 (IQR 0), 4: 0.4 (IQR 0) | 0 | disagree |" in out
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- findings:test:ce -->\n<!-- /findings:test:ce -->\n")
    args = ["findings", str(report), "--configfile", "config/test.yaml", "--bootstrap", "0", "--markdown", str(doc)]
    assert main(args) == 0
    assert fd.read_block(doc, "test:ce") == capsys.readouterr().out.strip()
    assert main(args[:-1] + [str(tmp_path / "missing.md")]) == 2  # checked before any work
    assert "missing.md" in capsys.readouterr().err
    kept = tmp_path / "kept"
    assert main(args[:-2] + ["--keep-tables", str(kept)]) == 0
    from_run = capsys.readouterr().out
    assert main(["findings", str(kept), *args[2:-2]]) == 0
    assert capsys.readouterr().out == from_run  # the kept tables give the same findings
    assert set(pd.read_parquet(kept / "defocus/models.parquet")) <= set(fd.TAGS) | {"target_val_ce", "val_ce__df10"}
    (report / "other").mkdir()
    (report / "defocus/models.parquet").rename(report / "other/models.parquet")
    assert main(["findings", str(report), "--configfile", "config/test.yaml"]) == 2
    assert "experiment 'other' is not in the study config" in capsys.readouterr().err


def test_shipped_study_tables_give_the_articles_numbers():
    """The converted tables (no download, no unpickler) against numbers read from the article's pickles."""
    tables = fd.shipped_study()
    assert {name: len(table) for name, (table, _) in tables.items()} == {
        "defocus": 7200,
        "dose": 180,
        "structure": 2457,
    }
    found = {(name, r["finding"]): r for name, (t, f) in tables.items() for r in fd.findings(t, f, fd.STUDY_METRIC)}
    assert "64: 0.0173 (IQR 0.00385), 128: 0.0161" in found[("defocus", "F1")]["statistic"]
    assert found[("defocus", "F4")]["verdict"] == "agree" and "df0 0.0797" in found[("defocus", "F4")]["statistic"]
    assert "30: 0.0607, 75: 0.0272, 150: 0.0186, 300: 0.0141, 600: 0.0125" in found[("dose", "F6")]["statistic"]
    assert found[("structure", "F7")]["statistic"].endswith("Si_diamond 0.0487, C_diamond 0.0975")
    assert found[("defocus", "F5")]["verdict"] == "measured"


def test_bootstrap_verdicts_have_three_outcomes():
    """A margin whose interval straddles 0 is inconclusive; clear ones agree or disagree."""
    assert fd.verdict(0.2, (0.1, 0.3)) == "agree" and fd.verdict(-0.2, (-0.3, -0.1)) == "disagree"
    assert fd.verdict(0.05, (-0.01, 0.1)) == "inconclusive" and fd.verdict(None) == "measured"
    rng = np.random.default_rng(0)
    rows = [
        transfer(size=size, loss=loss)
        for size, centre, sd in ((2, 0.5, 0.05), (4, 0.3, 0.01))  # lower and narrower with more data
        for loss in rng.normal(centre, sd, 40)
    ]
    clear = fd.findings(pd.DataFrame(rows), FACTS, "ce", bootstrap=100)[0]
    assert clear["finding"] == "F1" and clear["interval"][0] > 0 and clear["verdict"] == "agree"
    rows = [  # narrower with more data, but the medians' drop is lost in the noise
        transfer(size=size, loss=loss) for size, sd in ((2, 0.2), (4, 0.02)) for loss in rng.normal(0.4, sd, 20)
    ]
    noisy = fd.findings(pd.DataFrame(rows), FACTS, "ce", bootstrap=100)[0]
    assert noisy["interval"][0] < 0 < noisy["interval"][1] and noisy["verdict"] == "inconclusive"
    again = fd.findings(pd.DataFrame(rows), FACTS, "ce", bootstrap=100)[0]
    assert again["interval"] == noisy["interval"]  # seeded


def test_the_run_tables_in_the_docs_are_the_commands_output_on_the_kept_tables(capsys):
    """Every run block of docs/validation.md (``<!-- findings:<config stem>:<metric> -->``) is what
    ``emsim findings`` prints on that run's tables kept in docs/data/<config stem>."""
    root = Path(__file__).resolve().parents[1]
    doc = root / "docs/validation.md"
    blocks = re.findall(r"<!-- findings:([\w-]+):([\w-]+) -->", doc.read_text())
    assert len(blocks) >= 8  # the reduced study per pixel and per particle, and its two variants
    for stem, metric in blocks:
        config_file = str(root / "config" / f"{stem}.yaml")
        assert main(["findings", str(root / "docs/data" / stem), "--configfile", config_file, "--metric", metric]) == 0
        assert capsys.readouterr().out.strip() == fd.read_block(doc, f"{stem}:{metric}").strip(), (stem, metric)


def test_the_verdict_summary_is_generated_from_the_blocks():
    root = Path(__file__).resolve().parents[1]
    expected = fd.summary(root / "docs/validation.md", fd.SUMMARY_COLUMNS)
    assert fd.read_block(root / "docs/seed-study.md", "summary") == expected
    assert expected.count("\n") >= 7 and "| F7 | structure: agree |" in expected


def test_the_generated_study_table_in_the_docs_is_the_commands_output(capsys):
    block = fd.read_block(Path(__file__).resolve().parents[1] / "docs/validation.md", "study")
    assert main(["findings", "--study"]) == 0
    assert capsys.readouterr().out.strip() == block.strip()
