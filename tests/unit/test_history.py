import math

from embedloop.judge.evidence import OfflineComparison, Source
from embedloop.report.history import champion_history


def run(started: int, decision: str, cand: float, inc: float, **extra: float) -> dict:
    metrics = {"gate.candidate": cand, "gate.incumbent": inc, **extra}
    tags = {"decision": decision, "incumbent_version": "1", "candidate_version": "2"}
    return {"started": started, "tags": tags, "metrics": metrics}


def test_champion_after_each_run_follows_the_decision() -> None:
    runs = [run(3, "kept", 0.70, 0.72, **{"gate.guard_candidate": 0.5,
                                          "gate.guard_incumbent": 0.6}),
            run(1, "promoted", 0.72, 0.70, **{"gate.guard_candidate": 0.61,
                                              "gate.guard_incumbent": 0.6}),
            {"started": 2, "tags": {"decision": "failed"}, "metrics": {}},
            run(4, "promoted", 0.75, 0.72)]
    history = champion_history(runs)
    assert list(history["started"]) == [1, 3, 4]  # oldest first; a failed run is left out
    assert list(history["champion_after"]) == [0.72, 0.72, 0.75]
    assert history["guard_champion_after"][0] == 0.61  # promoted: the candidate's guard score
    assert history["guard_champion_after"][1] == 0.6  # kept: the incumbent's
    assert math.isnan(history["guard_champion_after"][2])  # no guard set recorded


def test_no_runs_gives_an_empty_frame_with_the_columns() -> None:
    assert champion_history([]).empty
    assert "champion_after" in champion_history([]).columns



def judged(started: int, decision: str, incumbent: str, candidate: str, inc: float,
           cand: float, guard_inc: float, guard_cand: float) -> dict:
    return {"started": started,
            "tags": {"decision": decision, "incumbent_version": incumbent,
                     "candidate_version": candidate},
            "metrics": {"gate.incumbent": inc, "gate.candidate": cand,
                        "gate.guard_incumbent": guard_inc, "gate.guard_candidate": guard_cand}}


def test_canary_promotions_and_rollbacks_move_the_champion_too() -> None:
    """A kept candidate promoted later on interleaved clicks, and a rollback, change the
    champion in runs that evaluate nothing: both are rows, scored as when last judged."""
    runs = [
        judged(1, "kept", "1", "2", 0.70, 0.71, 0.60, 0.62),  # v2 kept, then canaried
        {"started": 2, "tags": {"decision": "promoted", "canary": "v2: promote",
                                "incumbent_version": "1", "candidate_version": "2"},
         "metrics": {"canary.sessions": 400.0}},
        judged(3, "promoted", "2", "3", 0.72, 0.74, 0.62, 0.63),
        {"started": 4, "tags": {"decision": "rolled back", "decision_reason": "v3 -> v2",
                                "incumbent_version": "3", "champion_version": "2"},
         "metrics": {}},
        {"started": 5, "tags": {"decision": "rolled back", "incumbent_version": "2",
                                "champion_version": "1"}, "metrics": {}},
        {"started": 6, "tags": {"decision": "no-new-data"}, "metrics": {}},  # not a row
    ]
    history = champion_history(runs)
    assert list(history["kind"]) == ["judged", "canary", "judged", "rollback", "rollback"]
    assert list(history["champion_after"]) == [0.70, 0.71, 0.74, 0.72, 0.70]
    assert list(history["guard_champion_after"]) == [0.60, 0.62, 0.63, 0.62, 0.60]
    canary = history.iloc[1]
    assert canary["promoted"] and canary["candidate_version"] == "2"
    assert (canary["incumbent"], canary["candidate"]) == (0.70, 0.71)  # as judged in run 1
    back = history.iloc[3]
    assert (back["incumbent_version"], back["candidate_version"]) == ("3", "2")
    assert (back["incumbent"], back["candidate"]) == (0.74, 0.72)  # their latest scores


def test_a_rollback_to_a_version_never_scored_has_no_score() -> None:
    runs = [{"started": 1, "tags": {"decision": "rolled back", "incumbent_version": "2",
                                    "champion_version": "1"}, "metrics": {}}]
    history = champion_history(runs)
    assert list(history["kind"]) == ["rollback"]
    assert math.isnan(history["champion_after"][0])


def typed(source: Source, cand: float, inc: float) -> dict[str, float]:
    """What the evidence contract writes for `source` (evidence.py)."""
    numbers = OfflineComparison(
        queries=100, candidate=cand, incumbent=inc, condensed_candidate=cand,
        condensed_incumbent=inc, p_better=0.5, alpha=0.025, ci_low=-0.01, ci_high=0.01,
        harm_bound=0.01, p_harm=0.9, margin=0.01, queries_better=5, queries_worse=5,
        queries_reordered=10)
    return numbers.metrics(source)


def test_a_retrain_can_roll_back_promote_a_canary_and_judge_a_candidate() -> None:
    """Users' evidence comes first in a run: the watch's rollback, then a canary's
    promotion, then this run's own candidate, judged against the champion of the moment
    (typed keys, as the evidence contract writes them)."""
    runs = [
        {"started": 1, "tags": {"decision": "kept", "incumbent_version": "1",
                                "candidate_version": "2", "offline_decision": "canary"},
         "metrics": {**typed(Source.POOL, 0.71, 0.70), **typed(Source.GUARD, 0.62, 0.60)}},
        {"started": 2, "tags": {"decision": "promoted", "incumbent_version": "1",
                                "canary_promoted": "2", "judged_against": "2",
                                "candidate_version": "3", "offline_decision": "promote"},
         "metrics": {**typed(Source.POOL, 0.75, 0.72), **typed(Source.GUARD, 0.64, 0.62)}},
        {"started": 3, "tags": {"decision": "rolled back", "incumbent_version": "3",
                                "rolled_back_from": "3", "rolled_back_to": "2",
                                "judged_against": "2", "candidate_version": "4",
                                "offline_decision": "canary"},
         "metrics": typed(Source.POOL, 0.73, 0.72)},
    ]
    history = champion_history(runs)
    assert list(history["kind"]) == ["judged", "canary", "judged", "rollback", "judged"]
    assert list(history["incumbent_version"]) == ["1", "1", "2", "3", "2"]
    assert list(history["candidate_version"]) == ["2", "2", "3", "2", "4"]
    assert list(history["promoted"]) == [False, True, True, True, False]
    assert list(history["champion_after"]) == [0.70, 0.71, 0.75, 0.72, 0.72]
    assert list(history["guard_champion_after"])[:3] == [0.60, 0.62, 0.64]
