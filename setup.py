"""Build hook (everything else is in pyproject.toml): the Triton model-repository templates live at the top of
the repository (`model_repository/`, the design card's layout) and ship inside the wheel as package data of
`pipeline.deploy` (`pipeline/deploy/model_repository/`), where `pipeline.deploy.repository.TEMPLATES` finds them
in an installed wheel; a checkout or an editable install reads the top-level folder itself. The sdist carries
the folder too, so a wheel built from the sdist (`python -m build`) has the templates as well."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
TEMPLATES = "model_repository"
PACKAGED = Path("pipeline") / "deploy" / TEMPLATES


def template_files() -> list[Path]:
    """Every template file (relative to the repository), without caches."""
    skip = {"__pycache__"}
    files = (p for p in sorted((HERE / TEMPLATES).rglob("*")) if p.is_file())
    return [p.relative_to(HERE) for p in files if not skip & set(p.parts) and p.suffix != ".pyc"]


class BuildPyWithTemplates(build_py):
    def run(self):
        super().run()
        for path in template_files():
            target = Path(self.build_lib) / PACKAGED / path.relative_to(TEMPLATES)
            self.mkpath(str(target.parent))
            self.copy_file(str(HERE / path), str(target))


class SdistWithTemplates(sdist):
    def add_defaults(self):
        super().add_defaults()
        self.filelist.extend(str(p) for p in template_files())


setup(cmdclass={"build_py": BuildPyWithTemplates, "sdist": SdistWithTemplates})
