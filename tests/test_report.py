"""Per-model table (hand-computed derived columns) and figures of small synthetic studies."""

import logging
import math

import numpy as np
import pandas as pd
import pytest
from figure_content import check
from synthetic import disc_domain as make_domain
from synthetic import evaluation_record as record
from synthetic import untrained_model as make_model

from emsim.learning import particles
from emsim.learning.evaluate import read_evaluation, write_evaluation
from emsim.report import figures
from emsim.report.figures import (
    _groups,
    plot_examples,
    plot_ood_profile,
    plot_size_distributions,
    plot_target_loss,
    plot_training_curves,
    plot_transfer_heatmap,
)
from emsim.report.table import domain_order, model_table, write_table


@pytest.fixture()
def hand_study():
    pre = record(
        "runs/pre.pt",
        {"experiment": "df", "stage": "pretrain", "source": "A", "target": "A", "pretrained": None, "seed": 0},
        {"A": 0.2, "B": 0.5},
        {"train": 0.1, "test": 0.25},
    )
    tr = record(
        "runs/tr.pt",
        {
            "experiment": "df",
            "stage": "transfer",
            "source": "A",
            "target": "B",
            "freeze": "none",
            "size": 64,
            "lr_pretrain": 1e-3,
            "lr_transfer": 1e-4,
            "pretrained": "./runs/pre.pt",
            "seed": 0,
        },
        {"A": 0.3, "B": 0.25},
        {"train": 0.15, "test": 0.27},
    )
    baselines = [
        record(
            f"runs/bl{i}.pt",
            {
                "experiment": "df",
                "stage": "baseline",
                "source": "A",
                "target": "B",
                "mix": [128, 384],
                "pretrained": None,
                "seed": i,
            },
            {"A": 0.2, "B": ce},
            {"train": 0.1, "test": ce},
        )
        for i, ce in enumerate((0.4, 0.3))
    ]
    return [pre, tr, *baselines]


def test_table_columns_and_derived_values(hand_study):
    table = model_table(hand_study, {"B": 5.0, "A": -5.0})
    assert len(table) == 4
    pre, tr, bl = (table.iloc[i] for i in (0, 1, 2))
    for column in (
        "model",
        "experiment",
        "stage",
        "source",
        "target",
        "freeze",
        "size",
        "lr_pretrain",
        "lr_transfer",
        "seed",
        "mix",
        "pretrained",
        "seeds__init",
        "seeds__data",
        "best_epoch",
        "train_time_s",
        "trainable_params",
        "epochs",
        "source_value",
        "target_value",
        "target_train_ce",
        "target_test_iou",
        "val_dice__A",
        "before_val_ce__B",
        "before_target_val_ce",
        "ood_gap__A",
        "target_val_study_loss",
        "val_study_loss__A",
        "before_target_val_study_loss",
    ):
        assert column in table, column
    # domains ordered by their value: A (-5) before B (5)
    assert [c for c in table if c.startswith("val_ce__")] == ["val_ce__A", "val_ce__B"]
    assert bl["mix"] == "128:384" and tr["target_value"] == 5.0 and tr["epochs"] == 2
    assert tr["target_val_ce"] == 0.25 and tr["target_test_ce"] == 0.27
    assert tr["before_val_ce__A"] == 0.2 and tr["before_target_val_ce"] == 0.5
    assert tr["before_val_iou__B"] == pytest.approx(0.5)
    assert tr["id_gap"] == pytest.approx(0.10)
    assert tr["ood_gap__A"] == pytest.approx(0.05) and tr["ood_gap__B"] == 0
    assert tr["ood_spread"] == pytest.approx(0.025)
    assert tr["forgetting"] == pytest.approx(0.10)
    assert tr["gain_vs_pretrain"] == pytest.approx(0.25)
    assert tr["gain_vs_baseline"] == pytest.approx(0.35 - 0.25)
    assert pre["id_gap"] == pytest.approx(0.1)
    for row in (pre, bl):
        for column in (
            "before_target_val_ce",
            "before_val_ce__A",
            "forgetting",
            "gain_vs_pretrain",
            "gain_vs_baseline",
        ):
            assert math.isnan(row[column]), column
    assert math.isnan(pre["target_train_ce"]) is False and math.isnan(tr["val_ce__A"]) is False


