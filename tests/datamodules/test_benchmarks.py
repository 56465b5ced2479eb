"""Benchmark datamodules from config: built from the release as downloaded, cached, composed per modality."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

import mammopath.datasets.bach
import mammopath.datasets.camelyon16
import mammopath.datasets.camelyon17
import mammopath.datasets.cbis_ddsm
import mammopath.datasets.inbreast
from mammopath.cli import main
from tests.conftest import tree_state

REPO = Path(__file__).resolve().parents[2]
#: benchmark config → (builder module, release folder under the synth output, extra overrides, held-out domains)
BENCHMARKS = {
    "cbis_ddsm": (mammopath.datasets.cbis_ddsm, ".", [], []),
    "inbreast": (mammopath.datasets.inbreast, ".", [], []),
    "bach": (mammopath.datasets.bach, "ICIAR2018_BACH_Challenge", [], []),
    "camelyon16": (mammopath.datasets.camelyon16, "CAMELYON16", ["--data.init_args.patch_size=32"], []),
    # the synthetic CAMELYON17 has no test patients: the held-out centre is what `test` scores
    "camelyon17": (
        mammopath.datasets.camelyon17,
        "CAMELYON17",
        ["--data.init_args.patch_size=32"],
        ["camelyon17/center_4"],
    ),
}


@pytest.fixture
def read_only(synth_releases: Path) -> Iterator[Path]:
    """The releases with write permission removed (restored after), and a check that nothing changed."""
    before = tree_state(synth_releases)
    modes = {p: p.stat().st_mode for p in [synth_releases, *synth_releases.rglob("*")]}
    for path, mode in modes.items():
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield synth_releases
    finally:
        for path, mode in sorted(modes.items(), key=lambda kv: len(kv[0].parts)):
            path.chmod(mode)
    assert tree_state(synth_releases) == before, "a release folder was written to"


def count_calls(monkeypatch: pytest.MonkeyPatch, module) -> list[int]:
    calls: list[int] = []
    original = module.prepare

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "prepare", counted)
    return calls


def tiny(tmp_path: Path, *configs: Path) -> list[str]:
    """The tiny test model on ``configs``, small inputs, outputs under ``tmp_path``."""
    args = ["--config", str(REPO / "tests/conf/tiny.yaml")]
    for config in configs:
        args += ["--config", str(config)]
    sizes = ["--data.init_args.image_size=32", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0"]
    return [*args, *sizes, f"--runs_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'results'}"]


def run(subcommand: str, config: str, root: Path, tmp_path: Path, *extra: str) -> int:
    data = [f"--data.init_args.root={root}", f"--data.init_args.cache_dir={tmp_path / 'cache'}"]
    return main([subcommand, *tiny(tmp_path, REPO / "experiments/benchmarks" / f"{config}.yaml"), *data, *extra])


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_config_fits_and_tests_from_the_release(
    name: str, read_only: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, folder, extra, holdout = BENCHMARKS[name]
    calls = count_calls(monkeypatch, module)
    root = read_only / folder
    extra = [*extra, f"--data.init_args.holdout_domains={holdout}"]
    results = ["--trainer.callbacks+=mammopath.callbacks.results.ResultsWriter"]
    assert run("fit", name, root, tmp_path, *extra, "--trainer.fast_dev_run=1") == 0
    assert len(calls) == 1  # built once, by prepare_data, without `mammopath prepare`
    assert run("test", name, root, tmp_path, *extra, *results) == 0
    assert len(calls) == 1  # the second run reuses the cache: the builder is not called
    (entry,) = list((tmp_path / "cache").glob("*/*/manifest.csv"))
    manifest = pd.read_csv(entry)
    predictions = pd.read_csv(tmp_path / "results" / name / "predictions.csv")
    assert set(predictions["sample_id"]) <= set(manifest["sample_id"]) and len(predictions)
    # (the synthetic CAMELYON17 has no test patients, so with a held-out centre only that centre is scored)
    assert set(predictions["role"]) == ({"heldout"} if holdout else {"source"})
    if name.startswith("camelyon"):  # a changed tiling parameter gives another cache entry: a rebuild
        assert manifest["x"].notna().all() and (manifest["size"] == 32).all()
        assert run("test", name, root, tmp_path, *extra, "--data.init_args.min_tissue=0.9") == 0
        assert len(calls) == 2 and len(list((tmp_path / "cache").glob("*/*/manifest.csv"))) == 2


def test_a_ready_manifest_is_used_as_given(synth_releases: Path, tmp_path: Path, monkeypatch) -> None:
    from mammopath.datamodules import BACHDataModule

    calls = count_calls(monkeypatch, mammopath.datasets.bach)
    release = synth_releases / "ICIAR2018_BACH_Challenge"
    assert main(["prepare", "bach", "--root", str(release), "--out", str(tmp_path / "bach.csv")]) == 0
    calls.clear()
    dm = BACHDataModule(root=str(release), manifest=str(tmp_path / "bach.csv"), cache_dir=str(tmp_path / "c"))
    dm.prepare_data()
    assert len(dm.manifest) == 12 and not calls and not (tmp_path / "c").exists()
    assert dm.grade_schemes == {"bach4": 4} and dm.normalization["patho"]["mean"] == [0.485, 0.456, 0.406]


def test_cache_refuses_to_live_inside_the_release(synth_releases: Path) -> None:
    from mammopath.datamodules import BACHDataModule
    from mammopath.errors import DataFormatError

    release = synth_releases / "ICIAR2018_BACH_Challenge"
    dm = BACHDataModule(root=str(release), cache_dir=str(release / "cache"))
    with pytest.raises(DataFormatError, match="outside the release"):
        dm.prepare_data()
    assert not (release / "cache").exists()


def test_a_changed_release_rebuilds(tmp_path: Path) -> None:
    from mammopath.datamodules import BACHDataModule
    from mammopath.synth.releases_patho import write_bach_release

    write_bach_release(tmp_path / "rel", seed=1)
    release = tmp_path / "rel" / "ICIAR2018_BACH_Challenge"
    first = BACHDataModule(root=str(release), cache_dir=str(tmp_path / "c")).key()
    gt = release / "Photos" / "microscopy_ground_truth.csv"
    gt.write_bytes(gt.read_bytes().replace(b"b001.tif,Benign", b"b001.tif,Normal"))
    assert BACHDataModule(root=str(release), cache_dir=str(tmp_path / "c")).key() != first


def test_public_composition_trains_and_tests_with_lodo(
    read_only: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped CBIS-DDSM + INbreast ⨯ CAMELYON17 + BACH composition, on the synthetic releases."""
    config = yaml.safe_load((REPO / "experiments/benchmarks/public.yaml").read_text())
    children = config["data"]["init_args"]
    names = [c["class_path"] for c in children["mammo"]] + [c["class_path"] for c in children["patho"]]
    assert names == ["CBISDDSMDataModule", "INbreastDataModule", "Camelyon17DataModule", "BACHDataModule"]
    children["patho"][0]["init_args"].update(patch_size=32)  # the synthetic slides are 256 px wide
    children["data_root"] = str(read_only)
    path = tmp_path / "public.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("MAMMOPATH_CACHE", str(tmp_path / "cache"))
    common = tiny(tmp_path, path, REPO / "experiments/lodo/holdout_inbreast.yaml")
    assert main(["fit", *common, "--trainer.fast_dev_run=2"]) == 0
    results = ["--trainer.callbacks+=mammopath.callbacks.results.ResultsWriter", "--data.init_args.eval_batch_size=64"]
    assert main(["test", *common, *results]) == 0
    table = pd.read_csv(tmp_path / "results" / "lodo_inbreast" / "metrics_by_domain.csv")
    roles = dict(zip(table["domain"], table["role"], strict=True))
    assert roles["inbreast"] == "heldout" and roles["camelyon17/center_4"] == "heldout"
    assert roles["cbis_ddsm"] == "source" and roles["bach"] == "source"
    assert set(table["modality"]) == {"mammo", "patho"}
    assert len(list((tmp_path / "cache").glob("*/*/manifest.csv"))) == 4  # one entry per benchmark


