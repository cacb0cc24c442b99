import pytest

from edgediff.compiler.pipeline import Recipe, compile_model


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """One compiled bundle of the tiny test UNet, shared (read-only) by many tests."""
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return compile_model("tiny_models:tiny_unet", out, recipe=Recipe(sampler="ddim", steps=5, guidance=2.0))


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    """A private copy of the tiny bundle that a test may damage."""
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(tiny_bundle.root, dst)
    return dst
