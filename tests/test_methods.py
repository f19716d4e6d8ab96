"""Transfer methods on tiny synthetic domains (64 px, width 0.125, CPU) and their study config."""

from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F
import yaml
from synthetic import CFG, LR

from emsim import data
from emsim.learning import adapters, methods, train
from emsim.learning.architecture import lora_max_rank
from emsim.learning.models import UNet, group_of, load_model
from emsim.study import config, experiments
from emsim.study.settings import EarlyStopping, Training

CFG2 = replace(CFG, epochs=2)


def group_sizes(model) -> dict[str, int]:
    return {g: sum(p.numel() for n, p in model.named_parameters() if group_of(n) == g) for g in methods.GROUPS}


def lora_params(model, rank) -> int:
    convs = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and not n.startswith("decoder.head")]
    return sum(rank * (c.in_channels * c.kernel_size[0] * c.kernel_size[1] + c.out_channels) for c in convs)


def resolved(entry, epochs=2):
    return methods.resolve(entry, "m", epochs, CFG.width)


EXPECTED_GROUPS = {  # method -> block groups whose pretrained weights change in a 2-epoch run
    "finetune": ("head", "decoder"),  # freeze: encoder
    "head": ("head",),
    "discriminative": methods.GROUPS,
    "lora": ("head",),  # plus the merged adapters: every other convolution changes
    "scratch": methods.GROUPS,
}


@pytest.mark.parametrize("name", list(EXPECTED_GROUPS))
def test_each_method_trains_exactly_its_parameters(disc_domains, pretrained, tmp_path, name):
    method = resolved({"method": name, "rank": 2} if name == "lora" else name)
    out = tmp_path / "t.pt"
    meta = train.transfer(
        pretrained[0], disc_domains["b"], out, replace(CFG2, epochs=2), LR, 1, freeze="encoder", size=6, method=method
    )
    before, after = load_model(pretrained[0])[0], load_model(out)[0]
    sizes = group_sizes(before)
    changed = {
        g
        for n, p in after.named_parameters()
        if n.endswith("weight") and not torch.equal(p, before.get_parameter(n))
        for g in [group_of(n)]
    }
    convs_only = {group_of(n + ".weight") for n, m in before.named_modules() if isinstance(m, torch.nn.Conv2d)}
    if name == "lora":
        assert changed == convs_only  # merged adapters change every convolution
        assert meta["trainable_params"] == sizes["head"] + lora_params(before, 2)
    elif name != "scratch":
        assert changed == set(EXPECTED_GROUPS[name])
    expected = {
        "finetune": sizes["head"] + sizes["decoder"],
        "head": sizes["head"],
        "discriminative": sum(sizes.values()),
        "scratch": sum(sizes.values()),
    }
    if name in expected:
        assert meta["trainable_params"] == expected[name]
    assert meta["total_params"] == sum(sizes.values())  # LoRA merged: a plain U-Net
    # BN statistics of block groups that do not train stay as pretrained
    frozen = [g for g in methods.GROUPS if g not in EXPECTED_GROUPS[name]]
    for n, buffer in after.named_buffers():
        if "running_mean" in n and group_of(n) in frozen:
            assert torch.equal(buffer, before.get_buffer(n)), n
    assert meta["images_seen"] == 12 and meta["peak_memory_MB"] > 0 and meta["method"] == method


def test_adabn_changes_only_running_statistics_to_the_target_batch_statistics(disc_domains, pretrained, tmp_path):
    out = tmp_path / "adabn.pt"
    meta = train.transfer(
        pretrained[0], disc_domains["b"], out, replace(CFG, batch_size=8), LR, 1, freeze="none", size=6, method="adabn"
    )
    before, after = load_model(pretrained[0])[0].state_dict(), load_model(out)[0]
    state = after.state_dict()
    differing = {k for k in before if not torch.equal(before[k], state[k])}
    assert differing and all(
        k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked") for k in differing
    )
    images = torch.from_numpy(data.standardize(data.read_split(disc_domains["b"], "train")[0][:6])).unsqueeze(1)
    stem = F.conv2d(images, state["encoder.conv1.weight"], stride=2, padding=3)  # one batch of all 6 images
    assert torch.allclose(state["encoder.bn1.running_mean"], stem.mean(dim=(0, 2, 3)), atol=1e-5)
    assert meta["history"] == [] and meta["best_epoch"] == 0 and meta["trainable_params"] == 0


