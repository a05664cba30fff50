"""Experiment configs: the files in experiments/, ``_base_`` inheritance, overrides,
errors, and the round trips through checkpoints and run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from crossmodal.config import (ConfigError, config_from_dict, config_to_dict, load_config,
                               save_run_config)
from crossmodal.errors import CrossmodalError
from crossmodal.models import PIX2PIX, VARIANTS, CrossModalNet, build_network

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
ABLATIONS = ("no_skips", "no_normal_encoder", "plain_unet")


def _write(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_loads_and_builds_its_model(path):
    config = load_config(path)
    assert config.name == path.stem
    assert config.run_dir == f"runs/{path.stem}"
    model = build_network(config.model)
    expected = (PIX2PIX if path.stem.startswith(PIX2PIX)
                else path.stem if path.stem in VARIANTS else "full")
    assert model.config.variant == config.model.variant == expected
    assert sum(p.numel() for p in model.parameters()) > 0


def test_experiment_set_is_complete():
    names = {p.stem for p in EXPERIMENTS.glob("*.yaml")}
    assert {"base", *ABLATIONS, "photoface_finetune", "quickstart", "smoke", "pix2pix",
            "pix2pix_quickstart"} <= names


def test_pix2pix_is_the_seeds_recipe_and_its_quickstart_the_quickstarts_budget():
    """"Normal Map Estimation in the Wild": L = 0.25 L_adv + 10 L_rec + 1 L_vgg, Adam 7e-4
    (0.9, 0.999), 128 px, 90 degree turns, flips, photometric jitter; paired data only.
    The quickstart row drops L_vgg (no VGG16 weights offline) and trains on
    quickstart.yaml's data with its budget."""
    config = load_config(EXPERIMENTS / "pix2pix.yaml")
    assert config.model.variant == PIX2PIX
    assert (config.schedule.paired, config.schedule.image, config.schedule.normal) == (
        ["image_to_normal"], [], [])
    weights = {t: w for t, w in config.schedule.loss_weights["image_to_normal"].items() if w}
    assert weights == {"normal_mse": 10.0, "perceptual": 1.0, "adversarial": 0.25}
    assert config.train.vgg16_weights.endswith("vgg16-397923af.pth")
    assert (config.optim.lr, config.optim.betas) == (pytest.approx(7e-4), [0.9, 0.999])
    assert config.data.image_size == 128 and config.data.augment["rot90"] is True
    assert config.data.proportions == {"paired": 1.0, "image": 0.0, "normal": 0.0}
    quick, cross = (load_config(EXPERIMENTS / f"{n}.yaml")
                    for n in ("pix2pix_quickstart", "quickstart"))
    assert quick.model == config.model and quick.optim == config.optim
    assert quick.schedule.loss_weights["image_to_normal"]["perceptual"] == 0
    assert quick.train.vgg16_weights is None
    for key in ("root", "paired", "val", "image_size", "batch_size", "num_workers"):
        assert getattr(quick.data, key) == getattr(cross.data, key), key
    assert quick.train == cross.train


def test_base_is_the_papers_recipe():
    config = load_config(EXPERIMENTS / "base.yaml")
    assert config.optim.lr == pytest.approx(1e-4)
    assert config.train.epochs == 40
    assert config.train.max_steps is None
    assert config.data.image_size == 256
    assert config.model.variant == "full"
    assert config.data.paired == ["ict3drfe", "photoface"]
    assert config.data.image == ["celebahq"]
    assert config.data.normal == ["bjut3d"]
    assert config.data.val == ["photoface"]
    assert sum(config.data.proportions.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablation_files_list_only_their_difference(name):
    raw = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text(encoding="utf-8"))
    assert raw == {"_base_": "base.yaml", "name": name, "model": {"variant": name}}
    config, base = load_config(EXPERIMENTS / f"{name}.yaml"), load_config(EXPERIMENTS / "base.yaml")
    assert config.data == base.data and config.optim == base.optim and config.train == base.train


def test_finetune_starts_from_the_base_run_on_photoface_only():
    config = load_config(EXPERIMENTS / "photoface_finetune.yaml")
    assert config.train.init_from == "runs/base/best.pt"
    assert config.data.paired == ["photoface"]
    assert config.data.image == [] and config.data.normal == []
    assert config.data.proportions == {"paired": 1.0, "image": 0.0, "normal": 0.0}
    assert config.train.epochs < 40