def test_negative_transfer_and_no_baseline(hand_study):
    pre, tr = hand_study[:2]
    tr["metrics"]["B"]["val"]["cross_entropy"] = 0.6  # worse than the pretrained model's 0.5
    table = model_table([pre, tr])
    assert table.iloc[1]["gain_vs_pretrain"] == pytest.approx(-0.1)
    assert math.isnan(table.iloc[1]["gain_vs_baseline"])


def test_missing_pretrained_record_gives_nan_and_warning(hand_study, caplog):
    with caplog.at_level(logging.WARNING):
        table = model_table(hand_study[1:])
    assert "runs/pre.pt" in caplog.text
    assert math.isnan(table.iloc[0]["before_target_val_ce"])
    assert math.isnan(table.iloc[0]["forgetting"])


def test_domain_order_categorical_and_unvalued():
    records = [{"metrics": {"x": {}, "Au small": {}, "Cu large": {}}}]
    assert domain_order(records) == ["x", "Au small", "Cu large"]
    assert domain_order(records, {"Cu large": "Cu, 2.5-3.5 nm", "Au small": "Au, 1-2 nm"}) == [
        "Cu large",
        "Au small",
        "x",
    ]


def test_write_table_and_json_round_trip(hand_study, tmp_path):
    write_evaluation(hand_study, tmp_path / "eval.json")
    records = read_evaluation(tmp_path / "eval.json")
    records[0]["metrics"]["A"]["val"]["iou"] = None  # as written for a NaN
    table = model_table(records)
    table["mixed"] = [1, "a", None, 2.5]
    write_table(table, tmp_path / "t.parquet", tmp_path / "t.csv")
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert list(back.columns) == list(table.columns)
    assert back["mixed"].tolist()[:2] == ["1", "a"]
    assert math.isnan(back["val_iou__A"][0])
    pd.testing.assert_series_equal(back["gain_vs_baseline"], table["gain_vs_baseline"])
    csv = pd.read_csv(tmp_path / "t.csv")
    assert csv["target_val_ce"].tolist() == pytest.approx(table["target_val_ce"].tolist())


def synthetic_study(seed: int = 0, replicates: int = 3, baselines: bool = True) -> list[dict]:
    """Defocus-like study: 5 domains, 2 sources, all transfers, freeze x size x lr grid."""
    rng = np.random.default_rng(seed)
    values = {f"df{v:+d}": float(v) for v in (-10, -5, 0, 5, 10)}

    def ce(trained_on, d):
        return 0.1 + 0.02 * abs(values[trained_on] - values[d]) + rng.uniform(0, 0.03)

    records = []
    for source in ("df-5", "df+5"):
        for s in range(replicates):
            pre_path = f"pre_{source}_{s}.pt"
            records.append(
                record(
                    pre_path,
                    {
                        "experiment": "defocus",
                        "stage": "pretrain",
                        "source": source,
                        "target": source,
                        "pretrained": None,
                        "seed": s,
                    },
                    {d: ce(source, d) for d in values},
                    {"train": 0.08, "test": 0.12},
                    epochs=4,
                )
            )
            for target in values:
                if target == source:
                    continue
                for freeze in ("encoder", "decoder", "none"):
                    for size in (64, 128):
                        for lrs in ((1e-3, 1e-4), (1e-4, 1e-5)):
                            tags = {
                                "experiment": "defocus",
                                "stage": "transfer",
                                "source": source,
                                "target": target,
                                "freeze": freeze,
                                "size": size,
                                "lr_pretrain": lrs[0],
                                "lr_transfer": lrs[1],
                                "seed": s,
                                "pretrained": pre_path,
                            }
                            records.append(
                                record(
                                    f"tr_{len(records)}.pt",
                                    tags,
                                    {d: ce(target, d) * 1.1 for d in values},
                                    {"train": 0.09, "test": 0.13},
                                    epochs=4,
                                )
                            )
    if baselines:
        for s in range(replicates):
            tags = {
                "experiment": "defocus",
                "stage": "baseline",
                "source": "df-5",
                "target": "df+10",
                "mix": [128, 128],
                "seed": s,
                "pretrained": None,
            }
            records.append(
                record(f"bl_{s}.pt", tags, {d: ce("df+10", d) for d in values}, {"train": 0.1, "test": 0.1}, epochs=6)
            )
    return records, values