def test_lora_conv_follows_the_peft_formula_and_merges_exactly():
    torch.manual_seed(0)
    base = torch.nn.Conv2d(8, 16, 3, 2, 1, bias=False)
    lora = adapters.LoRAConv2d(base, rank=3, alpha=6.0)
    torch.nn.init.normal_(lora.lora_B.weight)  # zero at init: make the update visible
    x = torch.randn(2, 8, 32, 32)
    a = F.conv2d(x, lora.lora_A.weight, stride=2, padding=1)
    expected = F.conv2d(x, base.weight, stride=2, padding=1) + 2.0 * F.conv2d(a, lora.lora_B.weight)
    assert torch.allclose(lora(x), expected, atol=1e-5)
    delta = torch.einsum("or,rikl->oikl", lora.lora_B.weight[:, :, 0, 0], lora.lora_A.weight) * 2.0
    assert torch.allclose(lora.delta(), delta, atol=1e-6)
    assert torch.allclose(lora.merged()(x), expected, atol=1e-4)


def test_lora_model_before_and_after_merging_gives_the_same_outputs():
    model = UNet(0.125, generator=torch.Generator().manual_seed(0)).eval()
    count = adapters.add_lora(model, 4, 8.0, torch.Generator().manual_seed(1))
    assert count == sum(isinstance(m, adapters.LoRAConv2d) for m in model.modules()) > 20
    for m in model.modules():
        if isinstance(m, adapters.LoRAConv2d):
            torch.nn.init.normal_(m.lora_B.weight, std=0.1)
    merged = adapters.merge_lora(model)
    assert not any(isinstance(m, adapters.LoRAConv2d) for m in merged.modules())
    assert set(merged.state_dict()) == set(UNet(0.125).state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), merged(x), atol=1e-4)


@pytest.mark.parametrize("width", [0.125, 0.5, 1.0])
def test_lora_max_rank_of_the_config_is_the_models_bound(width):
    model = UNet(width)
    bound = min(
        min(m.out_channels, m.in_channels * m.kernel_size[0] * m.kernel_size[1])
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d) and not n.startswith("decoder.head")
    )
    assert lora_max_rank(width) == bound


