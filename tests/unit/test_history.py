import math

from embedloop.history import champion_history


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

