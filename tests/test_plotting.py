"""Wafer-map pictures: grids and points, labels with units, the wafer outline."""

from __future__ import annotations

import io
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import atomscale_accessors
from atomscale_accessors import fetch, plotting
from atomscale_accessors.datasets import sheet_resistance_map, wafer_thickness_map, xps_line_scan
from atomscale_accessors.errors import MapStructureError
from atomscale_accessors.multiples import plot_stack
from atomscale_accessors.plotting import OUTLINE_GID, new_axes, plot_map, wafer_diameter

matplotlib = pytest.importorskip("matplotlib", reason="the plot extra is not installed")
matplotlib.use("Agg")  # before pyplot is imported: no display needed

from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import PathCollection, QuadMesh  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def outlines(ax: Axes) -> list:
    return [p for p in ax.patches if p.get_gid() == OUTLINE_GID]


def colorbar_label(ax: Axes) -> str:
    return ax.collections[0].colorbar.ax.get_ylabel()


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def test_grid_map_is_a_mesh_with_units_outline_and_transparent_nan():
    ds = wafer_thickness_map(n=41)
    ax = ds.atomscale.plot()

    assert isinstance(ax, Axes)
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert colorbar_label(ax) == "thickness [nm]"
    assert ax.get_xlabel() == "x [mm]"
    assert ax.get_ylabel() == "y [mm]"
    assert ax.get_aspect() == 1.0
    assert ax.get_title() == "thickness (ellipsometry)"
    (circle,) = outlines(ax)
    assert circle.get_radius() == pytest.approx(150.0)
    # Cells off the wafer are masked, so pcolormesh leaves them transparent.
    data = mesh.get_array()
    assert np.ma.count_masked(data) == int(ds.thickness.isnull().sum())
    assert np.ma.count(data) == int(ds.thickness.notnull().sum())