def test_misplaced_benchmark_and_empty_composition_errors(synth_releases: Path, tmp_path: Path) -> None:
    from mammopath.datamodules import BACHDataModule, CrossModalDataModule
    from mammopath.errors import ConfigError

    bach = BACHDataModule(root="ICIAR2018_BACH_Challenge", cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="BACHDataModule is a patho benchmark: list it under data.patho"):
        CrossModalDataModule(mammo=[bach], data_root=str(synth_releases)).sources()
    with pytest.raises(ConfigError, match="no data"):
        CrossModalDataModule().sources()


def test_a_benchmark_and_your_own_manifest_compose(synth_releases: Path, synth_root: Path, tmp_path: Path) -> None:
    """docs/configuration.md: institutional data joins a benchmark composition as a plain child."""
    from mammopath.datamodules import BACHDataModule, CrossModalDataModule

    own = CrossModalDataModule(str(synth_root / "manifest.csv"))
    bach = BACHDataModule(cache_dir=str(tmp_path))
    dm = CrossModalDataModule(
        patho=[bach, own], data_root=str(synth_releases), holdout_domains=["centre_3"], image_size=16, batch_size=2
    )
    dm.prepare_data()
    dm.setup("fit")
    domains = set(dm.datasets["train"]["patho"].rows["domain"])
    assert domains == {"bach", "centre_1", "centre_2"} and dm.modalities == ["patho"]  # own mammo rows left out
    assert dm.grade_schemes == {"bach4": 4, "birads": 7}
    assert dm.sample_table.index.is_unique and len(dm.sample_table) == len(dm.manifest)
    batch = next(iter(dm.train_dataloader()))[0]["patho"]
    assert batch["image"].shape == (2, 3, 16, 16)


