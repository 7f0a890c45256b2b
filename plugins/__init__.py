"""fusiond's built-in source kinds, registered through the ``fusiond`` entry-point group."""
