"""The public API: `import npe` gives load_model, rollout, simulate and load_dataset, listed by dir(npe),
callable after their modules are imported too; importing the simulator (as each worker does) loads no torch."""
import pytest

from conftest import check, run_python

PUBLIC = ["load_dataset", "load_model", "rollout", "simulate"]


def python(code):
    """stdout of `code` run in a fresh interpreter from the repository root."""
    return check(run_python("-c", code, timeout=120)).stdout


def test_dir_lists_every_public_function():
    assert set(PUBLIC) <= set(python("import npe; print(' '.join(dir(npe)))").split())


@pytest.mark.slow  # a fresh interpreter importing torch and every module, per name
@pytest.mark.parametrize("name", PUBLIC)
def test_public_function_stays_a_function_once_every_module_is_imported(name):
    code = ("import npe, npe.rollouts, npe.data, npe.checkpoint, npe.models, npe.train; import inspect; "
            f"print(inspect.isfunction(npe.{name}), inspect.isfunction(npe.{name}))")
    assert python(code).split() == ["True", "True"]


def test_importing_the_simulator_loads_no_torch():
    assert python("import sys, npe.sim; print('torch' in sys.modules)").strip() == "False"


def test_load_dataset_returns_a_split_checked_against_its_metadata(dataset):
    import npe
    from npe.data import load_meta

    meta = load_meta(dataset)
    for _ in range(2):
        windows = npe.load_dataset(dataset, "val")
        assert tuple(windows.shape) == (meta["windows"]["val"], 3, meta["num_objects"], 5)
