"""The conversational-recommender application: data (ReDial, OpenDialKG, synthetic users),
implicit-feedback labels, and the user simulator."""

from .labels import TurnFeedback, feedback_labels, label_coverage
from .opendialkg import load_opendialkg, load_opendialkg_catalog
from .redial import load_redial, load_redial_catalog
from .schema import Catalog, DataError, Dialogue, DialogueSet, Item, LoadStats, RecSample, Turn, data_dir
from .simulator import Feedback, UserSimulator, generate_catalog, write_synthetic_redial
from .splits import rec_samples, split_dialogues

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
