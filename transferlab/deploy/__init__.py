"""After the study: a run's model on disk (artifact), predict, export with a parity check, prune, quantize,
serve. Every command starts from a run record (`load_run`)."""

from .artifact import RunModel, find_record, load_run

__all__ = ["RunModel", "find_record", "load_run"]