def test_smoke_is_tiny():
    config = load_config(EXPERIMENTS / "smoke.yaml")
    assert (config.data.image_size, config.data.batch_size, config.train.max_steps) == (64, 2, 4)
    assert config.data.paired == ["synth_quickstart"]  # inherited through quickstart.yaml
    # trunk_width narrows the encoders, the decoder widths the decoders.
    full = CrossModalNet(load_config(EXPERIMENTS / "base.yaml").model)
    small = CrossModalNet(config.model)
    for part in ("image_encoder", "normal_encoder", "normal_decoder", "image_decoder"):
        n_small, n_full = (sum(p.numel() for p in getattr(m, part).parameters())
                           for m in (small, full))
        assert n_small < n_full / 20, part
    # Under 0.5M parameters: a checkpoint with Adam's two moments stays below 6 MB.
    assert sum(p.numel() for p in small.parameters()) < 500_000


def test_three_level_chain_merges_dicts_replaces_lists_and_overrides_last(tmp_path):
    _write(tmp_path / "a.yaml", {
        "name": "a",
        "data": {"paired": ["x", "y"], "proportions": {"paired": 1.0, "image": 2.0},
                 "batch_size": 4},
        "train": {"epochs": 3, "seed": 7}})
    _write(tmp_path / "sub" / "b.yaml", {
        "_base_": "../a.yaml", "name": "b",
        "data": {"paired": ["z"], "proportions": {"image": 3.0}},
        "train": {"epochs": 5}})
    leaf = _write(tmp_path / "sub" / "c.yaml", {
        "_base_": "b.yaml", "name": "c", "data": {"batch_size": 6}})

    config = load_config(leaf, ["train.epochs=9", "data.proportions.normal=0.5"])

    assert config.name == "c" and config.run_dir == "runs/c"
    assert config.data.paired == ["z"]                      # lists replace
    assert config.data.proportions == {"paired": 1.0, "image": 3.0, "normal": 0.5}  # dicts merge
    assert config.data.batch_size == 6
    assert config.train.seed == 7                           # untouched keys survive
    assert config.train.epochs == 9                         # the override is merged last
    assert config.data.image_size == 256                    # schema default


def test_list_of_bases_merges_in_order(tmp_path):
    _write(tmp_path / "one.yaml", {"name": "one", "train": {"epochs": 1, "seed": 1}})
    _write(tmp_path / "two.yaml", {"name": "two", "train": {"epochs": 2}})
    leaf = _write(tmp_path / "leaf.yaml", {"_base_": ["one.yaml", "two.yaml"]})
    config = load_config(leaf)
    assert (config.name, config.train.epochs, config.train.seed) == ("two", 2, 1)


def test_base_cycle_is_rejected_naming_the_chain(tmp_path):
    _write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    _write(tmp_path / "b.yaml", {"_base_": "c.yaml"})
    _write(tmp_path / "c.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle") as info:
        load_config(tmp_path / "a.yaml")
    chain = str(info.value).split("cycle ", 1)[1].split(";")[0].split(" -> ")
    assert [Path(p).name for p in chain] == ["a.yaml", "b.yaml", "c.yaml", "a.yaml"]
    assert "\n" not in str(info.value)


