from __future__ import annotations

from pathlib import Path

import pytest

from mammopath.datamodules.crossmodal import CrossModalDataModule
from mammopath.errors import ConfigError, ManifestError

HOLDOUT = ["hospital_c", "centre_3"]


def test_lodo_split_never_leaks_holdout(synth_root: Path) -> None:
    dm = CrossModalDataModule(str(synth_root / "manifest.csv"), holdout_domains=HOLDOUT, image_size=16, batch_size=4)
    dm.setup("fit")
    for split in ("train", "val"):
        for ds in dm.datasets[split].values():
            assert not set(ds.rows["domain"]) & set(HOLDOUT)
            assert set(ds.rows["split"]) == {split}
    dm.setup("test")
    for modality, ds in dm.datasets["test"].items():
        held = ds.rows[ds.rows["role"] == "heldout"]
        source = ds.rows[ds.rows["role"] == "source"]
        assert set(held["domain"]) <= set(HOLDOUT) and len(held)
        # every held-out row is evaluated, whatever its split in the manifest
        everything = dm.manifest[(dm.manifest["domain"].isin(HOLDOUT)) & (dm.manifest["modality"] == modality)]
        assert len(held) == len(everything)
        assert set(source["split"]) == {"test"}
    assert dm.grade_schemes == {"bach4": 4, "birads": 7}
    assert dm.source_domains == ["centre_1", "centre_2", "hospital_a", "hospital_b"]


def test_train_batches_hold_both_modalities(synth_root: Path) -> None:
    dm = CrossModalDataModule(str(synth_root / "manifest.csv"), holdout_domains=HOLDOUT, image_size=16, batch_size=4)
    dm.setup("fit")
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert set(batch) == {"mammo", "patho"}
    assert batch["mammo"]["image"].shape == (4, 1, 16, 16)
    assert batch["patho"]["image"].shape == (4, 3, 16, 16)
    assert set(batch["mammo"]["modality"]) == {"mammo"}
    val = dm.val_dataloader()
    assert len(val) == 2 and next(iter(val[1]))["image"].shape[1] == 3


def test_bad_configuration_errors(synth_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown modality 'ct'"):
        CrossModalDataModule(str(synth_root / "manifest.csv"), modalities=["ct"])
    dm = CrossModalDataModule(str(synth_root / "manifest.csv"), holdout_domains=["hospital_z"])
    with pytest.raises(ManifestError, match="domain 'hospital_z' has no rows"):
        dm.setup("fit")
    dm = CrossModalDataModule(
        str(synth_root / "manifest.csv"), holdout_domains=["hospital_a", "hospital_b", "hospital_c"]
    )
    with pytest.raises(ConfigError, match="no mammo rows for split 'train'"):
        dm.setup("fit")


def test_composes_manifests_with_their_own_roots(synth_root: Path, tmp_path: Path) -> None:
    import pandas as pd

    from mammopath.manifest import write_manifest

    # the paired cohort re-rooted at its own folder: paths relative to synth_root/paired
    paired = pd.read_csv(synth_root / "paired_manifest.csv", dtype=str, keep_default_na=False)
    for column in ("path", "roi_path"):
        paired[column] = paired[column].str.replace("paired/", "", regex=False)
    write_manifest(paired, tmp_path / "paired.csv")
    dm = CrossModalDataModule(
        [str(synth_root / "manifest.csv"), str(tmp_path / "paired.csv")],
        root=[str(synth_root), str(synth_root / "paired")],
        holdout_domains=HOLDOUT,
        image_size=16,
        batch_size=4,
    )
    dm.setup("fit")
    train = dm.datasets["train"]["patho"]
    assert "paired_site" in set(train.rows["domain"])
    index = int((train.rows["domain"] == "paired_site").to_numpy().nonzero()[0][0])
    assert train[index]["image"].shape == (3, 16, 16)  # read through its own root
    with pytest.raises(ConfigError, match="2 entries for 1 manifests"):
        CrossModalDataModule(str(synth_root / "manifest.csv"), root=[str(synth_root), str(synth_root)])
    clash = CrossModalDataModule([str(synth_root / "manifest.csv")] * 2, root=[str(synth_root)] * 2)
    with pytest.raises(ManifestError, match="duplicate sample_id"):
        clash.setup("fit")
