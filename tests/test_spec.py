"""Sweep specs: every shipped spec validates and plans; every kind of mistake is one precise error."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from mixer_cli import main
from mixer_core.config import RunConfig
from mixer_core.model import count_parameters, create_mixer
from sweeps.plan import estimated_examples, format_plan, plan_sweep, trial_configs, trial_count
from sweeps.spec import SpecError, build_run_config, check_resources, load_spec, spec_hash

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
SHIPPED = sorted(p for p in [*SWEEPS.glob("*.yaml"), *SWEEPS.glob("cpu/*.yaml")] if not p.name.startswith("train_"))

GOOD = {
    "name": "tiny",
    "experiment": "tests",
    "base": {"model": {"variant": "Ti/4"}, "data": {"name": "digits"}, "train": {"epochs": 2}},
    "grid": {"model.variant": ["Ti/4", "Ti/2"], "data.fraction": [0.5, 1.0]},
    "objective": {"metric": "val_top1", "mode": "max"},
    "searcher": "grid",
}
LR_SEARCH = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def write_spec(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(SWEEPS)))
def test_shipped_specs_validate_and_plan(path: Path) -> None:
    spec = load_spec(path)
    plan = plan_sweep(spec)
    assert plan["trial_count"] >= 1
    assert plan["models"] and all(cost["params"] > 0 and cost["gmacs"] > 0 for cost in plan["models"])
    assert spec.name in format_plan(plan)
    json.dumps(plan)  # plain data for --json


def test_a_run_config_given_as_a_spec_is_told_to_mixer_train(capsys) -> None:
    assert main(["sweep", "validate", str(SWEEPS / "train_digits.yaml")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mixer sweep validate: {SWEEPS / 'train_digits.yaml'}: a run config (data, eval, model, train at the top), not"
        f" a sweep spec: run it with `mixer train {SWEEPS / 'train_digits.yaml'}`, or put it under `base:` of a spec")


def test_shipped_specs_cover_every_study_at_both_scales() -> None:
    studies = {"quickstart", "jft_subsets", "regularization", "imagenet", "permutation", "finetune_highres"}
    assert studies <= {p.stem for p in SWEEPS.glob("*.yaml")}
    assert studies - {"quickstart"} <= {p.stem for p in SWEEPS.glob("cpu/*.yaml")}


def _set(path: str, value):
    """A mutation setting `a.b.c` in the spec mapping (the last part may hold dots for grid/search keys)."""

    def mutate(data: dict) -> None:
        section, _, key = path.partition(":")
        target = data
        for part in section.split("."):
            target = target.setdefault(part, {})
        target[key] = value

    return mutate


def _replace(**fields):
    return lambda data: data.update(fields)


def _both(*mutations):
    def mutate(data: dict) -> None:
        for mutation in mutations:
            mutation(data)

    return mutate


# (mutation, key path the message must name, close match it must suggest or None)
BAD_SPECS = {
    "unknown top-level key": (_replace(serch={}), "serch", "search"),
    "unknown base key": (_set("base.train:lrr", 0.1), "base.train.lrr", "lr"),
    "unknown base section": (_set("base:trian", {"lr": 0.1}), "base.trian", "train"),
    "wrong type in base": (_set("base.train:lr", "fast"), "base.train.lr", None),
    "wrong type at top level": (_replace(num_samples="many"), "num_samples", None),
    "empty grid axis": (_set("grid:data.fraction", []), "grid.data.fraction", None),
    "fraction above 1 in grid": (_set("grid:data.fraction", [0.5, 1.5]), "grid.data.fraction[1]", None),
    "fraction 0 in base": (_set("base.data:fraction", 0), "base.data.fraction", None),
    "unknown variant in base": (_set("base.model:variant", "B/61"), "base.model.variant", "B/16"),
    "unknown variant in grid": (_set("grid:model.variant", ["Ti/4", "Tl/4"]), "grid.model.variant[1]", "Ti/4"),
    "unknown dataset": (_set("base.data:name", "digit"), "base.data.name", "digits"),
    "dataset without its path": (_set("base.data:name", "mnist_idx"), "base.data", None),
    "steps and examples in base": (_set("base:train", {"steps": 10, "examples": 640}), "base.train", None),
    "steps axis over an examples base": (
        _both(_set("base.train:examples", 640), _set("grid:train.steps", [10])), "grid.train.steps[0]", None
    ),
    "patches that do not tile data.image_size": (_set("base.data:image_size", 10), "base", None),
    "unknown grid key": (_set("grid:train.lrr", [0.1]), "grid.train.lrr", "train.lr"),
    "grid key without its section": (_set("grid:lr", [0.1]), "grid.lr", "train.lr"),  # not a linked axis either
    "grid over a section": (_set("grid:data.augment", [{}]), "grid.data.augment", None),
    "unknown searcher": (_replace(searcher="optuna_tpe"), "searcher", "optuna-tpe"),
    "unknown metric": (_replace(objective={"metric": "val_top5", "mode": "max"}), "objective.metric", "val_top1"),
    "unknown mode": (_replace(objective={"metric": "val_top1", "mode": "maximum"}), "objective.mode", "max"),
    "search low above high": (
        _replace(grid={}, searcher="random", search={"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}),
        "search.train.lr",
        None,
    ),
    "log distribution from 0": (
        _replace(grid={}, searcher="random", search={"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}),
        "search.train.lr",
        None,
    ),
    "typo in a distribution": (
        _replace(grid={}, searcher="random", search={"train.lr": {"type": "float", "lo": 0.1, "high": 1}}),
        "search.train.lr.lo",
        "low",
    ),
    "float distribution for an int setting": (
        _replace(grid={}, searcher="random", search={"train.warmup_steps": {"type": "float", "low": 1, "high": 9}}),
        "search.train.warmup_steps.type",
        None,
    ),
    "search bound a config refuses": (
        _replace(grid={}, searcher="random", search={"data.fraction": {"type": "float", "low": 0.1, "high": 2}}),
        "search.data.fraction.high",
        None,
    ),
    "grid searcher given a search": (_replace(search=LR_SEARCH), "search", None),
    "optuna with nothing to choose": (_replace(grid={}, searcher="optuna-tpe"), "search", None),
    "nsga2 with one objective": (_replace(grid={}, searcher="optuna-nsga2", search=LR_SEARCH), "searcher", None),
    "asha with two objectives": (
        _replace(
            grid={},
            searcher="optuna-nsga2",
            search=LR_SEARCH,
            objective=[{"metric": "val_top1", "mode": "max"}, {"metric": "params", "mode": "min"}],
            scheduler={"type": "asha"},
        ),
        "scheduler.type",
        None,
    ),
    "asha setting on fifo": (_replace(scheduler={"type": "fifo", "grace_period": 2}), "scheduler", None),
    "reduction factor of 1": (_replace(scheduler={"type": "asha", "reduction_factor": 1}), "scheduler.reduction_factor", None),
    "typo in resources": (_replace(resources={"cpus_per_workr": 2}), "resources.cpus_per_workr", "cpus_per_worker"),
    "GPUs without use_gpu": (_replace(resources={"gpus_per_worker": 1}), "resources", None),
    "checkpoint score without order": (_replace(checkpoint={"score_attribute": "val_loss"}), "checkpoint.score_order", None),
    "unsupported storage URL": (_replace(storage_path="http://example.com/results"), "storage_path", None),
    "name unusable as a directory": (_replace(name="my sweep/1"), "name", None),
}


@pytest.mark.parametrize("mistake", BAD_SPECS, ids=list(BAD_SPECS))
def test_bad_spec_names_file_key_path_and_close_match(tmp_path: Path, mistake: str) -> None:
    mutate, key_path, suggestion = BAD_SPECS[mistake]
    data = copy.deepcopy(GOOD)
    mutate(data)
    path = write_spec(tmp_path, data)
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    message = str(raised.value)
    assert f"{path}: {key_path}: " in message, message
    if suggestion is not None:
        assert f"did you mean {suggestion!r}?" in message, message


def test_the_good_spec_of_the_matrix_is_valid(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, GOOD))
    assert spec.experiment == "tests" and spec.checkpoint.score_attribute == "val_top1"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["base"]["train"]["lrr"] = 0.1
    data["base"]["data"]["name"] = "digit"
    with pytest.raises(SpecError) as raised:
        load_spec(write_spec(tmp_path, data))
    assert len(str(raised.value).splitlines()) == 2


def test_unreadable_files_are_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such sweep spec"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="broken.yaml: not valid YAML"):
        load_spec(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- name: x\n")
    with pytest.raises(SpecError, match="list.yaml: expected a mapping"):
        load_spec(tmp_path / "list.yaml")


def test_validation_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = copy.deepcopy(GOOD)
    data["grid"]["data.fraction"] = [2.0]
    path = write_spec(tmp_path, data)
    with pytest.raises(SpecError):
        load_spec(path)
    plan_sweep(load_spec(path, ["grid.data.fraction=[1.0]"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_grid_expands_to_the_product_in_axis_order(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, GOOD))
    assert trial_configs(spec) == [
        {"model.variant": "Ti/4", "data.fraction": 0.5},
        {"model.variant": "Ti/4", "data.fraction": 1.0},
        {"model.variant": "Ti/2", "data.fraction": 0.5},
        {"model.variant": "Ti/2", "data.fraction": 1.0},
    ]
    config = build_run_config(spec, trial_configs(spec)[2])
    assert isinstance(config, RunConfig)
    assert (config.model.variant, config.data.fraction, config.train.epochs) == ("Ti/2", 0.5, 2)
    assert spec.base.model.variant == "Ti/4"  # the base is not changed by building a trial


def test_trial_params_a_config_refuses_are_spec_errors(tmp_path: Path) -> None:
    path = write_spec(tmp_path, GOOD)
    with pytest.raises(SpecError, match=rf"{path}: train\.lr: Input should be greater than 0"):
        build_run_config(load_spec(path), {"train.lr": -1.0})


def test_trial_count_per_searcher(tmp_path: Path) -> None:
    grid = load_spec(write_spec(tmp_path, {**GOOD, "num_samples": 3}))
    assert trial_count(grid) == 12
    random = load_spec(write_spec(tmp_path, {**GOOD, "searcher": "random", "search": LR_SEARCH, "num_samples": 2}))
    assert trial_count(random) == 8
    optuna = load_spec(
        write_spec(tmp_path, {**GOOD, "grid": {}, "searcher": "optuna-tpe", "search": LR_SEARCH, "num_samples": 5})
    )
    assert trial_count(optuna) == 5 and trial_configs(optuna) == [{}]


def test_overrides_set_spec_fields_or_pin_base_keys(tmp_path: Path) -> None:
    path = write_spec(tmp_path, GOOD)
    spec = load_spec(path, ["train.epochs=1", "data.fraction=0.25", "num_samples=2", "resources.cpus_per_worker=0.5"])
    assert spec.base.train.epochs == 1
    assert spec.base.data.fraction == 0.25 and "data.fraction" not in spec.grid  # pinned: the axis is gone
    assert trial_count(spec) == 4
    assert spec.resources.cpus_per_worker == 0.5
    assert load_spec(path, ["grid.data.fraction=[0.1, 0.2, 0.3]"]).grid["data.fraction"] == [0.1, 0.2, 0.3]
    with pytest.raises(SpecError, match=rf"{path}: --set train.lrr: unknown config key 'train.lrr'; did you mean 'train.lr'\?"):
        load_spec(path, ["train.lrr=0.1"])
    with pytest.raises(SpecError, match=r"--set 'train.lr': expected KEY=VALUE"):
        load_spec(path, ["train.lr"])


def test_spec_hash_follows_content_not_spelling(tmp_path: Path) -> None:
    path = write_spec(tmp_path, GOOD)
    assert spec_hash(path) == spec_hash(load_spec(path))
    spelled_out = copy.deepcopy(GOOD)
    spelled_out["base"]["train"]["lr"] = RunConfig().train.lr  # the default, written out
    (tmp_path / "other").mkdir()
    assert spec_hash(load_spec(write_spec(tmp_path / "other", spelled_out))) == spec_hash(path)
    assert spec_hash(load_spec(path, ["train.epochs=3"])) != spec_hash(path)


def test_check_resources_against_the_cluster(tmp_path: Path) -> None:
    path = write_spec(tmp_path, {**GOOD, "resources": {"workers_per_trial": 2, "cpus_per_worker": 0.5}})
    spec = load_spec(path)
    check_resources(spec, {"CPU": 1.0})
    with pytest.raises(SpecError, match=rf"{path}: resources.workers_per_trial: 2 workers x 0.5 CPUs need 1 CPUs"):
        check_resources(spec, {"CPU": 0.5, "memory": 1e9})
    gpu_spec = load_spec(path, ["resources.use_gpu=true"])
    assert gpu_spec.resources.gpus_per_worker == 1
    with pytest.raises(SpecError, match=rf"{path}: resources.use_gpu: is true but the cluster has no GPUs"):
        check_resources(gpu_spec, {"CPU": 16.0})
    with pytest.raises(SpecError, match=r"resources.gpus_per_worker: 2 workers x 1 GPUs need 2 GPUs"):
        check_resources(gpu_spec, {"CPU": 16.0, "GPU": 1.0})


def test_storage_path_defaults_to_ray_results_in_the_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_spec(tmp_path, GOOD)
    assert load_spec(path).resolved_storage_path() == str(tmp_path.resolve() / "ray_results")
    assert load_spec(path, ["storage_path=results"]).resolved_storage_path() == str(tmp_path.resolve() / "results")
    assert load_spec(path, ["storage_path=s3://bucket/sweeps"]).resolved_storage_path() == "s3://bucket/sweeps"


def test_plan_counts_parameters_macs_and_training_flops(tmp_path: Path) -> None:
    spec = load_spec(SWEEPS / "quickstart.yaml")
    plan = plan_sweep(spec)
    assert plan["trial_count"] == 12  # two models x six fractions
    sizes = {cost["model"]: cost for cost in plan["models"]}
    assert set(sizes) == {"Ti/4", "XS/4"}
    real = create_mixer("Ti/4", num_classes=10, image_size=8, in_chans=1)
    assert sizes["Ti/4"]["params"] == count_parameters(real)
    assert sizes["Ti/4"]["image_shape"] == (1, 8, 8)
    expected = sum(
        6 * sizes[params["model.variant"]]["gmacs"] * 1e9 * estimated_examples(build_run_config(spec, params))
        for params in trial_configs(spec)
    )
    assert plan["train_flops"] == pytest.approx(expected)


def test_plan_model_sizes_match_the_paper(tmp_path: Path) -> None:
    plan = plan_sweep(load_spec(SWEEPS / "jft_subsets.yaml"))
    params = {cost["model"]: cost["params"] / 1e6 for cost in plan["models"]}
    # Table 1 of the paper: B/32 60M, L/32 206M, L/16 208M (our Parquet head is sized from the data, here 0).
    mixers = {variant: params[variant] for variant in ("B/32", "L/32", "L/16")}
    assert mixers == pytest.approx({"B/32": 60, "L/32": 206, "L/16": 208}, rel=0.015)
    assert params["vit_base_patch32_224"] == pytest.approx(87.5, rel=0.01)  # timm's ViT-B/32
    assert params["resnetv2_152x2_bit"] == pytest.approx(232.2, rel=0.01)  # BiT-R152x2, the paper's BiT
    assert plan["trial_count"] == 7 * 4  # the paper's three Mixers and four baselines, each on four subsets


LINKED = {
    "recipe": [
        {"model.variant": "Ti/4", "train.lr": 0.003},
        {"label": "small", "model.variant": "Ti/2", "train.lr": 0.001, "train.weight_decay": 0.1},
    ],
    "data.fraction": [0.5, 1.0],
}


def test_linked_grid_values_set_their_keys_together(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, {**GOOD, "grid": LINKED}))
    assert trial_configs(spec)[1:3] == [
        {"recipe": "Ti/4", "data.fraction": 1.0},
        {"recipe": "small", "data.fraction": 0.5},
    ]
    configs = [build_run_config(spec, params) for params in trial_configs(spec)]
    assert [(c.model.variant, c.train.lr, c.train.weight_decay, c.data.fraction) for c in configs] == [
        ("Ti/4", 0.003, 0.0, 0.5), ("Ti/4", 0.003, 0.0, 1.0), ("Ti/2", 0.001, 0.1, 0.5), ("Ti/2", 0.001, 0.1, 1.0)
    ]
    plan = plan_sweep(spec)
    assert plan["trial_count"] == 4 and {cost["model"] for cost in plan["models"]} == {"Ti/4", "Ti/2"}
    assert plan["axes"]["grid recipe"] == "Ti/4, small"
    assert plan["axes"]["  recipe=small"] == "model.variant=Ti/2 train.lr=0.001 train.weight_decay=0.1"
    # A pinned key leaves every linked value too.
    pinned = load_spec(write_spec(tmp_path, {**GOOD, "grid": LINKED}), ["train.lr=0.01"])
    assert {build_run_config(pinned, params).train.lr for params in trial_configs(pinned)} == {0.01}


def test_plan_costs_one_timm_model_at_each_patch_size(tmp_path: Path) -> None:
    vits = [{"label": f"ViT-Ti/{patch}", "model.timm_model": "vit_tiny_patch16_224", "model.timm_patch_size": patch}
            for patch in (7, 4)]
    data = {**GOOD, "base": {**GOOD["base"], "data": {"name": "digits", "image_size": 28}}, "grid": {"recipe": vits}}
    models = plan_sweep(load_spec(write_spec(tmp_path, data)))["models"]
    assert len(models) == 2 and models[0]["gmacs"] < models[1]["gmacs"]  # 16 tokens, then 49


LINKED_MISTAKES = {  # linked value -> the key path and message `mixer sweep validate` must print
    "unknown key": ({"model.variant": "Ti/2", "train.lrr": 0.1},
                    "grid.recipe[1].train.lrr: unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    "bad value": ({"model.variant": "Ti/2", "train.lr": -1}, "grid.recipe[1].train.lr: Input should be greater than 0"),
    "bad variant": ({"model.variant": "Ti/3"}, "grid.recipe[1].model.variant: unknown Mixer variant 'Ti/3'"),
    "bad combination": ({"model.variant": "Ti/7", "data.image_size": 8},
                        "grid.recipe[1]: model.variant Ti/7 needs an image size divisible by its patch size 7"),
    "repeated label": ({"model.variant": "Ti/4", "train.lr": 0.1}, "grid.recipe[1]: label 'Ti/4' is grid.recipe[0]'s"),
    "label that is no name": ({"label": 2, "train.lr": 0.1}, "grid.recipe[1].label: a label is a non-empty name"),
    "key varied twice": ({"model.variant": "Ti/2", "data.fraction": 0.3},
                         "grid.recipe: sets data.fraction, which grid.data.fraction varies too"),
}


@pytest.mark.parametrize("mistake", LINKED_MISTAKES, ids=list(LINKED_MISTAKES))
def test_sweep_validate_names_the_key_path_inside_a_linked_value(
    tmp_path: Path, capsys: pytest.CaptureFixture, mistake: str
) -> None:
    value, expected = LINKED_MISTAKES[mistake]
    grid = {**LINKED, "recipe": [LINKED["recipe"][0], value]}
    path = write_spec(tmp_path, {**GOOD, "grid": grid})
    assert main(["sweep", "validate", str(path)]) == 2
    assert f"{path}: {expected}" in capsys.readouterr().err


def test_sweep_validate_shows_each_label_with_its_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["sweep", "validate", str(SWEEPS / "jft_subsets.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "grid recipe: Mixer-B/32, Mixer-L/32, Mixer-L/16, ViT-B/32, ViT-L/32, ViT-L/16, BiT-R152x2" in printed
    assert "recipe=ViT-L/32: model.timm_model=vit_large_patch32_224 train.lr=0.0006 train.weight_decay=0.1" in printed
    assert "recipe=BiT-R152x2: model.timm_model=resnetv2_152x2_bit train.lr=0.0006 train.weight_decay=0.1" in printed
    assert "subset=3%: data.fraction=0.03 train.eval_every_steps=4000" in printed


@pytest.mark.parametrize("axis", ["search", "grid"])
def test_plan_of_an_optuna_search_bounds_its_cost_by_the_most_costly_setting(tmp_path: Path, axis: str) -> None:
    data = {**GOOD, "grid": {}, "searcher": "optuna-tpe", "num_samples": 4}
    if axis == "search":
        data["search"] = {"model.variant": {"type": "categorical", "choices": ["Ti/4", "Ti/2"]}}
    else:  # Optuna chooses among grid values as among categorical choices
        data["grid"] = {"model.variant": ["Ti/4", "Ti/2"]}
    plan = plan_sweep(load_spec(write_spec(tmp_path, data)))
    costliest = max(plan["models"], key=lambda cost: cost["gmacs"])
    assert costliest["model"] == "Ti/2" and plan["trial_count"] == 4
    examples = estimated_examples(RunConfig.model_validate({"data": {"name": "digits"}, "train": {"epochs": 2}}))
    assert plan["train_flops"] == pytest.approx(4 * 6 * costliest["gmacs"] * 1e9 * examples)
    assert "upper bound" in plan["flops_note"]


def test_plan_rejects_a_variant_whose_patches_do_not_tile_the_images(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["grid"]["model.variant"] = ["Ti/4", "Ti/7"]
    path = write_spec(tmp_path, data)
    with pytest.raises(SpecError, match=rf"{path}: grid.model.variant: digits images: model.variant Ti/7 needs an image size divisible by its patch size 7, got 8x8"):
        plan_sweep(load_spec(path))


def test_sweep_validate_command_prints_the_plan_or_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "validate", str(SWEEPS / "quickstart.yaml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trial_count"] == 12
    data = copy.deepcopy(GOOD)
    data["grid"]["model.variant"] = ["Ti/4", "Ti/5"]
    path = write_spec(tmp_path, data)
    assert main(["sweep", "validate", str(path)]) == 2
    assert f"{path}: grid.model.variant[1]: unknown Mixer variant 'Ti/5'; did you mean" in capsys.readouterr().err
    assert main(["sweep", "validate", str(path), "--set", "base.train.lrr=1", "--set", "model.variant=Ti/4"]) == 2
    assert f"{path}: --set base.train.lrr: unknown config key 'train.lrr'; did you mean 'train.lr'?" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # nothing started, nothing written


def test_sweep_validate_refuses_steps_with_examples_as_mixer_train_does(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write_spec(tmp_path, GOOD)
    assert main(["sweep", "validate", str(path), "--set", "train.steps=10", "--set", "train.examples=640"]) == 2
    assert f"{path}: base.train: steps and examples are both set" in capsys.readouterr().err
    both_axes = {**GOOD, "grid": {"train.steps": [10], "train.examples": [640]}}  # each fine alone, not together
    assert main(["sweep", "validate", str(write_spec(tmp_path, both_axes))]) == 2
    assert f"{path}: train: steps and examples are both set" in capsys.readouterr().err


def test_base_prefixed_overrides_pin_too(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, GOOD), ["base.model.variant=Ti/2"])
    assert spec.base.model.variant == "Ti/2" and list(spec.grid) == ["data.fraction"]


def test_asha_counts_reports_or_epochs(tmp_path: Path) -> None:
    data = {**GOOD, "grid": {}, "searcher": "optuna-tpe", "search": LR_SEARCH}
    spec = load_spec(write_spec(tmp_path, {**data, "scheduler": {"type": "asha", "grace_period": 2, "max_t": 8}}))
    assert (spec.scheduler.time_attr, spec.scheduler.grace_period, spec.scheduler.max_t) == ("training_iteration", 2, 8)
    spec = load_spec(write_spec(tmp_path, {**data, "scheduler": {"type": "asha", "time_attr": "epoch"}}))
    assert spec.scheduler.time_attr == "epoch"
    with pytest.raises(SpecError, match=r"scheduler: grace_period 9 exceeds max_t 8"):
        load_spec(write_spec(tmp_path, {**data, "scheduler": {"type": "asha", "grace_period": 9, "max_t": 8}}))


def test_two_objectives_for_nsga2(tmp_path: Path) -> None:
    objectives = [{"metric": "val_top1", "mode": "max"}, {"metric": "train_flops", "mode": "min"}]
    spec = load_spec(
        write_spec(tmp_path, {**GOOD, "grid": {}, "searcher": "optuna-nsga2", "search": LR_SEARCH, "objective": objectives})
    )
    assert [(o.metric, o.mode) for o in spec.objective] == [("val_top1", "max"), ("train_flops", "min")]
    assert (spec.checkpoint.score_attribute, spec.checkpoint.score_order) == ("val_top1", "max")