def test_self_reference_is_a_cycle(tmp_path):
    _write(tmp_path / "a.yaml", {"_base_": "./a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_missing_base_names_the_referencing_file(tmp_path):
    leaf = _write(tmp_path / "leaf.yaml", {"_base_": "gone.yaml"})
    with pytest.raises(ConfigError) as info:
        load_config(leaf)
    assert str(info.value).startswith(str(leaf))
    assert "gone.yaml" in str(info.value)


def test_unknown_top_level_key_lists_valid_keys(tmp_path):
    path = _write(tmp_path / "x.yaml", {"nmae": "x"})
    with pytest.raises(ConfigError, match="unknown key 'nmae'") as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "name, run_dir, model, data, schedule, optim, train" in str(info.value)


def test_unknown_key_in_a_section_lists_that_sections_keys(tmp_path):
    path = _write(tmp_path / "x.yaml", {"train": {"lr": 1e-3}})
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lr'; valid keys in train: "
                                          r"epochs, max_steps"):
        load_config(path)


def test_unknown_key_in_a_base_names_the_base(tmp_path):
    base = _write(tmp_path / "base.yaml", {"optim": {"learning_rate": 1e-3}})
    leaf = _write(tmp_path / "leaf.yaml", {"_base_": "base.yaml"})
    with pytest.raises(ConfigError) as info:
        load_config(leaf)
    assert str(info.value).startswith(str(base))
    assert "valid keys in optim: lr, betas, weight_decay" in str(info.value)


def test_unknown_key_in_an_override_is_rejected():
    with pytest.raises(ConfigError, match=r"override 'model\.widths=3'.*unknown key "
                                          r"'model\.widths'; valid keys in model: variant"):
        load_config(EXPERIMENTS / "base.yaml", ["model.widths=3"])


def test_wrong_type_names_key_type_and_value():
    with pytest.raises(ConfigError) as info:
        load_config(EXPERIMENTS / "base.yaml", ["train.max_steps=abc"])
    assert "train.max_steps must be int | None, got 'abc'" in str(info.value)


def test_wrong_element_type_in_a_list_names_the_key(tmp_path):
    path = _write(tmp_path / "x.yaml", "model:\n  normal_decoder_widths: [a, 2, 3, 4, 5]\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: model\.normal_decoder_widths must be"):
        load_config(path)


def test_schema_validation_runs_and_names_the_file(tmp_path):
    path = _write(tmp_path / "x.yaml", {"model": {"normal_decoder_widths": [256, 160, 80, 80, 72]}})
    with pytest.raises(ConfigError, match="must exceed the skip channels") as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("override", ["foo", "=3", "train..epochs=3"])
def test_malformed_override_shows_the_expected_form(override):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(EXPERIMENTS / "base.yaml", [override])


def test_overrides_apply_last_and_parse_yaml_values():
    config = load_config(EXPERIMENTS / "no_skips.yaml",
                         ["model.variant=plain_unet", "data.paired=[a, b]", "train.max_steps=100",
                          "optim.lr=1e-3", "train.init_from=null"])
    assert config.model.variant == "plain_unet"
    assert config.data.paired == ["a", "b"]
    assert config.train.max_steps == 100
    assert config.optim.lr == pytest.approx(1e-3)
    assert config.train.init_from is None


def test_name_interpolation_resolves_in_run_dir(tmp_path):
    path = _write(tmp_path / "x.yaml", {"name": "exp1", "data": {"root": "/d/${name}"}})
    config = load_config(path)
    assert config.run_dir == "runs/exp1" and config.data.root == "/d/exp1"
    assert load_config(path, ["name=other"]).run_dir == "runs/other"


def test_unsafe_yaml_tags_fail_without_running(tmp_path):
    marker = tmp_path / "ran"
    path = _write(tmp_path / "x.yaml",
                  f"name: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:"
                  f"pathlib.Path ['{marker}']]\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: line 1 invalid YAML.*python"):
        load_config(path)
    assert not marker.exists()


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path / "x.yaml", "name: ok\ntrain:\n  epochs: [1, 2\n")
    with pytest.raises(CrossmodalError, match=r"x\.yaml: line \d+ invalid YAML"):
        load_config(path)


def test_round_trip_through_dict_json_and_weights_only_checkpoint(tmp_path):
    config = load_config(EXPERIMENTS / "smoke.yaml", ["name=rt", "data.augment=null"])
    d = config_to_dict(config)
    # Lists, not tuples (a tuple never equals a list).
    assert d["model"]["normal_decoder_widths"] == list(config.model.normal_decoder_widths)
    assert config_from_dict(d) == config
    assert config_from_dict(json.loads(json.dumps(d))) == config
    torch.save({"config": d}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)["config"]
    assert config_from_dict(loaded) == config