@pytest.mark.parametrize("replicates, baselines", [(3, True), (1, False)])
def test_figures_of_full_and_tiny_studies(tmp_path, replicates, baselines):
    """Each figure shows its panels, the study's groups with their model counts, and ink."""
    records, values = synthetic_study(replicates=replicates, baselines=baselines)
    table = model_table(records, values)
    transfers, baseline = 96 * replicates, ("baseline",) if baselines else ()
    panels = ("transfer set size", "frozen part", "learning rate: pretrain → transfer", *baseline)
    check(plot_target_loss(table, tmp_path / "target_loss"), 3, (f"({transfers} models)", *panels))
    check(plot_transfer_heatmap(table, tmp_path / "heatmap"), 3, ("before transfer", "after transfer", "df+10"))
    groups = [f"pretrain only (n={2 * replicates})"]
    groups += [f"transfer, {part} frozen (n={32 * replicates})" for part in ("nothing", "encoder", "decoder")]
    groups += [f"single-stage baseline (n={replicates})"] if baselines else []
    ood = check(plot_ood_profile(table, tmp_path / "ood", values, "defocus (nm)"), 1, ("defocus (nm)", *groups))
    assert baselines or not any("baseline" in t for t in ood.texts)
    stages = (f"pretrain ({2 * replicates} models)", f"transfer ({transfers} models)")
    stages += (f"baseline ({replicates} models)",) if baselines else ()
    check(plot_training_curves(records, tmp_path / "curves"), len(stages), stages)


def test_loss_figures_plot_the_chosen_metric(tmp_path):
    records, values = synthetic_study(replicates=1)
    table = model_table(records, values)
    transfer = table[table["stage"] == "transfer"]
    [(_, study)] = [g for g in _groups(transfer, "freeze", "study_loss") if g[0] == "nothing"]
    [(_, ce)] = [g for g in _groups(transfer, "freeze", "ce") if g[0] == "nothing"]
    assert np.allclose(study, ce / 2)
    for plot, args in (
        (plot_target_loss, ()),
        (plot_transfer_heatmap, ()),
        (plot_ood_profile, (values, "defocus (nm)")),
    ):
        content = check(plot(table, tmp_path / plot.__name__, *args, metric="study_loss"), texts=("study loss",))
        assert not any("cross-entropy" in t for t in content.texts)
    with pytest.raises(ValueError, match="no loss figure for metric 'iou'"):
        plot_target_loss(table, tmp_path / "x", "iou")


def test_figures_without_transfers_or_tags(tmp_path, hand_study):
    pre = hand_study[0]
    table = model_table([pre])
    check(plot_target_loss(table, tmp_path / "target_loss"), min_ink=0.001)
    check(plot_transfer_heatmap(table, tmp_path / "heatmap"), min_ink=0.001)
    check(
        plot_ood_profile(table, tmp_path / "ood", {"A": "Au small", "B": "Cu"}), 1, ("pretrain only (n=1)", "Au small")
    )
    pre["history"] = []
    check(plot_training_curves([pre], tmp_path / "curves"), min_ink=0.001)


def test_svg_is_reproducible(tmp_path):
    records, values = synthetic_study(replicates=1)
    table = model_table(records, values)
    plot_target_loss(table, tmp_path / "a")
    plot_target_loss(table, tmp_path / "b")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_examples_figure(tmp_path):
    datasets = {name: make_domain(tmp_path / f"{name}.h5", name, seed) for name, seed in (("a", 1), ("b", 2))}
    model = make_model(tmp_path / "m.pt", 0)
    panels = ("image", "true label", "prediction", "particles", "(64 x 64 px)")
    content = check(plot_examples(model, datasets, tmp_path / "examples", device="cpu"), 8, panels, min_ink=0.2)
    assert {"a", "b"} <= set(content.texts)  # one row of 4 panels per domain
    with pytest.raises(ValueError, match="no index 9"):
        plot_examples(model, datasets, tmp_path / "examples", index=9, device="cpu")


