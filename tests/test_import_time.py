"""What importing the package loads, and that every accessor and public name is still there.

Each case runs in a fresh interpreter: what a module imports is only visible in a process
that has not imported it yet. The time the import takes is measured by
``benchmarks/import_time.py``, not here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("dask.dataframe")

# Loaded on first use, never by ``import atomscale_accessors``.
DEFERRED = ("pandera", "dask", "pint", "matplotlib", "fastapi", "uvicorn", "requests", "msgspec")

# Fails the child when dask warns that a registration replaced an attribute.
NO_REGISTRATION_WARNING = """
import warnings
warnings.filterwarnings("error", message="registration of accessor")
"""

DASK_FRAME = """
import pandas as pd
frame = pd.DataFrame({"x": [0.0, 10.0], "y": [0.0, 0.0], "thk": [101.2, 99.8]})
ddf = dd.from_pandas(frame, npartitions=2)
"""


def run(*pieces: str) -> str:
    """Run the pieces of code, one after the other, in a fresh interpreter; its standard
    output, or the test fails."""
    code = "\n".join(textwrap.dedent(piece) for piece in (NO_REGISTRATION_WARNING, *pieces))
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def loaded(names: tuple[str, ...] = DEFERRED) -> str:
    """Code printing which of ``names`` are imported, one per line."""
    return f"""
import sys
for name in {names!r}:
    if name in sys.modules:
        print(name)
"""


def test_the_import_loads_none_of_the_heavy_modules():
    assert run("import atomscale_accessors", loaded()) == ""


def test_pandas_and_xarray_accessors_are_registered_on_import():
    out = run(
        """
        import atomscale_accessors
        import pandas as pd
        import xarray as xr
        print(type(pd.DataFrame().atomscale).__name__)
        print(type(xr.Dataset().atomscale).__name__)
        print(type(xr.DataArray([1.0]).atomscale).__name__)
        """
    )
    assert out.split() == [
        "AtomscaleDataFrameAccessor",
        "AtomscaleDatasetAccessor",
        "AtomscaleDataArrayAccessor",
    ]


@pytest.mark.parametrize(
    "imports",
    [
        "import dask.dataframe as dd\nimport atomscale_accessors\n",
        "import atomscale_accessors\nimport dask.dataframe as dd\n",
    ],
    ids=["dask-first", "dask-after"],
)
def test_the_dask_accessor_exists_in_either_import_order(imports: str):
    out = run(
        imports,
        loaded(("pandera", "atomscale_accessors.dask_accessor")),
        DASK_FRAME,
        """
print(type(ddf.atomscale).__name__)
records = ddf.atomscale.validate(
    value="thk", property_name="thickness", property_unit="nm", coord_units="mm"
)
print(len(records.compute()))
""",
    )
    # Importing dask loads neither pandera nor the accessor; the first use loads both.
    assert out.split() == ["AtomscaleDaskDataFrameAccessor", "2"]


def test_the_dask_accessor_class_is_reachable_from_the_type():
    out = run(
        """
        import atomscale_accessors
        import dask.dataframe as dd
        from atomscale_accessors.dask_accessor import AtomscaleDaskDataFrameAccessor

        print(dd.DataFrame.atomscale is AtomscaleDaskDataFrameAccessor)
        print("atomscale" in dd.DataFrame._accessors)
        print(dd.DataFrame.atomscale.upload.__qualname__)
        """
    )
    assert out.split() == ["True", "True", "AtomscaleDaskDataFrameAccessor.upload"]


def test_the_dask_accessor_is_found_first_from_a_subclass():
    out = run(
        """
        import atomscale_accessors
        import dask.dataframe as dd


        class Frame(dd.DataFrame):
            pass


        print(Frame.atomscale.__name__, dd.DataFrame.atomscale.__name__)
        """
    )
    assert out.split() == ["AtomscaleDaskDataFrameAccessor"] * 2


def test_importing_the_dask_accessor_module_directly_registers_it_once():
    out = run(
        """
        import atomscale_accessors.dask_accessor as module
        import dask.dataframe as dd

        print(dd.DataFrame.atomscale is module.AtomscaleDaskDataFrameAccessor)
        """
    )
    assert out.split() == ["True"]


def test_threads_using_the_dask_accessor_first_all_get_it():
    out = run(
        """
        import threading
        import atomscale_accessors
        import dask.dataframe as dd
        """,
        DASK_FRAME,
        """
