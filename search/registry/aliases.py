"""Where the aliases go, and the record of every move.

A promoted version becomes `champion` when it beats the champion's test score (or by force),
else `challenger`. MLflow keeps only where an alias points now, so every move is also written
as a tag on the registered model, ``fer_search.alias_move.NNNNNN`` = JSON (alias, version, the
version it replaced, when, why, from which study and trial); `alias_history` reads them back
and `fer-search history MODEL` prints them. Moves are made under the promotion's lock
(`search.registry.promotion.champion_lock`), so the sequence numbers do not collide.

Needs MLflow only, not Optuna. See ARCHITECTURE.md, "the registry flow".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from search.contracts import CHAMPION_ALIAS
from search.registry.refs import CHALLENGER

MOVE_TAG_PREFIX = "fer_search.alias_move."
_REASON_CHARS = 1000  # registered-model tag values are capped (5000 characters in MLflow)


@dataclass(frozen=True)
class AliasDecision:
    """Where a promoted version's alias goes.

    Attributes:
        alias: ``champion`` or ``challenger``.
        previous_version: the champion before this promotion, or None.
        previous_score: its score tag, or None.
        reason: why, in words.
    """

    alias: str
    previous_version: int | None
    previous_score: float | None
    reason: str


@dataclass(frozen=True)
class AliasMove:
    """One recorded alias move: `alias` went to `version`, taking it from `replaced`."""

    seq: int
    at: str
    alias: str
    version: int
    replaced: int | None
    study: str
    trial: int | None
    score_name: str
    score: float | None
    reason: str

    def to_json(self) -> str:
        data = {k: v for k, v in self.__dict__.items() if k != "seq"}
        return json.dumps(data, sort_keys=True)


def choose_alias(
    client, name: str, version: int, score_name: str, score: float, *, maximize: bool,
    force: bool,
) -> AliasDecision:
    """Reads the current champion and compares: the read of read-compare-set (call it under
    the promotion lock)."""
    champion = version_by_alias(client, name, CHAMPION_ALIAS)
    if champion is None:
        return AliasDecision(CHAMPION_ALIAS, None, None, "no champion yet")
    previous = int(champion.version)
    previous_score = float_tag(champion.tags, score_name)
    if previous == version:
        return AliasDecision(CHAMPION_ALIAS, previous, previous_score, "already the champion")
    if force:
        return AliasDecision(CHAMPION_ALIAS, previous, previous_score, "forced")
    if previous_score is None:
        return AliasDecision(
            CHALLENGER, previous, None,
            f"the champion (version {previous}) has no {score_name} tag to compare with; "
            f"promote with force to replace it",
        )
    better = score > previous_score if maximize else score < previous_score
    relation = "beats" if better else "does not beat"
    return AliasDecision(
        CHAMPION_ALIAS if better else CHALLENGER, previous, previous_score,
        f"{score_name} {score:.4f} {relation} the champion's (version {previous}) "
        f"{previous_score:.4f}",
    )


def move_alias(
    client, name: str, alias: str, version: int, *, study: str, trial: int | None,
    score_name: str, score: float | None, reason: str,
) -> AliasMove | None:
    """Points `alias` at `version` and records the move; None when it already pointed there."""
    aliases = client.get_registered_model(name).aliases
    held = int(aliases[alias]) if alias in aliases else None
    if held == version:
        return None
    client.set_registered_model_alias(name, alias, str(version))
    move = AliasMove(
        seq=_next_seq(client, name), at=datetime.now(UTC).isoformat(timespec="seconds"),
        alias=alias, version=version, replaced=held, study=study, trial=trial,
        score_name=score_name, score=score, reason=reason[:_REASON_CHARS],
    )
    client.set_registered_model_tag(name, f"{MOVE_TAG_PREFIX}{move.seq:06d}", move.to_json())
    return move


def alias_history(client, name: str) -> list[AliasMove]:
    """Every recorded move of `name`'s aliases, oldest first."""
    tags = client.get_registered_model(name).tags
    moves = []
    for key, value in tags.items():
        if not key.startswith(MOVE_TAG_PREFIX):
            continue
        try:
            data = json.loads(value)
            moves.append(AliasMove(seq=int(key.removeprefix(MOVE_TAG_PREFIX)), **data))
        except (ValueError, TypeError):  # a tag edited by hand: skip it, keep the rest
            continue
    return sorted(moves, key=lambda m: m.seq)


def held_until(moves: list[AliasMove]) -> dict[int, str | None]:
    """seq -> when the next move of the same alias ended that holding (None: still holds)."""
    until: dict[int, str | None] = {}
    last: dict[str, AliasMove] = {}
    for move in moves:
        if move.alias in last:
            until[last[move.alias].seq] = move.at
        until[move.seq] = None
        last[move.alias] = move
    return until


def version_by_alias(client, name: str, alias: str):
    aliases = client.get_registered_model(name).aliases
    if alias not in aliases:
        return None
    return client.get_model_version(name, str(aliases[alias]))


def float_tag(tags: dict[str, str], key: str) -> float | None:
    try:
        value = float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _next_seq(client, name: str) -> int:
    tags: dict[str, Any] = client.get_registered_model(name).tags
    seqs = [int(k.removeprefix(MOVE_TAG_PREFIX)) for k in tags
            if k.startswith(MOVE_TAG_PREFIX) and k.removeprefix(MOVE_TAG_PREFIX).isdigit()]
    return max(seqs, default=0) + 1


def history_table(name: str, moves: list[AliasMove], current: dict[str, Any]):
    """A rich table of the moves: which version held which alias from when until when, and
    which version it replaced."""
    until = held_until(moves)
    now = ", ".join(f"{a} = version {v}" for a, v in sorted(current.items())) or "no aliases"
    table = Table(title=f"{name}: alias moves ({now})", title_justify="left")
    for column in ("#", "from (UTC)", "until (UTC)", "alias", "version", "replaced",
                   "study / trial", "score", "why"):
        table.add_column(column, overflow="fold")
    for move in moves:
        score = "" if move.score is None else f"{move.score_name} {move.score:.4f}"
        end = until[move.seq]
        if end is None:  # the latest move of its alias: still holding, unless moved by hand
            holds = str(current.get(move.alias)) == str(move.version)
            end = "now" if holds else "? (moved outside fer-search)"
        table.add_row(
            str(move.seq), move.at, end, move.alias, str(move.version),
            "" if move.replaced is None else str(move.replaced),
            f"{move.study} / {'' if move.trial is None else move.trial}", score, move.reason,
        )
    if not moves:
        table.add_row("", "", "", "", "", "", "", "", "no moves recorded by fer-search")
    return table