def test_gradual_unfreezing_follows_its_schedule(disc_domains, pretrained, tmp_path):
    method = methods.build(resolved({"method": "gradual", "start": "head", "every": 2}, 13))
    assert [len(method.trainable_groups(e)) for e in range(14)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    spec = resolved({"method": "gradual", "start": "decoder", "every": 1}, 6)
    meta = train.transfer(
        pretrained[0],
        disc_domains["b"],
        tmp_path / "g.pt",
        replace(CFG, epochs=6),
        LR,
        1,
        freeze="none",
        size=4,
        method=spec,
    )
    sizes = group_sizes(UNet(CFG.width))
    cumulative = [sum(sizes[g] for g in methods.GROUPS[: k + 2]) for k in range(6)]
    assert [r["trainable_params"] for r in meta["history"]] == cumulative


def test_discriminative_learning_rates_are_the_configured_ones_per_block(disc_domains, pretrained, tmp_path):
    spec = resolved({"method": "discriminative", "factor": 0.25})
    out = tmp_path / "d.pt"

    class Killed(Exception):
        pass

    def kill(epoch, record):
        raise Killed

    with pytest.raises(Killed):
        train.transfer(
            pretrained[0], disc_domains["b"], out, CFG2, LR, 1, freeze="none", size=4, method=spec, on_epoch_end=kill
        )
    groups = torch.load(f"{out}.ckpt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([LR * 0.25**i for i in range(len(methods.GROUPS))])
    names = [n for n, _ in UNet(CFG.width).named_parameters()]
    tensors = [sum(group_of(n) == g for n in names) for g in methods.GROUPS]
    assert [len(g["params"]) for g in groups] == tensors and all(tensors)


@pytest.mark.parametrize(
    "method", ["finetune", "head", "gradual", "discriminative", {"method": "lora", "rank": 2, "adabn": True}, "scratch"]
)
def test_resume_mid_training_is_exact_for_every_method(disc_domains, pretrained, tmp_path, method):
    spec = resolved(method, 3 if method != "gradual" else 6)
    cfg = replace(CFG, epochs=3 if method != "gradual" else 6)

    def run(out, **kwargs):
        train.transfer(
            pretrained[0], disc_domains["b"], out, cfg, LR, 2, freeze="encoder", size=4, method=spec, **kwargs
        )

    run(tmp_path / "full.pt")

    class Killed(Exception):
        pass

    def kill(epoch, record):
        if epoch == 1:
            raise Killed

    resumed = tmp_path / "resumed.pt"
    with pytest.raises(Killed):
        run(resumed, on_epoch_end=kill)
    epochs = []
    run(resumed, on_epoch_end=lambda e, r: epochs.append(e))
    assert epochs[0] == 2
    a, b = load_model(tmp_path / "full.pt")[0].state_dict(), load_model(resumed)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_stops_where_the_history_says(disc_domains, tmp_path):
    cfg = replace(CFG, epochs=5, early_stopping=EarlyStopping(patience=2, min_delta=100.0))  # only epoch 1 improves
    meta = train.pretrain(disc_domains["b"], tmp_path / "p.pt", cfg, LR, seed=0)
    assert [r["epoch"] for r in meta["history"]] == [1, 2, 3]
    assert meta["stopped_early_after"] == 3
    losses = [r["val_loss"] for r in meta["history"]]
    assert meta["best_epoch"] == 1 + losses.index(min(losses))  # selection still takes the lowest loss
    assert (
        train.pretrain(disc_domains["b"], tmp_path / "q.pt", replace(cfg, early_stopping=None), LR, seed=0)[
            "stopped_early_after"
        ]
        is None
    )
    with pytest.raises(ValueError, match="early_stopping"):
        Training.from_dict({**asdict(cfg), "early_stopping": {"patience": 0}})


def study(methods_list, epochs=6):
    raw = yaml.safe_load(open("config/test.yaml"))
    raw["training"]["epochs"] = epochs
    raw["experiments"]["defocus"]["methods"] = methods_list
    return raw


def test_methods_axis_expands_with_labels_tags_and_scratch_without_pretrained():
    loaded = config.load(study(["finetune", {"method": "lora", "rank": 2}, "scratch"]))
    transfer = [m for m in experiments.all_models(loaded).values() if m.stage == "transfer"]
    names = sorted(m.path.rsplit("/", 1)[1].split("_n")[0] for m in transfer)
    assert names == ["encoder", "lora-rank2-alpha4", "none", "scratch"]  # finetune x freeze [none, encoder]
    scratch = next(m for m in transfer if m.method["name"] == "scratch")
    assert scratch.pretrained_inputs == [] and scratch.lr == 1e-3 and scratch.tags["pretrained"] is None
    lora = next(m for m in transfer if m.method["name"] == "lora")
    assert lora.tags["method_params"] == "rank=2 alpha=4" and lora.tags["freeze"] is None
    default = experiments.all_models(config.load("config/test.yaml"))
    assert all(m.tags["method"] == "finetune" for m in default.values() if m.stage == "transfer")


@pytest.mark.parametrize(
    "entry, message",
    [
        ("freeze_all", r"methods\[0\].method: unknown method 'freeze_all'; allowed: finetune, head, gradual"),
        ({"method": "head", "rank": 2}, r"methods\[0\].rank: not a parameter of method 'head'; its parameters: adabn"),
        ({"method": "lora", "rank": 0}, r"methods\[0\].rank: must be an integer 1..8, got 0"),
        ({"method": "lora", "rank": 9}, r"methods\[0\].rank: must be an integer 1..8, got 9"),
        ({"method": "gradual", "every": 2}, r"methods\[0\].every: .* needs training.epochs >= 11; training.epochs = 6"),
        ({"method": "discriminative", "factor": 2}, r"methods\[0\].factor: must be a number in \(0, 1\]"),
    ],
)
def test_bad_methods_are_config_errors_naming_the_key(entry, message):
    with pytest.raises(config.ConfigError, match=f"experiments.defocus.{message}"):
        config.load(study([entry]))