barrier = threading.Barrier(8)
seen = []

def use():
    barrier.wait()
    seen.append(type(ddf.atomscale).__name__)

threads = [threading.Thread(target=use) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(sorted(set(seen)), len(seen))
""",
    )
    assert out.strip() == "['AtomscaleDaskDataFrameAccessor'] 8"


def test_every_public_name_resolves_and_is_listed():
    out = run(
        """
        import atomscale_accessors

        names = atomscale_accessors.__all__
        missing = [name for name in names if getattr(atomscale_accessors, name, None) is None]
        print(missing, set(names) <= set(dir(atomscale_accessors)))
        print(atomscale_accessors.Client.__module__, atomscale_accessors.fetch.__module__)
        print(atomscale_accessors.resolve_sample.__module__, atomscale_accessors.schemas.__name__)
        """
    )
    assert out.split("\n")[:3] == [
        "[] True",
        "atomscale_accessors.client atomscale_accessors.frames",
        "atomscale_accessors.samples atomscale_accessors.schemas",
    ]


def test_the_client_fetch_and_samples_load_no_pandera():
    out = run(
        "from atomscale_accessors import Client, fetch, projects, resolve_sample, samples",
        "print(Client.__name__, callable(fetch), callable(samples))",
        loaded(("pandera", "dask")),
    )
    assert out.split() == ["Client", "True", "True"]


def test_an_unknown_name_is_an_attribute_error():
    out = run(
        """
        import atomscale_accessors

        try:
            atomscale_accessors.no_such_name
        except AttributeError as error:
            print(error)
        """
    )
    assert "has no attribute 'no_such_name'" in out


@pytest.mark.parametrize("first", ["import", "lookup"])
def test_samples_stays_the_function_when_its_module_is_imported(first: str):
    steps = {
        "import": "import atomscale_accessors.samples\nimport atomscale_accessors\n",
        "lookup": "import atomscale_accessors\natomscale_accessors.samples\n"
        "import atomscale_accessors.samples\n",
    }
    out = run(steps[first], "print(callable(atomscale_accessors.samples))")
    assert out.split() == ["True"]


def test_the_first_validate_loads_pandera_and_works():
    out = run(
        """
        import sys
        import pandas as pd
        import atomscale_accessors

        print("pandera" in sys.modules)
        frame = pd.DataFrame({"x": [0.0, 10.0], "y": [0.0, 0.0], "thk": [101.2, float("nan")]})
        try:
            frame.atomscale.validate(
                value="thk", property_name="thickness", property_unit="nm", coord_units="mm"
            )
        except atomscale_accessors.errors.AnnotationValidationError as error:
            print(type(error).__name__)
        print("pandera" in sys.modules)
        """
    )
    assert out.split() == ["False", "AnnotationValidationError", "True"]


def test_the_first_map_validate_loads_pandera_xarray_and_works():
    out = run(
        """
        import sys
        import atomscale_accessors
        from atomscale_accessors.datasets import wafer_thickness_map

        print("pandera.xarray" in sys.modules)
        print(len(wafer_thickness_map(n=5).atomscale.validate()))
        print("pandera.xarray" in sys.modules)
        """
    )
    assert out.split() == ["False", "13", "True"]


def test_a_dask_map_and_its_records_load_neither_distributed_nor_dask_dataframe():
    # Both are installed with the dask extra, and both used to come in with a map's first
    # validation: dask imported distributed to look for a client, and pandera imported
    # dask.dataframe to build a model's schema. Together about 30 MiB and 0.4 s.
    pytest.importorskip("distributed")
    out = run(
        """
        import sys
        import dask.array
        import atomscale_accessors
        from atomscale_accessors.datasets import wafer_thickness_map
        from atomscale_accessors.schemas import RecordsModel

        ds = wafer_thickness_map(n=9).chunk(4)
        print(len(ds.atomscale.validate()))
        print(len(ds.atomscale.upload("00000000-0000-4000-8000-000000000000", dry_run=True)))
        print(len(RecordsModel.validate(ds.atomscale.to_annotations())))
        for name in ("distributed", "dask.dataframe"):
            print(name in sys.modules)
        """
    )
    assert out.split() == ["49", "49", "49", "False", "False"]
