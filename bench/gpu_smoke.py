"""One short full-method fold on a CUDA device in bf16: images/s, peak memory, MFU estimate (bench/gpu_smoke.sh).

MFU = achieved model FLOP/s ÷ the device's peak bf16 FLOP/s, with the training FLOPs of a ViT estimated
as 6 · (parameters) · (tokens per image) per image (forward 2, backward 4; attention's quadratic term is
small at these sizes and left out). The peak is looked up by device name (``MAMMOPATH_PEAK_TFLOPS``
overrides it).
"""

from __future__ import annotations

import argparse
import os
import time

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def main() -> None:
    import lightning as L
    import torch

    from mammopath.callbacks.irm import IRM
    from mammopath.callbacks.mixstyle import MixStyle
    from mammopath.callbacks.style_bank import StyleBank
    from mammopath.datamodules import CrossModalDataModule
    from mammopath.models.module import MammoPathModule

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="data/synth")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_smoke needs a CUDA device")
    data = CrossModalDataModule(f"{args.data}/manifest.csv", holdout_domains=["hospital_c", "centre_3"],
                                image_size=args.image_size, batch_size=args.batch_size, num_workers=8,
                                balance_domains=True)  # fmt: skip
    model = MammoPathModule(
        backbone="vit_base_patch16_224", img_size=args.image_size, freeze="full", alignment=True,
        grade_schemes=data.grade_schemes, normalization=data.normalization,
    )  # fmt: skip

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
            if batch_idx == 10:  # after warm-up
                torch.cuda.synchronize()
                self.start, self.images = time.perf_counter(), 0
            if batch_idx >= 10:
                self.images += sum(len(b["label"]) for b in batch.values())

    clock = Clock()
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=args.steps, logger=False,
                        enable_checkpointing=False, limit_val_batches=2,
                        callbacks=[clock, MixStyle(), IRM(anneal_steps=20), StyleBank()])  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, data)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - clock.start
    rate = clock.images / elapsed
    params = sum(p.numel() for p in model.encoder.parameters())
    tokens = (args.image_size // 16) ** 2 + 1
    name = torch.cuda.get_device_name()
    peak = float(
        os.environ.get("MAMMOPATH_PEAK_TFLOPS", next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 0))
    )
    achieved = 6 * params * tokens * rate / 1e12
    print(f"device: {name}")
    print(f"images/s (training, bf16, both modalities): {rate:.1f}")
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(
        f"model TFLOP/s ~ {achieved:.1f}"
        + (f"; MFU ~ {100 * achieved / peak:.1f}% of {peak:.0f} TFLOP/s" if peak else "")
    )


if __name__ == "__main__":
    main()
