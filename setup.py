"""Packaging hook: the YAML configs of ``experiments/`` ship inside the wheel as ``mammopath/experiments/``.

Everything else is in ``pyproject.toml``. An installed mammopath then resolves ``--config experiments/<x>.yaml``
from any folder (:mod:`mammopath.resources`); an editable install reads the repository's ``experiments/``.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the repository's experiments/
            return
        source = Path(__file__).resolve().parent / "experiments"
        target = Path(self.build_lib) / "mammopath" / "experiments"
        for path in sorted(source.rglob("*.yaml")):
            self.copy_file(str(path), str(target / path.relative_to(source)), preserve_mode=False)

    def copy_file(self, infile, outfile, *args, **kwargs):  # type: ignore[no-untyped-def]
        Path(outfile).parent.mkdir(parents=True, exist_ok=True)
        return super().copy_file(infile, outfile, *args, **kwargs)


setup(cmdclass={"build_py": BuildWithConfigs})
