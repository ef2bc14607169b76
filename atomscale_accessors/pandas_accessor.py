"""The ``DataFrame.atomscale`` accessor: argument plumbing onto the library's functions.

pandas builds a new accessor object on every attribute access (pandas 3 always), so the
accessor keeps no state and validates nothing in ``__init__``. Importing the package
imports this module, so each method imports what it calls (the records, pandera's
models, the upload engine) on its first use.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import pandas as pd

from .options import UploadOptions

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr
    from matplotlib.axes import Axes

__all__ = ["AtomscaleDataFrameAccessor"]


@pd.api.extensions.register_dataframe_accessor("atomscale")
class AtomscaleDataFrameAccessor:
    """Validate a table of measurements and upload it as Atomscale spatial annotations.

    The mapping options (``x=``, ``y=``, ``value=``, ``values=``, ``property_name=``,
    ``property_unit=``, ``units=``, ``coord_units=``, ``coord_ref_frame=``,
    ``char_source_type=``, ``data_id=``, ``metadata=``) say where each annotation field
    comes from; see :func:`atomscale_accessors.records.to_records`.
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def to_annotations(self, **mapping: Any) -> pd.DataFrame:
        """The frame as canonical annotation records (not validated).

        Examples
        --------
        >>> import pandas as pd
        >>> import atomscale_accessors
        >>> df = pd.DataFrame({"x": [0.0, 10.0], "y": [0.0, 0.0], "thk": [101.2, 99.8]})
        >>> rec = df.atomscale.to_annotations(
        ...     value="thk", property_name="thickness", property_unit="nm", coord_units="mm"
        ... )
        >>> rec[["property_name", "property_value", "property_unit", "coord_x"]]
          property_name  property_value property_unit  coord_x
        0     thickness           101.2            nm      0.0
        1     thickness            99.8            nm     10.0
        """
        from .records import to_records

        return to_records(self._frame, **mapping)

    def validate(
        self, *, dropna: bool = False, allow_duplicates: bool = False, **mapping: Any
    ) -> pd.DataFrame:
        """Canonical records, validated; raises ``AnnotationValidationError`` listing every failure.

        Examples
        --------
        >>> import pandas as pd
        >>> import atomscale_accessors
        >>> df = pd.DataFrame({"x": [0.0, 10.0], "y": [0.0, 0.0], "thk": [101.2, float("nan")]})
        >>> df.atomscale.validate(
        ...     value="thk", property_name="thickness", property_unit="nm", coord_units="mm"
        ... )
        Traceback (most recent call last):
        ...
        atomscale_accessors.errors.AnnotationValidationError: 1 of 2 records failed validation (1 failure):
          - property_value: not_nullable (1 case)
        example (all in .failure_cases):
          row 1: property_value = nan (not_nullable)
        >>> len(
        ...     df.atomscale.validate(
        ...         value="thk",
        ...         property_name="thickness",
        ...         property_unit="nm",
        ...         coord_units="mm",
        ...         dropna=True,
        ...     )
        ... )
        1
        """
        from .records import validated_records

        return validated_records(
            self._frame, dropna=dropna, allow_duplicates=allow_duplicates, **mapping
        )

    def upload(
        self,
        sample: str | None = None,
        options: UploadOptions | None = None,
        *,
        sample_column: Hashable | None = None,
        dropna: bool = False,
        allow_duplicates: bool = False,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """Validate the frame and create its annotations on a sample (or on the sample
        each row names), exactly once.

        Everything is validated before the first request; an invalid frame sends nothing.

        Parameters
        ----------
        sample : str, optional
            The physical sample: its name (matched without case and surrounding blanks)
            or its UUID. An unknown name is an error unless ``create_sample=True``.
        options : UploadOptions, optional
            How the upload runs; see :class:`~atomscale_accessors.options.UploadOptions`.
        sample_column : hashable, optional
            Instead of ``sample``: the column naming each row's sample (names or UUIDs).
            Each sample gets its own exactly-once upload, several at once; one sample's
            failure does not stop the others (see
            :func:`~atomscale_accessors.lots.upload_lot`).
        dropna, allow_duplicates : bool, default False
            Drop rows whose value is NaN; accept several rows of one property at one
            position.
        **kwargs
            The upload's options by name (``client``, ``if_exists``, ``chunksize``,
            ``max_chunk_bytes``, ``max_workers``, ``progress``, ``dry_run``, ``verify``:
            see :class:`~atomscale_accessors.options.UploadOptions`), and where each
            annotation field comes from (``x=``, ``value=``, ...; see
            :func:`atomscale_accessors.records.to_records`).

        Returns
        -------
        pandas.DataFrame
            The created annotations (with ``if_exists="update"``: created and updated),
            indexed by the input rows' labels, with the ``physical_sample_id`` of each.

        Raises
        ------
        AnnotationValidationError
            Invalid input; nothing was sent.
        AnnotationExistsError
            ``if_exists="fail"`` and rows are stored already; nothing was sent.
        UploadError
            Stopped part way; ``.created``, ``.not_created``, ``.not_updated`` and
            ``.unknown`` say where it stands. Re-run with ``if_exists="skip"``.

        See Also
        --------
        atomscale_accessors.upload.send_records : the retry and reconciliation rules.
        """
        opts, mapping = UploadOptions.take(kwargs, options)
        if (sample is None) == (sample_column is None):
            raise TypeError(
                "upload() takes a sample (a name or a UUID) or sample_column=, one of them"
            )
        if sample is None:  # then sample_column is given
            from .lots import upload_lot

            return upload_lot(
                self._frame,
                sample_column,
                opts,
                dropna=dropna,
                allow_duplicates=allow_duplicates,
                mapping=mapping,
            )
        from .records import validated_records
        from .upload import send_records

        records = validated_records(
            self._frame, dropna=dropna, allow_duplicates=allow_duplicates, **mapping
        )
        return send_records(records, sample, opts)

    def plot(
        self, property_name: str | None = None, ax: Axes | None = None, **kwargs: Any
    ) -> Axes | np.ndarray:
        """Draw one property of an annotation frame (or of canonical records) as a wafer map.

        Needs matplotlib (``pip install "atomscale-accessors[plot]"``). See
        :func:`atomscale_accessors.plotting.plot_annotations` for the options
        (``outline=``, ``wafer_diameter=``, ``colorbar=``, ``title=``, and keywords for
        ``pcolormesh`` or ``scatter``).

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import pandas as pd
        >>> import atomscale_accessors
        >>> df = pd.DataFrame({"x": [0.0, 10.0], "y": [0.0, 0.0], "thk": [101.2, 99.8]})
        >>> rec = df.atomscale.to_annotations(
        ...     value="thk", property_name="thickness", property_unit="nm", coord_units="mm"
        ... )
        >>> ax = rec.atomscale.plot()
        >>> ax.get_xlabel(), ax.collections[0].colorbar.ax.get_ylabel()
        ('x [mm]', 'thickness [nm]')
        """
        from .plotting import plot_annotations

        return plot_annotations(self._frame, property_name, ax=ax, **kwargs)

    def to_xarray(self, **options: Any) -> xr.Dataset:
        """An annotation frame back onto a grid (or along ``point``): one variable per property."""
        from .maps import frame_to_map

        return frame_to_map(self._frame, **options)