def test_size_distribution_figure(tmp_path):
    true = particles.size_histogram([1.0, 1.1, 2.0])
    records = [
        {
            "path": f"{stage}.pt",
            "tags": {"stage": stage, "target": "A"},
            "metrics": {
                "A": {"val": {"size_histogram": {"true": true, "pred": particles.size_histogram(pred)}}},
                "B": {"val": {"ce": 0.3}},
            },
        }
        for stage, pred in (("pretrain", [1.0, 3.0]), ("baseline", [12.0]))
    ]
    assert particles.size_histogram([12.0])[-1] == 1 and sum(true) == 3  # larger sizes in the last bin
    texts = ("particle size [nm]", "pretrain only (2)", "single-stage baseline (1)", "true (3)")
    check(plot_size_distributions(records, tmp_path / "sizes"), 1, texts)
    for entry in records:
        del entry["metrics"]["A"]
    assert plot_size_distributions(records, tmp_path / "none") == []


def method_study():
    pre = record("pre.pt", {"experiment": "m", "stage": "pretrain", "source": "A", "target": "A"}, {"A": 0.2, "B": 0.6})
    rows = [pre]
    for method, params, size, ce, trainable in (
        ("finetune", "", 8, 0.30, 1000),
        ("finetune", "", 16, 0.25, 1000),
        ("lora", "rank=4 alpha=8", 8, 0.35, 100),
        ("lora", "rank=4 alpha=8", 16, 0.20, 100),
        ("scratch", "", 8, 0.50, 1000),
        ("scratch", "", 16, 0.40, 1000),
    ):
        tags = {
            "experiment": "m",
            "stage": "transfer",
            "source": "A",
            "target": "B",
            "freeze": "none" if method == "finetune" else None,
            "method": method,
            "method_params": params,
            "size": size,
            "pretrained": None if method == "scratch" else "pre.pt",
        }
        r = record(f"{method}{size}.pt", tags, {"A": 0.2 + ce / 10, "B": ce})
        r["trainable_params"] = trainable
        rows.append(r)
    return rows


def test_method_columns_gain_over_scratch_and_method_figures(tmp_path):
    table = model_table(method_study())
    tr = table.set_index("model")
    assert tr.loc["lora16.pt", "gain_vs_scratch"] == pytest.approx(0.40 - 0.20)
    assert tr.loc["finetune8.pt", "gain_vs_scratch"] == pytest.approx(0.50 - 0.30)
    assert tr.loc["scratch8.pt", "gain_vs_scratch"] == pytest.approx(0.0)
    assert math.isnan(tr.loc["pre.pt", "gain_vs_scratch"])
    assert tr.loc["lora8.pt", "method_params"] == "rank=4 alpha=8"
    assert figures.method_label(tr.loc["lora8.pt"]) == "lora rank=4 alpha=8"
    assert figures.method_label(tr.loc["finetune8.pt"]) == "finetune, nothing frozen"
    assert math.isnan(tr.loc["scratch8.pt", "forgetting"]) and math.isnan(tr.loc["scratch8.pt", "gain_vs_pretrain"])
    methods = ("finetune, nothing frozen (n=2)", "lora rank=4 alpha=8 (n=2)")
    check(figures.plot_method_cost(table, tmp_path / "cost"), 2, (*methods, "scratch (n=2)", "Pareto frontier"))
    content = check(figures.plot_forgetting_vs_gain(table, tmp_path / "forgetting"), 1, methods)
    assert not any("scratch" in t for t in content.texts)  # scratch models have no source to forget
    check(figures.plot_gain_vs_scratch(table, tmp_path / "scratch"), 1, (*methods, "gain over scratch"))


def test_pareto_front_keeps_the_points_nothing_beats_in_cost_and_loss():
    cost = np.array([100, 1000, 100, 10, 1000, 500])
    loss = np.array([0.3, 0.2, 0.35, 0.5, 0.25, 0.3])
    assert figures.pareto_front(cost, loss).tolist() == [3, 0, 1]