def test_from_dict_is_validated_and_literal(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'train.steps'"):
        config_from_dict({"train": {"steps": 3}})
    config = config_from_dict({"name": "a${b}", "run_dir": "runs/${x}"})
    assert (config.name, config.run_dir) == ("a${b}", "runs/${x}")
    # Missing keys take the schema's defaults, as an empty experiment file does (whose
    # data root load_config makes absolute).
    from_file = load_config(_write(tmp_path / "empty.yaml", ""))
    assert config_from_dict({"data": {"root": from_file.data.root}}) == from_file
    assert Path(from_file.data.root) == Path(config_from_dict({}).data.root).absolute()


def test_save_run_config_writes_three_files_and_reloads(tmp_path):
    overrides = ["train.max_steps=3", "name=saved"]
    config = load_config(EXPERIMENTS / "smoke.yaml", overrides)
    run_dir = tmp_path / "run"
    save_run_config(config, run_dir, overrides, EXPERIMENTS / "smoke.yaml")

    assert load_config(run_dir / "config.yaml") == config
    assert (run_dir / "overrides.txt").read_text(encoding="utf-8").splitlines() == overrides
    git = (run_dir / "git.txt").read_text(encoding="utf-8").split()
    assert git == ["unknown"] or (len(git[0]) == 40 and git[1:] in ([], ["dirty"]))


def test_save_run_config_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git executable to be found
    config = config_from_dict({})
    save_run_config(config, tmp_path / "run", [], None)
    assert (tmp_path / "run" / "git.txt").read_text(encoding="utf-8") == "unknown\n"
    assert (tmp_path / "run" / "overrides.txt").read_text(encoding="utf-8") == ""
    assert config_from_dict(yaml.safe_load(
        (tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))) == config


@pytest.mark.parametrize("name", ["base", "photoface_finetune"])
def test_the_data_root_is_crossmodal_data_else_data(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CROSSMODAL_DATA", raising=False)
    assert load_config(EXPERIMENTS / f"{name}.yaml").data.root == str(tmp_path / "data")
    monkeypatch.setenv("CROSSMODAL_DATA", "")  # set but empty: as if unset
    assert load_config(EXPERIMENTS / f"{name}.yaml").data.root == str(tmp_path / "data")
    monkeypatch.setenv("CROSSMODAL_DATA", str(tmp_path / "faces"))
    assert load_config(EXPERIMENTS / f"{name}.yaml").data.root == str(tmp_path / "faces")
    monkeypatch.setenv("CROSSMODAL_DATA", "rel/../faces2")  # relative: from the current dir
    assert load_config(EXPERIMENTS / f"{name}.yaml").data.root == str(tmp_path / "faces2")
    # An override, or a file that sets it, wins over the variable.
    config = load_config(EXPERIMENTS / f"{name}.yaml", ["data.root=elsewhere"])
    assert config.data.root == str(tmp_path / "elsewhere")
    assert load_config(EXPERIMENTS / "quickstart.yaml").data.root == str(tmp_path / "data")


def test_a_run_records_the_data_root_it_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CROSSMODAL_DATA", "faces")
    config = load_config(EXPERIMENTS / "base.yaml")
    save_run_config(config, tmp_path / "run", [], EXPERIMENTS / "base.yaml")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["data"]["root"] == str(tmp_path / "faces")
    # Read back elsewhere, with the variable changed, the run still names what it read.
    monkeypatch.chdir(tmp_path / "run")
    monkeypatch.setenv("CROSSMODAL_DATA", "/other")
    assert load_config(tmp_path / "run" / "config.yaml") == config


def test_quickstart_is_the_full_graph_sized_for_a_cpu_and_trained_on_the_angle():
    """Issue 14's recipe: the paper's full model and schedule with half-width trunks and
    narrow decoders, both normal passes on the angular error; base.yaml keeps eq. 1."""
    quick, base = (load_config(EXPERIMENTS / f"{n}.yaml") for n in ("quickstart", "base"))
    assert quick.model.variant == "full" and quick.model.trunk_width == 32
    assert quick.schedule.paired == base.schedule.paired
    for route in ("image_to_normal", "normal_to_normal"):
        weights = {t: w for t, w in quick.schedule.loss_weights[route].items() if w}
        assert weights.pop("normal_angle") == 1.0 and "normal" not in weights
        assert base.schedule.loss_weights[route]["normal"] == 1.0
    count = sum(p.numel() for p in CrossModalNet(quick.model).parameters())
    assert count < sum(p.numel() for p in CrossModalNet(base.model).parameters()) / 4
    assert (quick.train.max_steps, quick.train.ema_decay) == (2600, 0.999)
    assert base.train.ema_decay == 0  # the paper scores its trained weights
