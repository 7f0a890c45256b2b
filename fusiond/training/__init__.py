"""Record -> train -> deploy: labelled windows cut by the daemon's own code, a training
loop, and the evaluation ``fusiond eval`` prints."""

__all__ = []
