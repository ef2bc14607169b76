"""The ``atomscale`` accessor on xarray Datasets and DataArrays.

Argument plumbing only: each method normalises its arguments and makes one call into
:mod:`atomscale_accessors.maps` (or, to upload, :mod:`atomscale_accessors.map_upload`). The
accessors hold nothing but the object they are attached to, and check nothing when they
are created. A DataArray is turned into a one-variable Dataset and handled by the same code
as a Dataset. Importing the package imports this module, so each method imports the map
code (and with it pandera and the upload engine) on its first use.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from .errors import MapStructureError
from .options import MapOptions, UploadOptions, split_options

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["AtomscaleDataArrayAccessor", "AtomscaleDatasetAccessor"]


class _MapAccessor:
    """The methods shared by the Dataset and the DataArray accessor."""

    def __init__(self, obj: xr.Dataset | xr.DataArray) -> None:
        self._obj = obj

    def _dataset(self, options: MapOptions) -> xr.Dataset:
        raise NotImplementedError

    def to_annotations(self, options: MapOptions | None = None, **kwargs: Any) -> pd.DataFrame:
        """Flatten the map into canonical annotation records (no value validation).

        Parameters
        ----------
        options : MapOptions, optional
            What the map is; see :class:`~atomscale_accessors.options.MapOptions`.
        **kwargs
            Those options by name (``x``, ``y``, ``z``, ``variables``, ``property_name``,
            ``property_unit``, ``coord_units``, ``coord_ref_frame``, ``char_source_type``,
            ``data_id``, ``metadata``, ``extra_dims``).

        Returns
        -------
        pandas.DataFrame
            One record per cell with a value, indexed by the cell's labels.

        Raises
        ------
        MapStructureError
            When the map's structure cannot be read (coordinates, units, dimensions).

        Examples
        --------
        >>> import atomscale_accessors
        >>> from atomscale_accessors.datasets import sheet_resistance_map
        >>> rec = sheet_resistance_map().atomscale.to_annotations()
        >>> len(rec), rec["property_unit"].iloc[0], rec["coord_units"].iloc[0]
        (49, 'ohm/sq', 'mm')
        """
        from .maps import flatten_map

        opts = MapOptions.of(options, kwargs)
        return flatten_map(self._dataset(opts), opts)

    def validate(self, options: MapOptions | None = None, **kwargs: Any) -> pd.DataFrame:
        """Check the map's structure and values; return the validated records.

        Parameters
        ----------
        options : MapOptions, optional
            What the map is, and how to validate it (``dropna``, ``allow_duplicates``).
        **kwargs
            Those options by name.

        Returns
        -------
        pandas.DataFrame
            The validated canonical records.

        Raises
        ------
        MapStructureError
            When the map's structure cannot be read.
        AnnotationValidationError
            When values fail validation; ``.failure_cases`` lists every failure.

        Examples
        --------
        >>> import atomscale_accessors
        >>> from atomscale_accessors.datasets import wafer_thickness_map
        >>> rec = wafer_thickness_map(n=11).atomscale.validate()
        >>> rec["property_name"].unique().tolist()
        ['thickness']
        """
        from .maps import validate_map

        opts = MapOptions.of(options, kwargs)
        return validate_map(self._dataset(opts), opts)

    def upload(
        self,
        sample: str | None = None,
        options: UploadOptions | None = None,
        map_options: MapOptions | None = None,
        *,
        sample_dim: Hashable | None = None,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """Validate the whole map, then upload it as annotations of a sample.

        A dask-backed map is validated block by block first and then streamed block by
        block, so nothing is sent when any block is invalid and memory stays bounded by a
        block (see :func:`~atomscale_accessors.map_upload.upload_map`).

        Parameters
        ----------
        sample : str, optional
            The physical sample: its name (matched without case and surrounding blanks)
            or its UUID. An unknown name is an error unless ``create_sample=True``.
        options : UploadOptions, optional
            How the upload runs; see :class:`~atomscale_accessors.options.UploadOptions`.
        map_options : MapOptions, optional
            What the map is and how it is validated (``dropna``, ``allow_duplicates``,
            ``block_rows``: records per streamed block of a dask-backed map); see
            :class:`~atomscale_accessors.options.MapOptions`.
        sample_dim : hashable, optional
            Instead of ``sample``: a dimension whose labels name one sample per map of a
            stack (``thickness(wafer, y, x)``); see
            :func:`~atomscale_accessors.map_upload.upload_map_stack`.
        **kwargs
            Options of either kind by name (``if_exists="skip"``, ``coord_units="mm"``),
            taking precedence over ``options`` and ``map_options``.

        Returns
        -------
        pandas.DataFrame
            The annotation frame of the created annotations, indexed like the records. For
            a dask-backed stack (``sample_dim=``), uploaded a task per sample on the dask
            workers, one summary row per sample instead.

        Raises
        ------
        MapStructureError, AnnotationValidationError
            Invalid map; nothing was sent.
        AnnotationExistsError, UploadError
            See :func:`~atomscale_accessors.upload.send_records`.

        Examples
        --------
        >>> import atomscale_accessors
        >>> from atomscale_accessors.datasets import wafer_thickness_map
        >>> ds = wafer_thickness_map(n=11)
        >>> plan = ds.atomscale.upload(
        ...     "a1b2c3d4-5678-90ab-cdef-1234567890ab", dry_run=True, chunksize=40
        ... )
        >>> plan["chunk"].value_counts().sort_index().tolist()
        [40, 40, 1]
        """
        from .map_upload import upload_map, upload_map_stack

        opts, mopts = split_options(kwargs, options, map_options)
        if (sample is None) == (sample_dim is None):
            raise TypeError(
                "upload() takes a sample (a name or a UUID) or sample_dim=, one of them"
            )
        if sample is None:  # then sample_dim is given
            return upload_map_stack(self._dataset(mopts), sample_dim, opts, mopts)
        return upload_map(self._dataset(mopts), sample, opts, mopts)

    def plot(
        self, variable: Hashable | None = None, ax: Axes | None = None, **kwargs: Any
    ) -> Axes | np.ndarray:
        """Draw the map as a wafer map: a grid with ``pcolormesh``, points with ``scatter``.

        Needs matplotlib (``pip install "atomscale-accessors[plot]"``). See
        :func:`atomscale_accessors.plotting.plot_map` for the options (``x=``, ``y=``,
        ``outline=``, ``wafer_diameter=``, ``colorbar=``, ``title=``, and keywords for
        ``pcolormesh`` or ``scatter``). A stack of maps along ``sample`` (or the dimension
        ``sample_dim=`` names) is drawn as small multiples on one colour scale, and the
        panels are returned (see :func:`atomscale_accessors.multiples.plot_stack`).

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import atomscale_accessors
        >>> from atomscale_accessors.datasets import wafer_thickness_map
        >>> ax = wafer_thickness_map(n=31).atomscale.plot()
        >>> ax.get_xlabel(), ax.collections[0].colorbar.ax.get_ylabel()
        ('x [mm]', 'thickness [nm]')
        """
        from .fields import SAMPLE_DIM
        from .multiples import plot_stack
        from .plotting import plot_map

        sample_dim = kwargs.pop("sample_dim", None)
        if sample_dim is not None or SAMPLE_DIM in self._obj.dims:
            return plot_stack(self._obj, variable, sample_dim=sample_dim or SAMPLE_DIM, **kwargs)
        return plot_map(self._obj, variable, ax=ax, **kwargs)


@xr.register_dataset_accessor("atomscale")
class AtomscaleDatasetAccessor(_MapAccessor):
    """``Dataset.atomscale``: validate a map and upload it as spatial annotations.

    Examples
    --------
    >>> import atomscale_accessors
    >>> from atomscale_accessors.datasets import xps_line_scan
    >>> xps_line_scan(n=5).atomscale.to_annotations()["property_name"].tolist()
    ['sr_ti_ratio', 'sr_ti_ratio', 'sr_ti_ratio', 'sr_ti_ratio', 'sr_ti_ratio']
    """

    _obj: xr.Dataset

    def _dataset(self, options: MapOptions) -> xr.Dataset:
        return self._obj


@xr.register_dataarray_accessor("atomscale")
class AtomscaleDataArrayAccessor(_MapAccessor):
    """``DataArray.atomscale``: the same methods, for a map held in one DataArray.

    The array becomes a one-variable Dataset named after the array, or after the
    ``property_name`` option when the array has no name.

    Examples
    --------
    >>> import atomscale_accessors
    >>> from atomscale_accessors.datasets import wafer_thickness_map
    >>> da = wafer_thickness_map(n=11).thickness
    >>> rec = da.atomscale.to_annotations(property_name="film_thickness")
    >>> rec["property_name"].iloc[0], rec["property_unit"].iloc[0]
    ('film_thickness', 'nm')
    """

    _obj: xr.DataArray

    def _dataset(self, options: MapOptions) -> xr.Dataset:
        da = self._obj
        name = da.name
        if name is None:
            name = options.property_name
            if not isinstance(name, str):
                raise MapStructureError(
                    "the DataArray has no name: name it (da.rename('thickness')) or pass "
                    "property_name='...'"
                )
        return da.to_dataset(name=name)
