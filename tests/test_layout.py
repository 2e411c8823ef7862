"""Python run from the repository root (python -m pytest, as CI does; a notebook opened here) puts the
root first on sys.path, so a package folder there takes the import name of any installed package of
that name: a top-level kernels/ hid the `kernels` package transformers >= 5.25 imports, and every test
failed to start."""
import importlib.metadata
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_no_folder_in_the_repository_root_shadows_an_installed_package():
    installed = importlib.metadata.packages_distributions()   # top-level import name -> distributions
    folders = sorted(path.name for path in ROOT.iterdir() if (path / "__init__.py").is_file())
    assert folders, "the repository root has no package folders: this test checks nothing"
    shadowing = {name: installed[name] for name in folders if name in installed}
    assert not shadowing, f"folders in the repository root shadow installed packages: {shadowing}"


def test_the_readme_layout_names_every_module():
    """README's Layout is where a newcomer learns what each module owns: a module missing there is unexplained."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("\n## Layout"):]
    modules = [path.name for folder in ("engine", "engine/app") for path in sorted((ROOT / folder).glob("*.py"))
               if path.name != "__init__.py"]
    assert len(modules) > 20, modules
    assert [name for name in modules if f"`{name}`" not in layout] == []


def test_every_name_fastig_exports_resolves():
    """fastig's names load on first use (so the command line starts without torch): each of __all__ must."""
    import fastig

    for name in fastig.__all__:
        assert getattr(fastig, name) is not None, name
    assert fastig.Engine.__module__ == "fastig.engine" and "Engine" in dir(fastig)
    with pytest.raises(AttributeError, match="no attribute 'Engnie'"):
        fastig.Engnie
