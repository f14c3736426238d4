"""Everything lens_train writes to and reads from disk: bundles, streaming, snapshots, tables, checkpoints.

Built on :mod:`lens_train.capture` (never the reverse): importing this package plugs the
streaming capture and the table export into capture's outlets.

Example:
    >>> import lens_train.bundle as bundle
    >>> bundle.save is __import__("lens_train").save
    True
"""

from ..capture.outlets import OUTLETS
from .api import load, save
from .export import export_table
from .reader import BundleReader
from .snapshots import load_snapshots
from .streaming import open_capture_stream
from .writer import BundleWriter

OUTLETS.open_stream = open_capture_stream
OUTLETS.export_table = export_table

__all__ = ["BundleReader", "BundleWriter", "load", "load_snapshots", "save"]
