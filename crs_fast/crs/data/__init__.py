"""The recommender's data layer: one schema (:mod:`.schema`) for ReDial (:mod:`.redial`) and
OpenDialKG (:mod:`.opendialkg`), read from ``$CRS_FAST_DATA`` in their original formats;
implicit-feedback labels per turn (:mod:`.labels`); recommendation samples and deterministic
splits (:mod:`.splits`); the user simulator (:mod:`.simulator`) and the generated catalogs and
ReDial-format dialogues it is paired with (:mod:`.synthetic`); ``crs-fast data`` (:mod:`.cli`).
Nothing here imports from :mod:`crs_fast.crs.rlhf`."""

from .labels import TurnFeedback, feedback_labels, label_coverage
from .opendialkg import load_opendialkg, load_opendialkg_catalog
from .redial import load_redial, load_redial_catalog
from .schema import Catalog, DataError, Dialogue, DialogueSet, Item, LoadStats, RecSample, Turn, data_dir
from .simulator import Feedback, UserSimulator
from .splits import rec_samples, split_dialogues
from .synthetic import generate_catalog, write_synthetic_redial

__all__ = [
    "Catalog",
    "DataError",
    "Dialogue",
    "DialogueSet",
    "Feedback",
    "Item",
    "LoadStats",
    "RecSample",
    "Turn",
    "TurnFeedback",
    "UserSimulator",
    "data_dir",
    "feedback_labels",
    "generate_catalog",
    "label_coverage",
    "load_opendialkg",
    "load_opendialkg_catalog",
    "load_redial",
    "load_redial_catalog",
    "rec_samples",
    "split_dialogues",
    "write_synthetic_redial",
]
