"""The LightningCLI behind `mammopath fit|validate|test|predict`.

A module-level class (not one defined inside a function) so that ``ddp_spawn`` can pickle the
trainer's references to it.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch.cli import LightningCLI

from mammopath.datamodules.crossmodal import CrossModalDataModule
from mammopath.models.module import MammoPathModule


class MammoPathCLI(LightningCLI):
    """LightningCLI with the data → model links (image size, grade schemes) stated once."""

    def add_arguments_to_parser(self, parser):  # type: ignore[no-untyped-def]
        parser.link_arguments("data.image_size", "model.img_size")
        parser.link_arguments("data.grade_schemes", "model.grade_schemes", apply_on="instantiate")

    @classmethod
    def create(cls, args: Sequence[str] | None = None, *, run: bool = True, epilog: str = "") -> MammoPathCLI:
        """Build (and by default run) the CLI; ``args=None`` reads ``sys.argv``."""
        return cls(
            MammoPathModule,
            CrossModalDataModule,
            args=list(args) if args is not None else None,
            run=run,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"epilog": epilog},
        )
