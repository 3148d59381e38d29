"""Build hook: the wheel carries the Hydra configs, so an installed captioner composes them from any folder.

conf/ stays at the top of the repository and the seed's sweep groups in sweeps/; building copies both
into the package as ``captioner/conf`` (sweep/, version/, scale/, ... beside the other groups), which
``captioner.cli.find_conf_dir`` prefers when it exists. An editable install copies nothing: it reads
the checkout's conf/ and reaches sweeps/ by ``hydra.searchpath`` (``file://sweeps``) as before.
Everything else about the build is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def sweep_groups() -> list[Path]:
    """sweeps/'s config groups: its folders of YAMLs (sweep, version, scale, search, ...); the reports,
    claims.yaml and results/ stay in the checkout."""
    return sorted({p.parent for p in ROOT.glob("sweeps/*/*.yaml")})


class BuildPyWithConfigs(build_py):
    """setuptools' build_py, then conf/ and the sweep groups into ``<build_lib>/captioner/conf``."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # the checkout's conf/ is read in place
            return
        target = Path(self.build_lib) / "captioner" / "conf"
        shutil.rmtree(target, ignore_errors=True)  # a YAML deleted from conf/ must not linger in build/
        shutil.copytree(ROOT / "conf", target)
        for group in sweep_groups():
            shutil.copytree(group, target / group.name)


setup(cmdclass={"build_py": BuildPyWithConfigs})