def test_points_are_a_scatter_coloured_by_value_with_the_wafer_outline():
    ds = sheet_resistance_map()
    ax = ds.atomscale.plot(ax=new_axes())

    (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(points.get_offsets()) == 49
    np.testing.assert_array_equal(points.get_array(), ds.sheet_resistance.values)
    assert colorbar_label(ax) == "sheet_resistance [ohm/sq]"
    assert outlines(ax)[0].get_radius() == pytest.approx(150.0)


def test_a_line_scan_gets_no_outline():
    small = xps_line_scan(n=11, start_mm=(-10.0, -10.0), end_mm=(10.0, 10.0))
    ax = small.atomscale.plot(ax=new_axes())
    assert outlines(ax) == []
    assert colorbar_label(ax) == "sr_ti_ratio (dimensionless)"
    # A diagonal across a whole wafer is still a line, not a wafer map.
    assert outlines(xps_line_scan().atomscale.plot(ax=new_axes())) == []


def test_outline_options():
    small = xps_line_scan(n=11, start_mm=(-10.0, -10.0), end_mm=(10.0, 10.0))
    forced = small.atomscale.plot(ax=new_axes(), outline="wafer")
    assert outlines(forced)[0].get_radius() == pytest.approx(50.8 / 2)  # 2-inch wafer
    given = small.atomscale.plot(ax=new_axes(), wafer_diameter=40.0)
    assert outlines(given)[0].get_radius() == pytest.approx(20.0)
    none = sheet_resistance_map().atomscale.plot(ax=new_axes(), outline=None)
    assert outlines(none) == []
    with pytest.raises(ValueError, match="outline must be"):
        small.atomscale.plot(ax=new_axes(), outline="square")


@pytest.mark.parametrize("diameter", [100.0, 150.0, 200.0, 300.0])
def test_standard_wafer_sizes_are_detected(diameter):
    ds = sheet_resistance_map(diameter_mm=diameter)
    assert wafer_diameter(ds.x, ds.y, "mm") == diameter
    grid = wafer_thickness_map(n=21, diameter_mm=diameter)
    stacked = grid.thickness.stack(cell=("y", "x")).dropna("cell")
    assert wafer_diameter(stacked.x, stacked.y, "mm") == diameter


def test_wafer_detection_needs_a_length_unit_and_a_whole_wafer():
    ds = sheet_resistance_map()
    assert wafer_diameter(ds.x * 1000.0, ds.y * 1000.0, "um") == pytest.approx(300_000.0)
    assert wafer_diameter(ds.x, ds.y, None) is None
    assert wafer_diameter(ds.x, ds.y, "pixel") is None
    # One quadrant of a wafer is not a wafer map.
    quarter = (ds.x > 0) & (ds.y > 0)
    assert wafer_diameter(ds.x[quarter], ds.y[quarter], "mm") is None


def test_dataarray_plot_named_and_unnamed():
    da = wafer_thickness_map(n=21).thickness
    assert colorbar_label(da.atomscale.plot(ax=new_axes())) == "thickness [nm]"
    unnamed = da.rename(None)
    ax = unnamed.atomscale.plot(variable="film", ax=new_axes(), title=False)
    assert colorbar_label(ax) == "film [nm]"
    assert ax.get_title() == ""


def test_dataset_with_several_variables_needs_a_choice():
    ds = wafer_thickness_map(n=11)
    ds["roughness"] = ds.thickness * 0.01
    ds["roughness"].attrs["units"] = "nm"
    with pytest.raises(ValueError, match="variable="):
        ds.atomscale.plot(ax=new_axes())
    ax = ds.atomscale.plot("roughness", ax=new_axes())
    assert colorbar_label(ax) == "roughness [nm]"


def test_plot_and_upload_find_the_coordinates_alike(client, atomscale_server, sample_id):
    # Two candidates for x: plotting once took the first, while uploading refused to guess.
    ds = wafer_thickness_map(n=11)
    ds = ds.assign_coords(x_mm=ds.x)
    with pytest.raises(MapStructureError) as plotted:
        ds.atomscale.plot(ax=new_axes())
    with pytest.raises(MapStructureError) as uploaded:
        ds.atomscale.upload(sample_id, client=client, progress_bar=False)
    assert str(plotted.value) == str(uploaded.value)
    assert "several candidates for the x coordinate: ['x', 'x_mm']; name one with x=" in str(
        plotted.value
    )
    pd.testing.assert_frame_equal(plotted.value.failure_cases, uploaded.value.failure_cases)
    assert atomscale_server.request_count() == 0
    # Named, the coordinate is used by both.
    ax = ds.atomscale.plot(x="x_mm", ax=new_axes())
    assert ax.get_xlabel() == "x_mm [mm]"
    created = ds.atomscale.upload(sample_id, client=client, x="x_mm", progress_bar=False)
    assert len(created) == int(ds.thickness.notnull().sum())


def test_a_variable_with_extra_dimensions_asks_for_a_slice():
    ds = wafer_thickness_map(n=11)
    cube = xr.concat([ds.thickness, ds.thickness], dim="wavelength").to_dataset()
    with pytest.raises(ValueError, match="isel"):
        cube.atomscale.plot(ax=new_axes())


def test_records_frame_is_drawn_as_a_grid_and_kwargs_reach_matplotlib():
    records = wafer_thickness_map(n=21).atomscale.to_annotations()
    ax = records.atomscale.plot(ax=new_axes(), cmap="magma", vmin=95.0, vmax=105.0)
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert mesh.get_cmap().name == "magma"
    assert mesh.get_clim() == (95.0, 105.0)
    assert ax.get_xlabel() == "x [mm]"
    assert outlines(ax)


def test_frame_with_several_properties_needs_a_choice():
    df = pd.DataFrame({"x": [0.0, 10.0, 0.0], "y": [0.0, 0.0, 10.0], "a": [1.0, 2.0, 3.0]})
    df["b"] = df["a"] * 2
    records = df.atomscale.to_annotations(values=["a", "b"], units={"a": "nm", "b": "eV"})
    with pytest.raises(ValueError, match="property_name="):
        records.atomscale.plot()
    ax = records.atomscale.plot("b", ax=new_axes())
    assert colorbar_label(ax) == "b [eV]"
    with pytest.raises(ValueError, match="no annotations of 'c'"):
        records.atomscale.plot("c")


def test_fetched_annotation_frame_plot_and_png(client, sample_id, tmp_path):
    sheet_resistance_map().atomscale.upload(sample_id, client=client, progress_bar=False)
    frame = fetch(sample_id, client=client)
    ax = frame.atomscale.plot(ax=new_axes())
    assert colorbar_label(ax) == "sheet_resistance [ohm/sq]"
    assert ax.get_xlabel() == "x [mm]"
    assert ax.get_title() == "sheet_resistance (four_point_probe)"
    assert outlines(ax)
    path = tmp_path / "rs.png"
    ax.figure.savefig(path)
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_missing_matplotlib_is_a_clear_import_error(monkeypatch):
    # A None entry in sys.modules makes "import matplotlib" fail, as when not installed.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    ds = wafer_thickness_map(n=11)
    with pytest.raises(ImportError, match=r'pip install "atomscale-accessors\[plot\]"'):
        ds.atomscale.plot()
    with pytest.raises(ImportError, match=r"atomscale-accessors\[plot\]"):
        ds.atomscale.to_annotations().atomscale.plot()
    with pytest.raises(ImportError, match="matplotlib"):
        plotting.new_axes()


def test_plot_is_a_method_of_every_accessor():
    for accessor in (
        atomscale_accessors.AtomscaleDataFrameAccessor,
        atomscale_accessors.AtomscaleDatasetAccessor,
        atomscale_accessors.AtomscaleDataArrayAccessor,
    ):
        assert callable(accessor.plot)
    ax = plot_map(sheet_resistance_map(), ax=new_axes(), colorbar=False)
    assert ax.collections[0].colorbar is None


@pytest.mark.parametrize("dpi", [72, 100, 120, 200])
@pytest.mark.parametrize("make", [wafer_thickness_map, sheet_resistance_map, xps_line_scan])
@pytest.mark.parametrize("figure", ["pyplot", "new_axes"])
def test_a_plain_savefig_keeps_every_label_inside_the_figure(figure, make, dpi):
    ax = make().atomscale.plot(ax=new_axes() if figure == "new_axes" else None)
    fig = ax.figure
    labels = (ax.yaxis.label, ax.xaxis.label, ax.title, ax.collections[0].colorbar.ax.yaxis.label)
    boxes = []

    def measure(event):  # during the save's draw: laid out and measured at its dpi
        boxes[:] = [(t.get_text(), t.get_window_extent(event.renderer)) for t in labels]
        boxes.append(("figure", fig.bbox.frozen()))

    fig.canvas.mpl_connect("draw_event", measure)
    fig.savefig(io.BytesIO(), dpi=dpi)  # no bbox_inches: the layout must make room
    *texts, (_, edge) = boxes
    assert len(texts) == 4
    for text, box in texts:
        inside = edge.x0 <= box.x0 and box.x1 <= edge.x1 and edge.y0 <= box.y0 and box.y1 <= edge.y1
        assert inside, f"{text!r} at {box.bounds} leaves the figure {edge.bounds}"


def test_a_stack_is_drawn_as_small_multiples_on_one_colour_scale():
    maps = [wafer_thickness_map(n=11, seed=i) + 10.0 * i for i in range(5)]
    stack = xr.concat(maps, dim=pd.Index([f"W{i}" for i in range(5)], name="sample"))
    axes = stack.atomscale.plot()
    assert axes.shape == (2, 3)
    shown = [ax for ax in axes.ravel() if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == [f"W{i}" for i in range(5)]
    limits = {ax.collections[0].get_clim() for ax in shown}
    low, high = float(stack.thickness.min()), float(stack.thickness.max())
    assert limits == {(low, high)}  # one scale: equal colours are equal values
    figure = shown[0].figure
    assert len(figure.axes) == 6 + 1  # the panels and one colour bar
    plt.close(figure)


@pytest.mark.parametrize("n", [1, 4, 25])
def test_small_multiples_keep_their_texts_inside_the_figure_and_apart(n):
    # The figure of a stack is laid out once, by the margins of multiples.py: every title,
    # axis label and the colour bar's label inside it, and no panel's title on the panel
    # above, at the dpi of a plain savefig.
    stack = xr.concat(
        [wafer_thickness_map(n=9, seed=i) for i in range(n)],
        dim=pd.Index([f"W{i:02d}" for i in range(n)], name="sample"),
    )
    axes = stack.atomscale.plot()
    fig = axes.ravel()[0].figure
    fig.suptitle("a lot")
    bar = fig.axes[-1]
    texts = [fig._suptitle, bar.yaxis.label]
    for ax in axes.ravel()[:n]:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
    found: dict[str, list] = {}

    def measure(event):
        renderer = event.renderer
        shown = [t for t in texts if t.get_text()]
        found["texts"] = [(t.get_text(), t.get_window_extent(renderer)) for t in shown]
        found["panels"] = [ax.get_window_extent(renderer) for ax in axes.ravel()[:n]]
        found["titles"] = [ax.title.get_window_extent(renderer) for ax in axes.ravel()[:n]]

    fig.canvas.mpl_connect("draw_event", measure)
    fig.savefig(io.BytesIO(), dpi=100)
    edge = fig.bbox
    for text, box in found["texts"]:
        inside = edge.x0 <= box.x0 and box.x1 <= edge.x1 and edge.y0 <= box.y0 and box.y1 <= edge.y1
        assert inside, f"{text!r} at {box.bounds} leaves the figure {edge.bounds}"
    cols = axes.shape[1]
    for i, title in enumerate(found["titles"]):
        if i >= cols:  # a panel above: its lowest tick labels are hidden (label_outer)
            assert title.y1 < found["panels"][i - cols].y0, f"the title of panel {i} overlaps"
    assert not fig.get_layout_engine()
    plt.close(fig)


def test_small_multiples_on_a_figure_of_the_caller_keep_its_layout():
    stack = xr.concat(
        [wafer_thickness_map(n=9, seed=i) for i in range(3)],
        dim=pd.Index(["A", "B", "C"], name="sample"),
    )
    fig = plt.figure(layout="constrained")
    axes = plot_stack(stack, figure=fig)
    assert axes.shape == (2, 2)
    assert fig.get_layout_engine() is not None
    assert len(fig.axes) == 4 + 1  # the panels and one colour bar, made by the layout
    plt.close(fig)


def test_a_frame_of_several_samples_plots_one_panel_per_sample():
    parts = []
    for i, name in enumerate(["B", "A"]):
        records = wafer_thickness_map(n=7, seed=i).atomscale.to_annotations()
        parts.append(records.assign(physical_sample_id=f"id-{name}", sample_name=name))
    axes = pd.concat(parts).atomscale.plot()
    assert [ax.get_title() for ax in axes.ravel() if ax.get_visible()] == ["A", "B"]
    plt.close(axes.ravel()[0].figure)
