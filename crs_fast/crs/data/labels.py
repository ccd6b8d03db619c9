"""Weak implicit-feedback labels per system turn, from what users did after it.

- ``dwell``: seconds from the end of the system turn to the user's next message, per 100
  characters the user had to read (None where times are missing or out of order).
- ``sentiment_liked``: mean of ReDial's ``liked`` for the movies the turn mentions
  (0 -> -1, 1 -> +1, 2 "did not say" -> 0; the seeker's own answers, else the recommender's);
  None where the turn mentions none with a label.
- ``sentiment_text``: polarity of the user's next message in [-1, 1] (VADER's compound score).
- ``engaged`` (the user writes again), ``next_user_chars``, ``user_messages_after``.
- ``satisfaction`` (dialogue level): OpenDialKG's user ``dialog_rating`` (1-5); for ReDial the
  reward per dialogue length, (1.0 per liked + 0.5 per seen-not-liked suggested movie) / turns.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from statistics import fmean

from .schema import Dialogue

_LIKED = {0: -1.0, 1: 1.0, 2: 0.0}


@dataclass
class TurnFeedback:
    """Implicit-feedback labels of one system turn."""

    dialogue_id: str
    turn_index: int
    dwell: float | None
    sentiment_liked: float | None
    sentiment_text: float | None
    engaged: bool
    next_user_chars: int
    user_messages_after: int
    satisfaction: float | None


@cache
def _vader() -> Callable[[str], float]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return lambda text: float(analyzer.polarity_scores(text)["compound"])


def text_sentiment(text: str) -> float:
    """Polarity of ``text`` in [-1, 1] (VADER compound score)."""
    return _vader()(text)


def dialogue_satisfaction(dialogue: Dialogue) -> float | None:
    """Dialogue-level satisfaction: OpenDialKG's user rating (1-5), or ReDial's reward per turn."""
    user = dialogue.ratings.get("user")
    if isinstance(user, dict) and "dialog_rating" in user:
        return float(user["dialog_rating"])
    seeker = dialogue.ratings.get("initiator")
    if not isinstance(seeker, dict) or not dialogue.turns:
        return None
    reward = 0.0
    for labels in seeker.values():
        if labels.get("suggested") == 1:
            reward += 1.0 if labels.get("liked") == 1 else 0.5 if labels.get("seen") == 1 else 0.0
    return reward / len(dialogue.turns)


def _liked(dialogue: Dialogue, items: Sequence[str]) -> float | None:
    values = []
    for item in items:
        for side in ("initiator", "respondent"):
            labels = dialogue.ratings.get(side, {}).get(item)
            if labels and labels.get("liked") in _LIKED:
                values.append(_LIKED[labels["liked"]])
                break
    return fmean(values) if values else None


def feedback_labels(
    dialogues: Sequence[Dialogue], *, sentiment: Callable[[str], float] | None = None
) -> list[TurnFeedback]:
    """One :class:`TurnFeedback` per system turn of every dialogue."""
    polarity = sentiment or text_sentiment
    out = []
    for d in dialogues:
        satisfaction = dialogue_satisfaction(d)
        for i, turn in enumerate(d.turns):
            if turn.role != "system":
                continue
            nxt = d.turns[i + 1] if i + 1 < len(d.turns) else None
            dwell = None
            end = turn.meta.get("end_time", turn.time)
            if nxt is not None and nxt.role == "user" and nxt.time is not None and end is not None:
                seconds = nxt.time - end
                dwell = seconds / max(len(turn.text), 1) * 100 if seconds >= 0 else None
            engaged = nxt is not None and nxt.role == "user"
            out.append(
                TurnFeedback(
                    dialogue_id=d.id,
                    turn_index=i,
                    dwell=dwell,
                    sentiment_liked=_liked(d, turn.items),
                    sentiment_text=polarity(nxt.text) if engaged else None,
                    engaged=engaged,
                    next_user_chars=len(nxt.text) if engaged else 0,
                    user_messages_after=int(nxt.meta.get("messages", 1)) if engaged else 0,
                    satisfaction=satisfaction,
                )
            )
    return out


def label_coverage(labels: Sequence[TurnFeedback]) -> dict[str, float]:
    """Fraction of system turns where each label is defined."""
    n = max(len(labels), 1)
    return {
        name: sum(getattr(x, name) is not None for x in labels) / n
        for name in ("dwell", "sentiment_liked", "sentiment_text", "satisfaction")
    }