def test_patch_coordinates_are_cached_so_later_epochs_and_runs_detect_no_tissue(
    synth_releases: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mammopath.datasets.tiling as tiling
    from mammopath.datamodules import Camelyon16DataModule

    calls: list[str] = []
    for name in ("tissue_mask", "tile_slide"):  # tissue detection (Otsu) and the patch grid
        original = getattr(tiling, name)

        def counted(*args, _name=name, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(tiling, name, counted)
    kwargs = {
        "root": str(synth_releases / "CAMELYON16"),
        "cache_dir": str(tmp_path / "cache"),
        "patch_size": 32,
        "image_size": 16,
        "batch_size": 4,
    }
    first = Camelyon16DataModule(**kwargs)
    first.prepare_data()
    n_slides = len(calls)
    assert n_slides and "tissue_mask" in calls  # the first run tiles every slide once
    calls.clear()
    first.setup("fit")
    for _ in range(2):  # epochs read the cached coordinates
        for _ in first.train_dataloader():
            pass
    second = Camelyon16DataModule(**kwargs)  # a later run, same release and tiling parameters
    second.prepare_data()
    second.setup("fit")
    next(iter(second.train_dataloader()))
    assert calls == []  # no tissue detection, no tiling
    assert second.manifest_file == first.manifest_file
    patches = pd.read_csv(second.manifest_file)
    assert patches["x"].notna().all() and (patches["size"] == 32).all()


def test_camelyon17_trains_from_the_synth_release_with_the_tiling_its_config_states(
    synth_releases: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = synth_releases / "CAMELYON17"
    shipped = REPO / "experiments/benchmarks/camelyon17_synth.yaml"
    cache = f"--data.init_args.cache_dir={tmp_path / 'cache'}"
    base = ["--config", str(REPO / "tests/conf/tiny.yaml")]
    outputs = [f"--runs_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'results'}"]
    assert main(["fit", *base, "--config", str(shipped), f"--data.init_args.root={root}", cache, *outputs,
                 "--trainer.fast_dev_run=1"]) == 0  # fmt: skip
    capsys.readouterr()
    # the real release's defaults (224 px at 0.5 µm/px) on these 256-px slides: one line saying what emptied it
    default = REPO / "experiments/benchmarks/camelyon17.yaml"
    args = ["fit", *base, "--config", str(default), f"--data.init_args.root={root}", cache, *outputs]
    assert main([*args, "--data.init_args.image_size=32", "--trainer.fast_dev_run=1"]) == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[-1].startswith("error: camelyon17 release") and sum(line.startswith("error:") for line in lines) == 1
    assert "tiling kept no patch from 50 slide(s) with size=224, mpp=0.5, min_tissue=0.5" in lines[-1]
    assert "smaller than one patch" in lines[-1] and "data.init_args.patch_size" in lines[-1]
